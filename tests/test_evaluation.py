"""evaluation/: deduplicated generation, scoring through rewards (oracle = 1, garbage = 0, protocols),
predictions files (errors name file and line, missing rows counted), popularity baseline, backends, plots."""
from __future__ import annotations

import json
import math
import pickle
import sys
import types
from pathlib import Path

import pytest

from evaluation.backends import HFBackend, StaticBackend, make_backend, prompt_key, resolve_backend_name
from evaluation.evaluate import evaluate, metric_keys, score_completions
from evaluation.predictions import PredictionsError, read_prediction_records, write_outputs
from evaluation.recommenders import (
    GroundtruthRecommender,
    PopularityRecommender,
    StaticPredictions,
    generate_completions,
    popularity_ranking,
)
from tests.conftest import REDDIT_DIR, require

KS = (5, 10, 15, 20)

# ------------------------------------------------------------------------------------- contract data set
CATALOG = [
    ("The Matrix", 1999), ("Toy Story", 1995), ("Heat", 1995), ("Fargo", 1996), ("Alien", 1979),
    ("Casablanca", 1942), ("Titanic", 1997), ("Jurassic Park", 1993), ("Se7en", 1995), ("Clueless", 1995),
    ("Dune", 1984), ("Dune", 2021), ("Spirited Away", 2001), ("Blade Runner", 1982), ("Pulp Fiction", 1994),
    ("The Godfather", 1972), ("Amélie", 2001), ("Back to the Future", 1985), ("Schindler's List", 1993),
    ("Twelve Monkeys", 1995), ("Star Wars", 1977), ("Raiders of the Lost Ark", 1981), ("Arrival", 2016),
    ("Inception", 2010), ("Memento", 2000), ("Zodiac", 2007), ("Her", 2013), ("Up", 2009),
]


def _prompt(text: str) -> list[dict]:
    from preprocess.common import build_prompt

    return build_prompt(f"User: {text}\n")


def _record(sid, conv, gt, seen=(), target=None):
    from preprocess.common import format_completion

    return {
        "sample_id": sid, "prompt": _prompt(conv),
        "completion": format_completion([f"{CATALOG[i][0]} ({CATALOG[i][1]})" for i in gt]),
        "groundtruth": list(gt), "seen": list(seen), "history": [], "target": target, "timestamp": None,
    }


def write_contract_dataset(root: Path) -> Path:
    """A processed data set (save_processed) with ids 0..27 and a Rank-GRPO-style gt_catalog.pkl beside it.

    train: item 3 (Fargo) is the most popular, then 0, then 14; row t5 has a `target` (counted instead of its gt).
    validation: 4 rows, distinct prompts. test: 6 rows, rows 0-2 share one prompt (several users' answers).
    """
    from preprocess.contract import save_processed

    train = [
        _record("t0", "dark crime", [3, 0, 14]), _record("t1", "snowy crime", [3, 0]),
        _record("t2", "funny", [3, 9], seen=[1]), _record("t3", "space", [20, 3, 0]),
        _record("t4", "desert epic", [11, 14]),
        _record("t5", "next one", [25, 26], target=7),
    ]
    validation = [
        _record("v0", "mind-bending sci-fi", [0, 23, 24], seen=[13]),
        _record("v1", "a new Dune please", [11], seen=[10]),
        _record("v2", "animated", [1, 12, 27]),
        _record("v3", "classic", [5, 15], seen=[3]),
    ]
    test = [
        _record("s0", "I want heist movies", [2, 14]), _record("s1", "I want heist movies", [2]),
        _record("s2", "I want heist movies", [8, 3], seen=[0]),
        _record("s3", "1980s adventure", [21, 17]), _record("s4", "french romance", [16]),
        _record("s5", "time travel", [19, 17, 22]),
    ]
    items = [{"id": i, "title": t, "year": y} for i, (t, y) in enumerate(CATALOG)]
    out = root / "contract_ds"
    save_processed(out, {"train": train, "validation": validation, "test": test}, items, {"name": "contract"},
                   quiet=True)
    with open(root / "gt_catalog.pkl", "wb") as fh:
        pickle.dump(list(CATALOG), fh)  # Rank-GRPO's format: [(title, year)], id = position
    return out


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    from preprocess.contract import load_processed

    path = write_contract_dataset(tmp_path_factory.mktemp("data"))
    dd, catalog = load_processed(path)
    return path, dd, catalog


def oracle_backend(dataset, catalog) -> StaticBackend:
    """Answers each prompt with its sample's ground truth (distinct prompts only), decorated as chat models do."""
    answers = {}
    for row, text in zip(dataset, GroundtruthRecommender(catalog).completions(dataset)):
        lines = [f"{i + 1}. **{line}**" for i, line in enumerate(text.splitlines())]
        answers[prompt_key(row["prompt"])] = "Sure! Here are my picks:\n" + "\n".join(lines)
    return StaticBackend(answers, default=None)


# -------------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_oracle_backend_scores_one(contract, protocol, tmp_path):
    _, dd, catalog = contract
    ds = dd["validation"]
    backend = oracle_backend(ds, catalog)
    metrics = evaluate(ds, catalog, tmp_path / "out", backend=backend, protocol=protocol)
    for k in KS:
        assert metrics[f"recall@{k}"] == 1.0 and metrics[f"ndcg@{k}"] == 1.0 and metrics[f"hr@{k}"] == 1.0
    assert metrics["catalog_hit_ratio"] == 1.0
    gt_sizes = [len(g) for g in ds["groundtruth"]]
    assert metrics["valid_item_ratio"] == pytest.approx(sum(gt_sizes) / 20 / len(gt_sizes))
    assert metrics["protocol"] == protocol and metrics["num_samples"] == 4
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["recall@20"] == 1.0 and saved["protocol"] == protocol
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["sample_id"] for r in rows] == ["v0", "v1", "v2", "v3"]
    assert all(r["recall@20"] == 1.0 and set(r["statuses"]) == {"hit"} for r in rows)
    assert list(rows[0])[:3] == ["index", "sample_id", "completion"]


def test_oracle_on_real_reddit_slice():
    """Real Rank-GRPO Reddit-v2 samples + its 7,404-title gt_catalog.pkl: the oracle is a perfect score."""
    from rewards.catalog import load_catalog

    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text())["samples"]
    catalog = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    rows = []
    for s in samples:
        gt = [catalog.match(t, int(y)) for t, y in s["groundtruth_with_release_year"]]
        seen = [i for i in (catalog.match(t) for t in s["seen_titles"]) if i is not None]
        assert None not in gt, s["sample_id"]
        rows.append({"sample_id": s["sample_id"], "prompt": s["prompt"], "groundtruth": gt, "seen": seen})
    assert all(len(r["groundtruth"]) <= 20 for r in rows)
    completions = GroundtruthRecommender(catalog).completions(rows)
    for protocol in ("packed", "strict"):
        metrics, per_sample = score_completions(rows, catalog, completions, protocol=protocol)
        assert metrics["recall@20"] == 1.0 and metrics["ndcg@20"] == 1.0, protocol
        assert metrics["num_samples"] == len(samples) == 100
    # the release's own SFT targets are real completions: scores in (0, 1], the table is well-formed
    sft = [s["completion"][0]["content"] for s in samples]
    metrics, _ = score_completions(rows, catalog, sft)
    assert 0 < metrics["recall@20"] <= 1 and 0 < metrics["catalog_hit_ratio"] <= 1


def test_real_reddit_prompts_generated_once_each():
    from rewards.catalog import load_catalog  # noqa: F401  (rewards importable)

    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text())["samples"]
    rows = [{"prompt": s["prompt"]} for s in samples]
    backend = StaticBackend(lambda p: f"answer to {len(p[-1]['content'])}")
    out = generate_completions(backend, rows)
    distinct = {json.dumps(s["prompt"], sort_keys=True) for s in samples}
    assert backend.calls == 1 and len(backend.prompts_seen) == len(distinct) == 40
    assert out == [f"answer to {len(s['prompt'][-1]['content'])}" for s in samples]


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "Matrix Reloaded Revolutions (1850)\nfoo\n\n"])
def test_garbage_scores_zero(contract, text):
    _, dd, catalog = contract
    ds = dd["test"]
    metrics, per_sample = score_completions(ds, catalog, [text] * len(ds))
    for key in metric_keys(KS):
        assert metrics[key] == 0.0, key
    assert len(per_sample) == len(ds)


def test_protocols_differ_on_seen_items(contract):
    """A seen item listed first: packed drops it (hit moves to rank 1), strict keeps the position."""
    _, dd, catalog = contract
    ds = dd["validation"].select([1])  # gt [Dune (2021)], seen [Dune (1984)]
    text = "Dune (1984)\nDune (2021)"
    packed, _ = score_completions(ds, catalog, [text], protocol="packed")
    strict, _ = score_completions(ds, catalog, [text], protocol="strict")
    assert packed["ndcg@20"] == 1.0 and packed["recall@5"] == 1.0
    assert strict["ndcg@20"] == pytest.approx(1 / math.log2(3)) and strict["recall@5"] == 1.0
    assert packed["protocol"] == "packed" and strict["protocol"] == "strict"


def test_dedup_generates_each_prompt_once(contract):
    _, dd, catalog = contract
    ds = dd["test"]  # rows 0-2 share a prompt
    backend = StaticBackend(lambda p: p[-1]["content"][-20:])
    out = generate_completions(backend, ds)
    assert backend.calls == 1 and len(backend.prompts_seen) == 4
    assert out[0] == out[1] == out[2] and len(set(out)) == 4 and len(out) == 6
    metrics = evaluate(ds, catalog, None, backend=StaticBackend([""] * 4))
    assert metrics["num_distinct_prompts"] == 4 and metrics["num_samples"] == 6


def test_static_backend_modes():
    p1, p2 = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert StaticBackend(["x", "y"]).generate([p1, p2]) == ["x", "y"]
    assert StaticBackend({"b": "by-content", prompt_key(p1): "by-key"}).generate([p1, p2]) == ["by-key", "by-content"]
    with pytest.raises(KeyError):
        StaticBackend({}, default=None).generate([p1])


# ---------------------------------------------------------------------------------------------- predictions
def _write(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


@pytest.mark.parametrize(
    "lines, line_no, fragment",
    [
        (['{"index": 0, "completion": "a"}', '{"index": 1, "completion": '], 2, "malformed JSON"),
        (['{"index": 0, "completion": "a"}', "", '{"completion": "b"}'], 3, "missing field 'index'"),
        (['{"index": 0}'], 1, "missing field 'completion'"),
        (['{"index": 0, "completion": "a"}', '{"index": 6, "completion": "b"}'], 2, "out of range"),
        (['{"index": -1, "completion": "b"}'], 1, "out of range"),
        (['{"index": 1, "completion": "a"}', '{"index": 1, "completion": "b"}'], 2, "duplicate index 1"),
        (['{"index": 0, "completion": "a"}', b'{"index": 1, "completion": "caf\xe9"}'], 2, "not valid UTF-8"),
        (['{"index": "0", "completion": "a"}'], 1, "must be an int"),
        (['{"index": 0, "completion": 3}'], 1, "must be a string"),
        (['[1, 2]'], 1, "expected a JSON object"),
        (['{"index": 0, "sample_id": "zzz", "completion": "a"}'], 1, "does not match row 0"),
    ],
)
def test_predictions_errors_name_file_and_line(tmp_path, lines, line_no, fragment):
    path = _write(tmp_path / "preds.jsonl", lines)
    with pytest.raises(PredictionsError) as err:
        read_prediction_records(path, 6, sample_ids=[f"s{i}" for i in range(6)])
    msg = str(err.value)
    assert str(path) in msg and f"line {line_no}:" in msg and fragment in msg, msg


def test_predictions_missing_rows_counted_and_scored_empty(contract, tmp_path):
    _, dd, catalog = contract
    ds = dd["validation"]
    gt = GroundtruthRecommender(catalog).completions(ds)
    path = _write(tmp_path / "p.jsonl", [
        json.dumps({"index": 2, "sample_id": ds[2]["sample_id"], "completion": gt[2], "extra": 1}),
        json.dumps({"index": 0, "sample_id": "v0", "completion": [{"role": "assistant", "content": gt[0]}]}),
    ])
    preds = StaticPredictions.from_file(path, catalog, len(ds), sample_ids=list(ds["sample_id"]))
    recs = preds.recommendations
    assert preds.missing == [1, 3] and recs[1].item_ids == recs[3].item_ids == []
    assert recs[0].text == gt[0] and recs[2].text == gt[2]
    metrics, per_sample = score_completions(ds, catalog, [r.text or "" for r in recs])
    assert metrics["recall@20"] == 0.5 and [r["recall@20"] for r in per_sample] == [1.0, 0.0, 1.0, 0.0]


def test_write_outputs_roundtrip(contract, tmp_path):
    _, dd, catalog = contract
    ds = dd["test"]
    completions = GroundtruthRecommender(catalog).completions(ds)
    completions[1] = "Ünïcode ☃ line\n" + completions[1]
    metrics, per_sample = score_completions(ds, catalog, completions)
    write_outputs(tmp_path, metrics, per_sample, completions)
    again = read_prediction_records(tmp_path / "predictions.jsonl", len(ds), sample_ids=list(ds["sample_id"]))
    texts = [again[i].text for i in range(len(ds))]
    assert texts == completions and sorted(again) == list(range(len(ds)))
    assert score_completions(ds, catalog, texts)[0] == metrics


# ---------------------------------------------------------------------------------------------- popularity
def test_popularity_baseline(contract):
    _, dd, catalog = contract
    ranking = popularity_ranking(dd["train"])
    assert ranking[:3] == [3, 0, 14] and 7 in ranking and 25 not in ranking  # t5 counts its target only
    ds = dd["test"]
    completions = PopularityRecommender(dd["train"], catalog, n_items=5).completions(ds)
    lines = [c.splitlines() for c in completions]
    assert all(len(x) == 5 for x in lines)
    assert lines[0][:3] == ["Fargo (1996)", "The Matrix (1999)", "Pulp Fiction (1994)"]
    assert "The Matrix (1999)" not in lines[2]  # s2 has seen [0]
    metrics, per_sample = score_completions(ds, catalog, completions)
    assert per_sample[0]["recall@5"] == 0.5 and per_sample[2]["recall@5"] == 0.5
    assert metrics["catalog_hit_ratio"] == 1.0


# -------------------------------------------------------------------------------------------------- backends
def test_vllm_backend_with_fake_module(monkeypatch):
    calls = {}

    class FakeOutput:
        def __init__(self, text):
            self.outputs = [types.SimpleNamespace(text=text)]

    class FakeLLM:
        def __init__(self, **kw):
            calls["init"] = kw

        def chat(self, prompts, sampling_params, **kw):
            calls["chat"] = (prompts, sampling_params, kw)
            return [FakeOutput(f"out{i}") for i in range(len(prompts))]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = make_backend("vllm", "some/model", max_new_tokens=7, batch_size=3, tensor_parallel_size=2,
                           gpu_memory_utilization=0.5)
    prompts = [[{"role": "user", "content": "a", "name": None}], [{"role": "user", "content": "b"}]]
    assert backend.generate(prompts) == ["out0", "out1"]
    assert calls["init"]["model"] == "some/model" and calls["init"]["tensor_parallel_size"] == 2
    sent, params, kw = calls["chat"]
    assert params["temperature"] == 0 and params["max_tokens"] == 7 and kw["add_generation_prompt"] is True
    assert sent[0] == [{"role": "user", "content": "a"}]  # Arrow's None keys dropped


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match="--backend hf"):
        make_backend("vllm", "x")
    assert resolve_backend_name("hf") == "hf"
    with pytest.raises(ValueError):
        resolve_backend_name("tgi")


def test_auto_backend_is_hf_without_vllm_and_cuda():
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm + CUDA present: auto picks vllm")
    assert resolve_backend_name("auto") == "hf"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from modeling.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny")
    build_tiny_model(out, tokenizer="bpe", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                     intermediate_size=64, vocab_size=600)
    return out


def test_hf_backend_greedy_deterministic_and_truncates(tiny_model, contract):
    _, dd, _ = contract
    backend = make_backend("hf", str(tiny_model), max_new_tokens=12, batch_size=2, show_progress=False)
    assert isinstance(backend, HFBackend)
    prompts = [list(p) for p in dd["validation"]["prompt"]]
    first = backend.generate(prompts)
    assert len(first) == 4 and all(isinstance(t, str) for t in first)
    assert backend.generate(prompts[::-1]) == first[::-1]  # order restored after length sorting
    assert "<|im_end|>" not in "".join(first) and "<|endoftext|>" not in "".join(first)
    full = backend.encode(prompts)
    backend.max_prompt_length = min(len(x) for x in full) - 5
    cut = backend.encode(prompts)
    assert all(len(x) <= backend.max_prompt_length for x in cut)
    assert all(x[-4:] == y[-4:] for x, y in zip(cut, full))  # the end (generation prompt) is kept


# ------------------------------------------------------------------------------------------------------ plots
def test_plot_curves_and_train_curves(tmp_path):
    from evaluation.plots import plot_curves, plot_trainer_state

    csv_path = tmp_path / "eval.csv"
    csv_path.write_text("step,recall@20,ndcg@20,hr@20\n100,0.1,0.05,0.2\n200,0.15,0.07,\n")
    png = plot_curves(csv_path, tmp_path / "eval.png", metrics=("recall@20", "ndcg@20", "hr@20", "absent"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"global_step": 20, "log_history": [
        {"step": 10, "loss": 2.0, "learning_rate": 1e-5, "epoch": 0.5},
        {"step": 20, "loss": 1.5, "reward": 0.2, "epoch": 1.0}]}))
    assert plot_trainer_state(state, tmp_path / "train.png").is_file()
    state.write_text(json.dumps({"global_step": 0, "log_history": []}))
    assert plot_trainer_state(state, tmp_path / "none.png") is None
