"""Hostile input to the root scripts (issue 20 items 10-15): each case asserts the exact refusal -- exit status 2
and ONE `error:` line naming the file, the checkpoint or the option -- or, where nothing is wrong, that the run goes
on. Scripts run in-process through the one entry point they share (cli.run.run_script) so that a start-up
refusal costs milliseconds; a few run as real subprocesses to show the `__main__` wiring and RECRL_DEBUG.

Inputs: checkpoints whose config.json names another model_type (10); an --output_dir that is a file, under a file,
or unwritable, in every script (11); zero-byte, truncated and same-size-corrupt model.safetensors / optimizer.pt,
with and without recorded hashes (12); out-of-range numeric options (13); the one-line error format (14); empty
predictions files (15).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _contract_module():
    spec = importlib.util.spec_from_file_location("_scripts_contract", Path(__file__).with_name("test_evaluation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One contract data set and one tiny Qwen3 model (plus copies whose config.json names llama / gpt2)."""
    import torch

    from modeling.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hostile_scripts")
    data = _contract_module().write_contract_dataset(root)
    model = root / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    others = {}
    for model_type, arch in (("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")):
        other = root / f"as_{model_type}"
        shutil.copytree(model, other)
        config = json.loads((other / "config.json").read_text())
        config.update(model_type=model_type, architectures=[arch])
        (other / "config.json").write_text(json.dumps(config))
        others[model_type] = other
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    return {"root": root, "data": str(data), "model": model, "other": others, "file": a_file}


def _main(script: str):
    import importlib

    return importlib.import_module(script).main


def _refused(capsys, script: str, argv: list[str], *fragments: str) -> str:
    """Run `script`.main(argv) through run_script: exit 2 and one `error:` line containing every fragment."""
    from cli.run import run_script

    capsys.readouterr()
    rc = run_script(_main(script), [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, f"{script} {argv}: rc {rc}\n{err[-3000:]}"
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err, err[-3000:]
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _checkpoint(env, dst: Path, step: int = 1, optimizer: bool = True, seal: bool = True) -> Path:
    """A checkpoint-N folder of the tiny model (trainer_state.json, optionally an optimizer.pt), sealed with the
    completion marker (sha256 recorded) unless `seal=False`."""
    import torch

    from modeling.checkpoint_integrity import mark_checkpoint_complete

    _copy(env["model"], dst)
    (dst / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if optimizer:
        torch.save({"state": {0: {"exp_avg": torch.ones(64)}}, "param_groups": []}, dst / "optimizer.pt")
    if seal:
        mark_checkpoint_complete(dst, step)
    return dst


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# ====================================================================== 10. weights that do not fit the model
@pytest.mark.parametrize("model_type, fragment", [
    ("llama", "2 weights unexpected (in the file, not in the model): model.layers.0.self_attn.k_norm.weight"),
    ("gpt2", "weights missing (would be randomly initialised): lm_head.weight"),
])
def test_eval_test_refuses_a_checkpoint_of_another_model_type(env, capsys, tmp_path, model_type, fragment):
    """Before: loaded as a randomly initialised model and scored to zeros with rc 0."""
    other = env["other"][model_type]
    line = _refused(capsys, "eval_test", ["--model_path", other, "--dataset_path", env["data"], "--max_samples", 1,
                                          "--max_new_tokens", 2, "--output_dir", tmp_path / "out"],
                    f"checkpoint {other}:", fragment, f"model_type {model_type!r}")
    assert "Refusing to load a partly random model" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("script,kind,expected", [("train_rank_grpo", "llama", "weights unexpected"),
                                                    ("train_recpo", "gpt2", "weights missing")])
def test_rl_scripts_refuse_another_model_type_before_the_run_folder(env, capsys, tmp_path, script, kind, expected):
    other = env["other"][kind]
    _refused(capsys, script, ["--model_name", other, "--dataset_path", env["data"], "--output_dir",
                              tmp_path / "run", "--report_to", "none"],
             f"checkpoint {other}:", expected)
    assert not (tmp_path / "run").exists()


def test_train_sft_refuses_another_model_type(env, capsys, tmp_path):
    other = env["other"]["llama"]
    _refused(capsys, "train_sft", ["--model_name", other, "--dataset_path", env["data"], "--output_dir",
                                   tmp_path / "run", "--report_to", "none"],
             f"checkpoint {other}:", "model.layers.0.self_attn.k_norm.weight")


def test_train_sft_refuses_a_resume_checkpoint_of_another_model_type(env, capsys, tmp_path):
    """The resume checkpoint is checked against the model being trained, before any data work."""
    ckpt = _checkpoint(env, tmp_path / "run" / "checkpoint-1")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(config))
    from modeling.checkpoint_integrity import mark_checkpoint_complete

    mark_checkpoint_complete(ckpt, 1)  # sealed after the change: the files are whole, the weights do not fit
    _refused(capsys, "train_sft", ["--model_name", env["model"], "--dataset_path", env["data"], "--output_dir",
                                   tmp_path / "run", "--report_to", "none", "--resume_from_checkpoint", ckpt],
             f"checkpoint {ckpt}: config.json: config.json names model_type 'llama'", "'qwen3'")


def test_eval_val_exits_2_when_no_checkpoint_loads(env, capsys, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = _copy(env["other"]["llama"], run_dir / "checkpoint-1")
    from modeling.checkpoint_integrity import mark_checkpoint_complete

    mark_checkpoint_complete(ckpt, 1)
    _refused(capsys, "eval_val", ["--run_dir", run_dir, "--dataset_path", env["data"], "--max_samples", 1,
                                  "--max_new_tokens", 2, "--backend", "hf"],
             f"checkpoint {run_dir}: no checkpoint could be evaluated; 1 failed to load", "weights unexpected")
    assert not (run_dir / "eval_validation.csv").exists()


def test_the_same_model_type_loads(env):
    from modeling.loading import check_weights_load, load_model_and_tokenizer

    assert check_weights_load(env["model"]) == str(env["model"])
    model, _ = load_model_and_tokenizer(env["model"])
    assert model.config.model_type == "qwen3"


# ============================================================================ 11. --output_dir checked first
def _output_dir_cases(env):
    under = env["file"] / "sub"
    return {"file": (env["file"], "--output_dir is a file, not a folder"),
            "under_file": (under, f"--output_dir is under {env['file']}, which is a file")}


@pytest.mark.parametrize("where", ["file", "under_file"])
@pytest.mark.parametrize("script, argv", [
    ("eval_test", ["--baseline", "groundtruth"]),
    ("eval_test", ["--predictions", "{root}/preds.jsonl"]),
    ("train_sft", ["--model_name", "{model}", "--report_to", "none"]),
    ("train_rank_grpo", ["--model_name", "{model}", "--report_to", "none"]),
    ("train_recpo", ["--model_name", "{model}", "--report_to", "none"]),
    ("train_deeprec", ["--model_name", "{model}", "--trm_path", "{root}/no_trm", "--report_to", "none"]),
    ("train_trm", []),
])
def test_bad_output_dir_is_refused_at_start_up(env, capsys, monkeypatch, script, argv, where):
    """Before: the whole generation / training ran, then the write failed. Now: refused before anything loads
    (the data set path does not even exist; a --predictions file and a TRM are never read)."""
    import preprocess.contract as contract

    path, fragment = _output_dir_cases(env)[where]
    loads = []
    monkeypatch.setattr(contract, "load_processed", lambda *a, **k: loads.append(a) or pytest.fail("data loaded"))
    argv = [a.format(root=env["root"], model=env["model"]) for a in argv]
    _refused(capsys, script, [*argv, "--dataset_path", env["root"] / "no_such_dataset", "--output_dir", path],
             f"{path}: {fragment}")
    assert not loads


def test_unwritable_output_dir_is_refused(env, capsys, monkeypatch, tmp_path):
    """Root may write anywhere, so the permission bit is simulated where check_output_dir asks for it."""
    import preprocess.contract as contract

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(contract.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    _refused(capsys, "eval_test", ["--baseline", "groundtruth", "--dataset_path", env["data"], "--output_dir",
                                   locked / "out"],
             f"{locked / 'out'}: --output_dir: cannot write in {locked} (permission denied)")
    _refused(capsys, "train_trm", ["--dataset_path", env["data"], "--output_dir", locked / "trm"],
             "cannot write in", str(locked))


def test_eval_val_refuses_an_unwritable_run_dir(env, capsys, monkeypatch, tmp_path):
    import preprocess.contract as contract

    run_dir = _copy(env["model"], tmp_path / "run" / "checkpoint-1").parent
    real_access = os.access
    monkeypatch.setattr(contract.os, "access", lambda p, mode: False if Path(p) == run_dir else real_access(p, mode))
    _refused(capsys, "eval_val", ["--run_dir", run_dir, "--dataset_path", env["data"]],
             f"{run_dir}: --run_dir: cannot write in {run_dir} (permission denied)")


# ========================================================== 12. corrupt weights / optimizer, named, hashed
def test_a_saved_checkpoint_records_the_sha256_of_every_file(env, tmp_path):
    from modeling.checkpoint_integrity import COMPLETE_MARKER, MARKER_FORMAT

    ckpt = _checkpoint(env, tmp_path / "checkpoint-3", step=3)
    marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    assert marker["format"] == MARKER_FORMAT == 2
    assert set(marker["sha256"]) == set(marker["files"]) >= {"model.safetensors", "optimizer.pt", "config.json"}
    for rel, digest in marker["sha256"].items():
        assert digest == hashlib.sha256((ckpt / rel).read_bytes()).hexdigest(), rel


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_data(path: Path) -> None:  # same size, a byte of tensor data flipped: only a hash can tell
    _flip_byte(path, path.stat().st_size - 10)


def _corrupt_middle(path: Path) -> None:  # same size, a byte in the middle (a torch zip member's data) flipped
    _flip_byte(path, path.stat().st_size // 2)


def _corrupt_header(path: Path) -> None:  # same size, the JSON header broken
    _flip_byte(path, 9)


@pytest.mark.parametrize("seal, damage, fragment", [
    (True, _zero, "model.safetensors has 0 bytes, checkpoint_complete.json says"),
    (True, _truncate, "model.safetensors has"),
    (True, _corrupt_data, "model.safetensors: sha256 differs from the one checkpoint_complete.json recorded"),
    (False, _zero, "model.safetensors has 0 bytes, shorter than a safetensors header"),
    (False, _truncate, "model.safetensors is truncated"),
    (False, _corrupt_header, "model.safetensors has an unreadable safetensors header"),
])
def test_eval_test_names_a_damaged_model_safetensors(env, capsys, tmp_path, seal, damage, fragment):
    """Before: a raw SafetensorError (or a random model) without the path."""
    ckpt = _checkpoint(env, tmp_path / "run" / "checkpoint-1", optimizer=False, seal=seal)
    damage(ckpt / "model.safetensors")
    line = _refused(capsys, "eval_test", ["--model_path", ckpt, "--dataset_path", env["data"], "--max_samples", 1,
                                          "--output_dir", tmp_path / "out"], fragment)
    assert str(ckpt) in line


@pytest.mark.parametrize("seal, damage, fragment", [
    (True, _zero, "optimizer.pt has 0 bytes, checkpoint_complete.json says"),
    (True, _truncate, "optimizer.pt has"),
    (True, _corrupt_data, "optimizer.pt: sha256 differs"),
    (True, _corrupt_middle, "optimizer.pt: sha256 differs"),
    ("v1", _corrupt_middle, "optimizer.pt: is corrupt (member"),  # sealed before hashes: sizes match, the zip CRC does not
    (False, _zero, "optimizer.pt: is empty (0 bytes)"),
    (False, _truncate, "optimizer.pt: is truncated (no zip directory at its end)"),
])
def test_resume_names_a_damaged_optimizer(env, capsys, tmp_path, seal, damage, fragment):
    """Before: PyTorch's advice to use weights_only=False, or an unpickling error, without the path. Now refused
    before the model loads."""
    from modeling.checkpoint_integrity import COMPLETE_MARKER

    run_dir = tmp_path / "run"
    ckpt = _checkpoint(env, run_dir / "checkpoint-1", seal=bool(seal))
    if seal == "v1":  # a marker written before hashes were recorded
        marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
        marker.pop("sha256")
        marker["format"] = 1
        (ckpt / COMPLETE_MARKER).write_text(json.dumps(marker))
    damage(ckpt / "optimizer.pt")
    line = _refused(capsys, "train_sft", ["--model_name", env["model"], "--dataset_path", env["data"],
                                          "--output_dir", run_dir, "--report_to", "none",
                                          "--resume_from_checkpoint", ckpt], fragment)
    assert str(ckpt) in line


def test_an_old_checkpoint_without_hashes_still_resumes_with_a_note(env, tmp_path, caplog):
    import logging

    from modeling.loading import resolve_resume

    ckpt = _checkpoint(env, tmp_path / "run" / "checkpoint-1", seal=False)
    with caplog.at_level(logging.INFO, logger="modeling.checkpoint_integrity"):
        assert resolve_resume(str(ckpt), tmp_path / "run") == str(ckpt)
    assert "no sha256 recorded" in caplog.text and "sizes and a parse" in caplog.text


# ======================================================================= 13. numeric options at parse time
@pytest.mark.parametrize("script, option, value, fragment", [
    ("train_rank_grpo", "--beta", "-1", "--beta must be a number >= 0, got -1.0"),
    ("train_rank_grpo", "--kl_beta", "-0.5", "--kl_beta must be a number >= 0, got -0.5"),
    ("train_rank_grpo", "--num_iterations", "0", "--num_iterations must be an integer >= 1, got 0"),
    ("train_rank_grpo", "--mu", "0", "--mu must be an integer >= 1, got 0"),
    ("train_rank_grpo", "--temperature", "0", "--temperature must be a number > 0, got 0.0"),
    ("train_rank_grpo", "--max_completion_length", "0", "--max_completion_length must be an integer >= 1, got 0"),
    ("train_rank_grpo", "--num_generations", "1", "--num_generations must be an integer >= 2, got 1"),
    ("train_rank_grpo", "--lr", "0", "--lr must be a number > 0, got 0.0"),
    ("train_recpo", "--learning_rate", "nan", "--learning_rate must be a number > 0, got nan"),
    ("train_recpo", "--reward_beta", "1.5", "--reward_beta must be a number in [0, 1], got 1.5"),
    ("train_recpo", "--top_p", "0", "--top_p must be a number in (0, 1], got 0.0"),
    ("train_deeprec", "--max_calls", "0", "--max_calls must be an integer >= 1, got 0"),
    ("train_sft", "--seed", "-1", "--seed must be an integer >= 0, got -1"),
    ("train_sft", "--learning_rate", "-0.001", "--learning_rate must be a number > 0, got -0.001"),
    ("train_sft", "--max_length", "0", "--max_length must be an integer >= 1, got 0"),
    ("train_sft", "--max_train_samples", "0", "--max_train_samples must be an integer >= 1, got 0"),
    ("train_trm", "--preference_variants", "0", "--preference_variants must be an integer >= 1, got 0"),
    ("train_trm", "--preference_prob", "1.5", "--preference_prob must be a number in [0, 1], got 1.5"),
    ("train_trm", "--dropout", "1", "--dropout must be a number in [0, 1), got 1.0"),
    ("train_trm", "--max_steps", "0", "--max_steps must be an integer >= 1 (or -1), got 0"),
    ("train_trm", "--seed", "-3", "--seed must be an integer >= 0, got -3"),
    ("eval_test", "--seed", "-1", "--seed must be an integer >= 0, got -1"),
    ("eval_test", "--max_new_tokens", "0", "--max_new_tokens must be an integer >= 1, got 0"),
])
def test_numeric_options_are_checked_at_parse_time_naming_the_option(env, capsys, tmp_path, script, option, value,
                                                                     fragment):
    """Before: --beta -1 trained with a negative KL, --num_iterations 0 trained nothing (rc 0), temperature 0 /
    max_completion_length 0 failed at the first generation, --seed -1 inside numpy, --preference_variants 0
    crashed. Now: refused before the model or the data load (the data set path does not exist)."""
    extra = {"train_deeprec": ["--trm_path", "x", "--model_name", env["model"]], "train_trm": [],
             "eval_test": ["--baseline", "groundtruth"]}.get(script, ["--model_name", env["model"]])
    _refused(capsys, script, [*extra, "--dataset_path", tmp_path / "missing", "--output_dir", tmp_path / "out",
                              option, value], fragment)
    assert not (tmp_path / "out").exists()


def test_trm_help_says_what_preference_variants_means():
    import train_trm

    help_text = train_trm.TRMScriptArguments.__dataclass_fields__["preference_variants"].metadata["help"]
    assert ">= 1" in help_text and "0:" not in help_text


def test_validate_options_table_matches_the_documented_defaults():
    """Every default of every script's configs passes the table (so the table refuses only bad input)."""
    from trl import SFTConfig

    import train_trm
    from methods.deeprec.trainer import DeepRecConfig
    from methods.rank_grpo.trainer import RankGRPOConfig
    from methods.recpo.trainer import RecPOConfig
    from cli.args import validate_options

    validate_options(train_trm.TRMScriptArguments(dataset_path="x"))
    for cls in (SFTConfig, RankGRPOConfig, RecPOConfig, DeepRecConfig):
        validate_options(cls(output_dir="x", use_cpu=True, bf16=False))


# ==================================================================== 14. one line, exit 2, debug traceback
def _subprocess(args: list, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("RECRL_DEBUG",) and not k.startswith("WANDB_")}
    environ.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                    **(extra_env or {})})
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)


def test_scripts_print_one_line_for_their_own_errors_and_a_traceback_only_under_recrl_debug(env, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["eval_test.py", "--predictions", empty, "--dataset_path", env["data"], "--output_dir", tmp_path / "o"]
    proc = _subprocess(args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {empty}: no prediction lines (an empty file); nothing to score: write one JSON "
                      "object per row (eval_test.py's predictions.jsonl format) (fix or regenerate the predictions "
                      "file; RECRL_DEBUG=1 shows the traceback)"], proc.stderr[-3000:]
    debug = _subprocess(args, {"RECRL_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert "PredictionsError" in debug.stderr and "RECRL_DEBUG=1 shows" not in debug.stderr


def test_a_train_script_run_as_a_program_prints_one_line(env, tmp_path):
    """The `__main__` wiring of a training script (TrlParser path): one line, exit 2, before anything loads."""
    proc = _subprocess(["train_trm.py", "--dataset_path", tmp_path / "nowhere", "--output_dir", env["file"]])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {env['file']}: --output_dir is a file")


def test_a_bug_keeps_its_traceback(capsys):
    from cli.run import run_script

    def broken(argv):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_script(broken, [])


def test_config_file_errors_are_one_line(env, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1e-5\nno_such_field: 3\n")
    _refused(capsys, "train_sft", ["--config", bad, "--model_name", env["model"], "--dataset_path", env["data"]],
             "no_such_field")


# ================================================================================ 15. empty predictions
@pytest.mark.parametrize("body, fragment", [
    ("", "no prediction lines (an empty file)"),
    ("\n\n  \n", "no prediction lines (only blank lines)"),
])
def test_an_empty_predictions_file_is_refused(env, capsys, tmp_path, body, fragment):
    """Before: scored to zeros with only a warning, rc 0."""
    path = tmp_path / "preds.jsonl"
    path.write_text(body)
    _refused(capsys, "eval_test", ["--predictions", path, "--dataset_path", env["data"], "--output_dir",
                                   tmp_path / "out"], f"{path}: {fragment}")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_predictions_for_none_of_the_evaluated_rows_are_refused(env, capsys, tmp_path):
    """A file made on another subset: every evaluated row would score zero."""
    from datasets import load_from_disk

    from evaluation.predictions import subset_rows

    test = load_from_disk(str(Path(env["data"]) / "test"))
    rows = subset_rows(len(test), 2, 0)
    others = [i for i in range(len(test)) if i not in rows]
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps({"index": i, "sample_id": test[i]["sample_id"], "completion": "Heat (1995)"})
                            + "\n" for i in others))
    _refused(capsys, "eval_test", ["--predictions", path, "--dataset_path", env["data"], "--max_samples", 2,
                                   "--seed", 0, "--output_dir", tmp_path / "out"],
             f"{path}: none of the 2 evaluated rows has a prediction", f"{len(others)} lines")


@pytest.mark.parametrize("damage, fragment", [
    (_zero, "model.safetensors: has 0 bytes, shorter than a safetensors header"),
    (_corrupt_header, "model.safetensors: has an unreadable safetensors header"),
])
def test_eval_test_names_a_damaged_trm_checkpoint(env, capsys, tmp_path, damage, fragment):
    """A TRM folder (train_trm.py's) with damaged weights: before, a raw SafetensorError without the path."""
    import numpy as np

    from retrieval.retriever import TRMRetriever

    class Encoder:
        name = "stand-in"

        def encode(self, texts, batch_size=64):
            rng = np.random.default_rng(len(texts))
            out = rng.standard_normal((len(texts), 8)).astype(np.float32)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    items = [{"id": i, "title": f"Item {i}", "year": 2000} for i in range(6)]
    folder = tmp_path / "trm"
    TRMRetriever.build(items, Encoder(), hidden_size=8, num_heads=2, ffn_size=16, num_experts=2,
                       max_history=4).save(folder)
    damage(folder / "model.safetensors")
    _refused(capsys, "eval_test", ["--recommender", "trm", "--model_path", folder, "--dataset_path", env["data"],
                                   "--output_dir", tmp_path / "out"], f"checkpoint {folder}: {fragment}")


def test_train_sft_names_a_missing_completion_column(env, capsys, tmp_path):
    """A data set without the SFT column: one line naming the split folder and the column (was a traceback)."""
    from datasets import load_from_disk

    data = tmp_path / "no_completion"
    shutil.copytree(env["data"], data)
    train = load_from_disk(str(Path(env["data"]) / "train")).remove_columns(["completion"])
    shutil.rmtree(data / "train")
    train.save_to_disk(str(data / "train"))
    _refused(capsys, "train_sft", ["--model_name", env["model"], "--dataset_path", data, "--output_dir",
                                   tmp_path / "run", "--report_to", "none", "--eval_strategy", "no"],
             f"{data}/train, field 'completion': missing column")


def test_the_recpo_projection_saved_in_the_policy_is_an_expected_extra_weight():
    """RecPO saves its projection as a submodule of the policy: allowed by name, and only that name."""
    from modeling.loading import POLICY_EXTRA_MODULES
    from methods.recpo.head import PROJECTION_MODULE

    assert POLICY_EXTRA_MODULES == (PROJECTION_MODULE,)


@pytest.mark.parametrize("where, fragment", [
    ("under_file", "--log_file's folder is a file, not a folder"),
    ("folder", "--log_file is a folder; name a file"),
])
def test_a_bad_log_file_is_one_line(env, capsys, tmp_path, where, fragment):
    log = env["file"] / "run.log" if where == "under_file" else tmp_path
    _refused(capsys, "eval_test", ["--baseline", "groundtruth", "--dataset_path", env["data"], "--output_dir",
                                   tmp_path / "out", "--log_file", log], fragment)


def test_the_meta_device_check_runs_under_a_zero3_launch(env):
    """A DeepSpeed ZeRO-3 launch sets a global config that forbids a device_map: the check steps around it and
    leaves it set (the trainers' own loads still partition)."""
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import (HfDeepSpeedConfig, is_deepspeed_zero3_enabled,
                                                     unset_hf_deepspeed_config)

    from modeling.checkpoint_integrity import CheckpointError
    from modeling.loading import check_weights_load

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        assert check_weights_load(env["model"]) == str(env["model"])
        with pytest.raises(CheckpointError, match="weights unexpected"):
            check_weights_load(env["other"]["llama"])
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
    del config
