"""eval_test.py / eval_val.py end to end on a tiny random model (CPU): generation vs --predictions give the
same metrics, baselines, resumable checkpoint sweeps with csv/png/wandb-offline, and the Rank-GRPO README's
command lines (eval_sft.py / eval_grpo_val.py / grpo_test.py roles) run as subprocesses."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
METRIC_KEYS = [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in (5, 10, 15, 20)] + [
    "catalog_hit_ratio", "valid_item_ratio", "num_samples", "protocol", "split"]


def _contract_writer():
    spec = importlib.util.spec_from_file_location("_eval_contract", Path(__file__).with_name("test_evaluation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_contract_dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Contract data set + gt_catalog.pkl, and a run folder with checkpoint-1 and checkpoint-2 of a tiny model."""
    from modeling.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("evalscripts")
    dataset = _contract_writer()(root)
    run = root / "run_template"
    build_tiny_model(run / "checkpoint-1", tokenizer="bpe", hidden_size=32, num_layers=2, num_heads=2,
                     num_kv_heads=1, intermediate_size=64, vocab_size=600)
    shutil.copytree(run / "checkpoint-1", run / "checkpoint-2")
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [
        {"step": 1, "loss": 3.0, "reward": 0.1, "learning_rate": 1e-5, "epoch": 0.5},
        {"step": 2, "loss": 2.5, "reward": 0.3, "learning_rate": 5e-6, "epoch": 1.0}]}))
    return {"root": root, "dataset": dataset, "catalog": root / "gt_catalog.pkl", "template": run}


def _new_run(env, name: str) -> Path:
    dst = env["root"] / name
    shutil.copytree(env["template"], dst)
    return dst


def _run(args: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environ.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})})
    proc = subprocess.run([PY, *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_help_lists_both_forms():
    out = _run(["eval_test.py", "--help"]).stdout
    for flag in ("--model_path", "--predictions", "--baseline", "--model_root", "--checkpoint", "--protocol",
                 "--catalog_path", "--max_prompt_length", "--backend"):
        assert flag in out
    out = _run(["eval_val.py", "--help"]).stdout
    for flag in ("--run_dir", "--model_root", "--upload_wandb", "--wandb_project", "--step_interval", "--report_to"):
        assert flag in out


def test_generation_and_predictions_give_identical_metrics(env, tmp_path):
    import eval_test

    ckpt = env["template"] / "checkpoint-1"
    common = ["--dataset_path", str(env["dataset"]), "--split", "test", "--no_progress"]
    generated = eval_test.main(["--model_path", str(ckpt), "--output_dir", str(tmp_path / "gen"),
                                "--max_new_tokens", "16", "--batch_size", "2", "--backend", "hf", *common])
    assert generated["model_path"] == str(ckpt.resolve()) and generated["backend"] == "hf"
    assert generated["num_distinct_prompts"] == 4 and generated["num_samples"] == 6
    gen_rows = _jsonl(tmp_path / "gen" / "predictions.jsonl")
    assert [r["index"] for r in gen_rows] == list(range(6))
    assert gen_rows[0]["completion"] == gen_rows[1]["completion"] == gen_rows[2]["completion"]  # shared prompt

    rescored = eval_test.main(["--predictions", str(tmp_path / "gen" / "predictions.jsonl"),
                               "--output_dir", str(tmp_path / "pred"), *common])
    on_disk = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("gen", "pred")]
    for key in METRIC_KEYS:
        assert on_disk[0][key] == on_disk[1][key] == generated[key] == rescored[key], key
    assert on_disk[1]["predictions_file"] == str((tmp_path / "gen" / "predictions.jsonl").resolve())
    assert on_disk[1]["num_missing_predictions"] == 0 and "model_path" not in on_disk[1]
    assert _jsonl(tmp_path / "pred" / "predictions.jsonl") == gen_rows

    # The same completions with real answers swapped in: --predictions scores them like the oracle.
    from preprocess.contract import load_processed
    from evaluation.recommenders import GroundtruthRecommender

    dd, catalog = load_processed(env["dataset"])
    oracle = GroundtruthRecommender(catalog).completions(dd["test"])
    lines = [json.dumps({"index": i, "sample_id": r["sample_id"], "completion": oracle[i]})
             for i, r in enumerate(gen_rows) if i != 4]  # row 4 left out: counted, scored 0
    (tmp_path / "oracle.jsonl").write_text("\n".join(lines) + "\n")
    metrics = eval_test.main(["--predictions", str(tmp_path / "oracle.jsonl"), "--output_dir",
                              str(tmp_path / "oracle"), *common])
    assert metrics["num_missing_predictions"] == 1 and metrics["missing_prediction_indices"] == [4]
    assert metrics["recall@20"] == pytest.approx(5 / 6) and metrics["num_samples"] == 6


def test_baselines_and_strict_protocol(env, tmp_path):
    import eval_test

    common = ["--dataset_path", str(env["dataset"]), "--split", "test"]
    pop = eval_test.main(["--baseline", "popularity", "--output_dir", str(tmp_path / "pop"), *common])
    assert pop["baseline"] == "popularity" and 0 < pop["recall@5"] < 1 and pop["catalog_hit_ratio"] == 1.0
    strict = eval_test.main(["--baseline", "groundtruth", "--protocol", "strict", "--max_samples", "3",
                             "--output_dir", str(tmp_path / "gt"), *common])
    assert strict["protocol"] == "strict" and strict["recall@20"] == 1.0 and strict["num_samples"] == 3
    assert len(_jsonl(tmp_path / "gt" / "predictions.jsonl")) == 3


def test_eval_val_sweep_is_resumable(env, capsys):
    import eval_val

    run = _new_run(env, "run_resume")
    args = ["--run_dir", str(run), "--dataset_path", str(env["dataset"]), "--max_new_tokens", "12",
            "--batch_size", "4", "--backend", "hf", "--no_progress"]
    results = eval_val.main(args)
    assert sorted(results) == [1, 2]
    csv_lines = (run / "eval_validation.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,recall@5,") and [ln.split(",")[0] for ln in csv_lines[1:]] == ["1", "2"]
    for name in ("eval_validation.png", "train_curves.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    metrics_files = [run / f"checkpoint-{s}" / "eval_validation" / "metrics.json" for s in (1, 2)]
    mtimes = [p.stat().st_mtime_ns for p in metrics_files]
    assert json.loads(metrics_files[1].read_text())["step"] == 2
    capsys.readouterr()

    shutil.rmtree(run / "checkpoint-1")  # e.g. save_total_limit rotated it away: its CSV row stays
    again = eval_val.main(args)
    out = capsys.readouterr().out
    assert "step 2: done already" in out and "evaluating" not in out
    assert metrics_files[1].stat().st_mtime_ns == mtimes[1] and sorted(again) == [2]
    assert [ln.split(",")[0] for ln in (run / "eval_validation.csv").read_text().splitlines()[1:]] == ["1", "2"]

    # different settings (max_new_tokens) -> re-evaluated, not silently reused
    eval_val.main(args[:-7] + ["--max_new_tokens", "8", "--batch_size", "4", "--backend", "hf", "--no_progress",
                               "--step_interval", "2"])
    assert "settings changed: max_new_tokens 12 -> 8" in capsys.readouterr().out


def test_seed_eval_val_command_line_wandb_offline(env):
    """The README's eval_sft.py / eval_grpo_val.py line, with WANDB_MODE=offline."""
    run = _new_run(env, "run_seed_val")
    proc = _run(["eval_val.py", "--model_name", "tiny/Tiny-Instruct", "--model_root", str(run),
                 "--dataset_path", str(env["dataset"]), "--catalog_path", str(env["catalog"]),
                 "--wandb_project", "grpo_eval_val", "--upload_wandb", "--step_interval", "1",
                 "--max_new_tokens", "12", "--no_progress"], {"WANDB_MODE": "offline"})
    offline_runs = list((run / "wandb_eval" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb")), proc.stdout[-2000:]
    rows = (run / "eval_validation.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (run / "eval_validation.png").is_file() and (run / "train_curves.png").is_file()
    metrics = json.loads((run / "checkpoint-2" / "eval_validation" / "metrics.json").read_text())
    assert metrics["protocol"] == "packed" and metrics["split"] == "validation" and metrics["num_samples"] == 4
    assert metrics["catalog_path"] == str(env["catalog"].resolve()) and metrics["model_name"] == "tiny/Tiny-Instruct"


def test_seed_grpo_test_command_line(env):
    """The README's grpo_test.py line: evaluates <model_root>/checkpoint-2 on the test split."""
    run = _new_run(env, "run_seed_test")
    proc = _run(["eval_test.py", "--model_name", "tiny/Tiny-Instruct", "--model_root", str(run),
                 "--dataset_path", str(env["dataset"]), "--catalog_path", str(env["catalog"]), "--checkpoint", "2",
                 "--max_new_tokens", "12", "--no_progress"])
    out_dir = run / "checkpoint-2" / "eval_test"
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 6 and metrics["protocol"] == "packed"
    assert metrics["model_path"] == str((run / "checkpoint-2").resolve())
    assert len(_jsonl(out_dir / "predictions.jsonl")) == 6
    assert "Recall" in proc.stdout and "NDCG" in proc.stdout and "protocol=packed" in proc.stdout


def test_common_arguments_have_one_help_text_in_every_script():
    """--max_*samples, --dataset_path, --seed, --log_file: the same meaning (and words) in all four scripts."""
    import re

    import eval_test
    import eval_val
    from cli.args import COMMON_HELP

    def words(text: str) -> str:
        return re.sub(r"\s+", " ", text)

    for script in (eval_test, eval_val):
        text = words(script.build_parser().format_help())
        for name in ("dataset_path", "catalog_path", "max_samples", "seed", "n_items", "require_year", "log_file"):
            assert words(COMMON_HELP[name]) in text, (script.__name__, name)
    pytest.importorskip("trl")
    from trl import TrlParser

    import train_rank_grpo
    import train_sft

    for script_args, config in ((train_sft.SFTScriptArguments, train_sft.SFTConfig),
                                (train_rank_grpo.ScriptArguments, train_rank_grpo.RankGRPOConfig)):
        text = words(TrlParser((script_args, config)).format_help())
        for name in ("dataset_path", "max_train_samples", "max_eval_samples", "log_file"):
            assert words(COMMON_HELP[name]) in text, (script_args.__name__, name)
