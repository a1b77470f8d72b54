"""evaluation/registry.py: a recommender defined here (no shared file edited) registers itself, and eval_test.py then
lists it under --recommender, shows its flags in --help, builds it with them and scores it like any other."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from evaluation import registry


@dataclass
class FixedOptions:
    fixed_ids: str = field(default="0", metadata={"help": "comma-separated catalog ids, recommended to every row"})
    category: str = field(default="items", metadata={"help": "the item category named in prompts"})


class FixedRecommender:
    """The same ids for every row: the smallest recommender a method could add."""

    require_year = None

    def __init__(self, ids):
        self.ids = list(ids)

    @classmethod
    def from_cli(cls, request):
        request.provenance.update(recommender="fixed", backend=None, decoding=None)
        return cls(int(i) for i in request.options.fixed_ids.split(","))

    def recommend(self, dataset):
        from evaluation.recommenders import Recommendation

        return [Recommendation(list(self.ids)) for _ in range(len(dataset))]


@pytest.fixture
def fixed_registered(monkeypatch):
    """FixedRecommender registered for one test (the registry is restored afterwards)."""
    import eval_test

    eval_test.build_parser()  # every real recommender registered first, as eval_test.py does
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    registry.register_recommender("fixed", help="the same ids for every row", options=FixedOptions,
                                  hf_model=False)(FixedRecommender)
    return eval_test


def _contract(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_contract", Path(__file__).with_name("test_evaluation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_contract_dataset(root)


def test_every_recommender_registers_itself():
    import eval_test

    eval_test.build_parser()
    names = {e.name: e.source for e in registry.recommender_entries()}
    assert {"text": "model", "trm": "model", "recpo": "model", "deeprec": "model", "popularity": "baseline",
            "groundtruth": "baseline"}.items() <= names.items()


def test_a_new_recommender_gets_its_flags_and_is_scored(fixed_registered, tmp_path):
    eval_test = fixed_registered
    text = " ".join(eval_test.build_parser().format_help().split())
    assert "fixed: the same ids for every row" in text
    assert "--fixed_ids FIXED_IDS fixed: comma-separated catalog ids" in text
    # a field two recommenders declare (same default) is one flag naming both
    assert "deeprec / recpo / fixed: the item category named in prompts" in text

    data = _contract(tmp_path)
    out = tmp_path / "eval_fixed"
    metrics = eval_test.main(["--recommender", "fixed", "--model_path", str(tmp_path), "--fixed_ids", "2,14",
                              "--dataset_path", str(data), "--output_dir", str(out), "--ks", "1", "2"])
    assert metrics["recommender"] == "fixed" and metrics["num_samples"] == 6
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["item_ids"] == [2, 14] for r in rows)
    # s0 has groundtruth [2, 14], s1 [2]: both items / the one item hit; no other test row holds 2 or 14
    assert metrics["recall@2"] == pytest.approx(2 / 6)


def test_a_taken_name_or_a_clashing_shared_flag_is_refused(fixed_registered):
    with pytest.raises(ValueError, match="registered already"):
        registry.register_recommender("fixed", help="another")(type("Other", (FixedRecommender,), {}))

    @dataclass
    class Clash:
        fixed_ids: str = "1"

    registry.register_recommender("clash", help="clash", options=Clash)(type("Clash", (FixedRecommender,), {}))
    with pytest.raises(ValueError, match="a shared flag needs one default"):
        fixed_registered.build_parser()
    with pytest.raises(TypeError, match="from_cli"):
        registry.register_recommender("bare", help="no constructor")(type("Bare", (), {}))
