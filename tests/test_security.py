"""Security: no untrusted unpickling anywhere, a malicious pickle catalog is refused without running anything,
`trust_remote_code` stays off unless asked for, and every script honours HF_HUB_OFFLINE=1 (no network attempt,
a clear error for a model that is not on disk)."""
from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "__pycache__", "node_modules", "results", "processed_datasets", "models", "shared"}
#: The one place allowed to unpickle: a subclass of pickle.Unpickler whose find_class refuses every global.
UNPICKLER_FILE = REPO / "rewards" / "catalog.py"


def _project_python_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        out += [Path(root) / f for f in files if f.endswith(".py")]
    return sorted(out)


def _code_lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield number, code


def test_the_grep_sees_the_project():
    files = {p.relative_to(REPO).as_posix() for p in _project_python_files()}
    assert {"rewards/catalog.py", "eval_test.py", "train_sft.py", "preprocess/common.py"} <= files


_UNPICKLE = re.compile(r"\b(pickle|cPickle|dill|joblib|pandas|pd)\s*\.\s*(load|loads|read_pickle)\s*\(|"
                       r"\bpickle\s*\.\s*Unpickler\b|\bshelve\s*\.\s*open\s*\(")


def test_no_pickle_load_outside_the_restricted_unpickler():
    hits = []
    for path in _project_python_files():
        if path == Path(__file__).resolve():  # this file names the patterns it looks for
            continue
        for number, code in _code_lines(path):
            if _UNPICKLE.search(code):
                hits.append(f"{path.relative_to(REPO)}:{number}: {code.strip()}")
    allowed = [h for h in hits if h.startswith("rewards/catalog.py:") and "class RestrictedUnpickler(pickle.Unpickler)"
               in h]
    assert len(allowed) == 1 and hits == allowed, "\n".join(hits)
    # ... and that class really refuses every global.
    text = UNPICKLER_FILE.read_text(encoding="utf-8")
    body = text[text.index("class RestrictedUnpickler"):text.index("def restricted_pickle_loads")]
    assert "def find_class" in body and "raise pickle.UnpicklingError" in body


def test_torch_and_numpy_loads_never_unpickle():
    hits = []
    for path in _project_python_files():
        if path.parent.name == "tests":
            continue
        for number, code in _code_lines(path):
            if re.search(r"\btorch\.load\s*\(", code) and "weights_only=True" not in code:
                hits.append(f"{path.relative_to(REPO)}:{number}: torch.load without weights_only=True")
            if re.search(r"allow_pickle\s*=\s*True", code):
                hits.append(f"{path.relative_to(REPO)}:{number}: allow_pickle=True")
    assert not hits, "\n".join(hits)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # runs `open(marker, "w")` when unpickled by a plain pickle.load
        return (open, (str(self.marker), "w"))


def _evil_catalog(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "gt_catalog.pkl"
    path.write_bytes(pickle.dumps([("Heat", 1995), _Evil(marker), ("Fargo", 1996)]))
    return path, marker


def test_malicious_pickle_catalog_is_refused_without_running_anything(tmp_path):
    from rewards.catalog import CatalogError, load_catalog

    path, marker = _evil_catalog(tmp_path)
    with pytest.raises(CatalogError, match=r"gt_catalog\.pkl: refused to unpickle: global '[\w.]+' is forbidden"):
        load_catalog(path)
    assert not marker.exists()


def test_malicious_pickle_as_catalog_path_of_a_data_set_and_of_eval_test(tmp_path):
    """The paths a user reaches it by: load_processed(catalog_path=...) (every training script) and eval_test.py."""
    import eval_test
    from preprocess.contract import load_processed
    from rewards.catalog import CatalogError

    spec = importlib.util.spec_from_file_location("_sec_contract", Path(__file__).with_name("test_evaluation.py"))
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    dataset = contract.write_contract_dataset(tmp_path)
    path, marker = _evil_catalog(tmp_path)
    with pytest.raises(CatalogError, match="refused to unpickle"):
        load_processed(dataset, catalog_path=path)
    with pytest.raises(CatalogError, match="refused to unpickle"):
        eval_test.main(["--baseline", "popularity", "--dataset_path", str(dataset), "--catalog_path", str(path),
                        "--output_dir", str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ trust_remote_code
def test_trust_remote_code_is_never_switched_on_in_code():
    hits = []
    for path in _project_python_files():
        if path.parent.name == "tests":
            continue
        for number, code in _code_lines(path):
            if re.search(r"trust_remote_code\s*[:=]\s*(bool\s*=\s*)?True\b", code):
                hits.append(f"{path.relative_to(REPO)}:{number}: {code.strip()}")
    assert not hits, "\n".join(hits)


def test_loaders_pass_trust_remote_code_false_unless_asked(monkeypatch, tmp_path):
    import transformers

    import modeling.loading as loading

    seen = []

    class _Stop(Exception):
        pass

    def fake(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise _Stop

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")  # whole (no tensor): passes verify
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    for call in (lambda: loading.load_model_and_tokenizer(tmp_path), lambda: loading.load_tokenizer(tmp_path),
                 lambda: loading.load_model_and_tokenizer(tmp_path, trust_remote_code=True)):
        with pytest.raises(_Stop):
            call()
    assert seen == [False, False, True]


def test_eval_cli_trust_remote_code_defaults_off():
    import eval_test
    from evaluation.backends import backend_options

    args = eval_test.build_parser().parse_args(["--baseline", "popularity", "--dataset_path", "x"])
    assert args.trust_remote_code is False and not backend_options(args)["trust_remote_code"]
    args = eval_test.build_parser().parse_args(["--baseline", "popularity", "--dataset_path", "x",
                                                "--trust_remote_code"])
    assert backend_options(args)["trust_remote_code"] is True


# ------------------------------------------------------------------------------------------- HF_HUB_OFFLINE=1
SCRIPTS = {
    "train_sft.py": ["--model_name", "{model}", "--dataset_path", "{data}", "--output_dir", "{out}"],
    "train_rank_grpo.py": ["--model_name", "{model}", "--dataset_path", "{data}", "--output_dir", "{out}"],
    "train_recpo.py": ["--model_name", "{model}", "--dataset_path", "{data}", "--output_dir", "{out}"],
    "eval_test.py": ["--model_path", "{model}", "--dataset_path", "{data}", "--output_dir", "{out}"],
}


def test_every_training_and_eval_script_is_listed():
    """A new root script must be added to SCRIPTS (or to the exceptions below, with the reason)."""
    exceptions = {
        "eval_val.py": "evaluates checkpoint folders of a local run (no hub id); covered by test_eval_scripts",
        "train_deeprec.py": "loads its TRM folder first (a local-path error), then the model via check_model_source",
        "train_trm.py": "no LLM; its text encoder is modeling.text_encoder's (offline MiniLM copy by default)",
    }
    scripts = {p.name for p in REPO.glob("*.py") if p.name.startswith(("train_", "eval_"))}
    assert scripts == set(SCRIPTS) | set(exceptions)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("_sec_contract2", Path(__file__).with_name("test_evaluation.py"))
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    return contract.write_contract_dataset(tmp_path_factory.mktemp("offline"))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_honour_hf_hub_offline(script, dataset, tmp_path):
    """With HF_HUB_OFFLINE=1 and an uncached hub id, each script stops with an error that names the model and the
    setting, before writing a run folder; HF_ENDPOINT points at a closed port so any network attempt would show as
    a connection error instead."""
    out = tmp_path / "run"
    argv = [a.format(model="nobody-org/no-such-model-xyz", data=dataset, out=out) for a in SCRIPTS[script]]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    tail = proc.stderr[-3000:]
    assert proc.returncode != 0, tail
    assert "nobody-org/no-such-model-xyz" in tail and "HF_HUB_OFFLINE=1" in tail, tail
    assert "couldn't connect" not in tail.lower() and "127.0.0.1" not in tail, tail
    assert not out.exists()
