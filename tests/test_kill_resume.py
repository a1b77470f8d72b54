"""Kill-safe checkpoints (trainers/checkpointing.py, modeling/checkpoint_integrity.py).

* Readers never pick a partial checkpoint: a folder being written, a half-written model.safetensors, a file changed
  after its completion marker -- each skipped with a log line naming it and why; eval_val.py reports a checkpoint
  whose weights fail to load (SafetensorError) and goes on with the series.
* For each trainer (SFT, Rank-GRPO, RecPO, DeepRec): a CPU run of the script in a subprocess is stopped dead while
  writing checkpoint-4 (checkpoint-2 complete), checked live (listing, resume choice, eval_val), killed with
  SIGKILL, resumed with `--resume_from_checkpoint last`; its logged curve (loss, reward, grad norm, lr) equals an
  uninterrupted run with the same seed within REL_TOL. RecPO's item table and DeepRec's stage / TRM path survive.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from kill_resume_driver import StableEncoder, run
from modeling.checkpoint_integrity import (COMPLETE_MARKER, WRITING_MARKER, checkpoint_problem,
                                           mark_checkpoint_complete, verify_checkpoint)
from modeling.loading import list_checkpoints, resolve_checkpoint, resolve_resume

torch.set_num_threads(1)

DRIVER = REPO / "tests" / "kill_resume_driver.py"
# Resumed vs uninterrupted: same process layout, 1 thread, restored RNGs -- observed identical to the last bit on
# CPU; the tolerance only allows for a reordered float reduction.
REL_TOL, ABS_TOL = 1e-5, 1e-7
CURVE_KEYS = ("loss", "reward", "grad_norm", "learning_rate", "entropy")
RUN = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
       "--report_to", "none", "--seed", "0", "--activation_checkpointing", "false", "--dataloader_num_workers", "0"]
HANG_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from modeling.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("kill_model") / "model"
    build_tiny_model(path, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    return path


def _copy_model(model: Path, dest: Path, step: int, trainer_state: bool = True) -> Path:
    shutil.copytree(model, dest)
    if trainer_state:
        (dest / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return dest


# ------------------------------------------------------------------------------------------------- readers
def test_partial_checkpoints_are_skipped_with_a_reason(tiny_model, tmp_path, caplog):
    run_dir = tmp_path / "run"
    marked = _copy_model(tiny_model, run_dir / "checkpoint-1", 1)
    mark_checkpoint_complete(marked, 1)
    writing = _copy_model(tiny_model, run_dir / "checkpoint-2", 2)  # all files there, but still being written
    (writing / WRITING_MARKER).write_text("{}")
    half = _copy_model(tiny_model, run_dir / "checkpoint-3", 3)  # no markers (older run), weights cut short
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _copy_model(tiny_model, run_dir / "checkpoint-4", 4)  # no markers, whole: accepted (older runs stay usable)
    changed = _copy_model(tiny_model, run_dir / "checkpoint-5", 5)
    mark_checkpoint_complete(changed, 5)
    with open(changed / "model.safetensors", "ab") as fh:  # rewritten after it was sealed
        fh.write(b"\0" * 16)
    _copy_model(tiny_model, run_dir / "checkpoint-6", 6, trainer_state=False)  # a model, but cannot be resumed

    with caplog.at_level(logging.WARNING, logger="modeling.loading"):
        assert list_checkpoints(run_dir) == [1, 4, 6]
    log = caplog.text
    assert "checkpoint-2: being written" in log
    assert "checkpoint-3: model.safetensors is truncated" in log
    assert "checkpoint-5: model.safetensors has" in log and "changed after" in log
    assert list_checkpoints(run_dir, for_resume=True) == [1, 4]
    assert list_checkpoints(run_dir, complete_only=False) == [1, 2, 3, 4, 5, 6]

    assert resolve_checkpoint(run_dir, "last") == str(run_dir / "checkpoint-6")
    assert resolve_resume("last", run_dir) == str(run_dir / "checkpoint-4")
    for step, why in ((2, "being written"), (3, "truncated"), (5, "changed after")):
        with pytest.raises(FileNotFoundError, match=why):
            resolve_checkpoint(run_dir, step)
        with pytest.raises(FileNotFoundError, match=why):
            resolve_resume(str(run_dir / f"checkpoint-{step}"), run_dir)
    # a final model cut short in the run folder itself
    final = _copy_model(tiny_model, tmp_path / "final", 0)
    (final / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{}")
    with pytest.raises(FileNotFoundError, match="not whole"):
        resolve_checkpoint(final)
    # marker file list: every file with its size, the markers themselves excluded
    listed = json.loads((marked / COMPLETE_MARKER).read_text())["files"]
    assert listed["model.safetensors"] == (marked / "model.safetensors").stat().st_size
    assert COMPLETE_MARKER not in listed and WRITING_MARKER not in listed and not (marked / WRITING_MARKER).exists()


def test_eval_val_skips_partial_and_unloadable_checkpoints(tiny_model, tmp_path, capsys):
    """A corrupt header (same size, so the completion marker's sizes still vouch for it) differs from the sha256
    the marker recorded: reported before any loader sees it, and the next checkpoints are evaluated."""
    import eval_val
    from test_sft import make_processed

    data = make_processed(tmp_path / "data", n_train=4, n_val=3)
    run_dir = tmp_path / "run"
    for step in (1, 2, 3):
        mark_checkpoint_complete(_copy_model(tiny_model, run_dir / f"checkpoint-{step}", step), step)
    weights = run_dir / "checkpoint-2" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[8:16] = b"not json"
    weights.write_bytes(bytes(raw))
    partial = _copy_model(tiny_model, run_dir / "checkpoint-4", 4)
    (partial / WRITING_MARKER).write_text("{}")
    results = eval_val.main(["--run_dir", str(run_dir), "--dataset_path", data, "--max_samples", "2",
                             "--max_new_tokens", "4", "--backend", "hf", "--n_items", "5"])
    out = capsys.readouterr().out
    assert sorted(results) == [1, 3]
    assert "step 2: cannot load" in out and "model.safetensors: sha256 differs" in out
    assert "step 4:" in out and "is not complete (being written" in out
    assert "2 checkpoint(s) skipped" in out
    rows = (run_dir / "eval_validation.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "3"]


# -------------------------------------------------------------------------------------- kill -9 and resume
def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               WANDB_MODE="disabled", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return env


def _curve(trainer) -> list[dict]:
    return [{k: h[k] for k in ("step",) + CURVE_KEYS if k in h} for h in trainer.state.log_history if "loss" in h]


def _assert_same_curve(resumed, reference):
    got, want = _curve(resumed), _curve(reference)
    assert [h["step"] for h in got] == [h["step"] for h in want] == [1, 2, 3, 4]
    diff = max(abs(g[k] - w[k]) for g, w in zip(got, want) for k in w if k in g)
    print(f"resumed vs uninterrupted: max |difference| over {sorted(want[0])} = {diff:.3g}")
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=REL_TOL, abs=ABS_TOL), (g["step"], key, g[key], w[key])
    # the curve is not trivially flat (a zero-gradient run would match anything)
    assert any(h.get("grad_norm", 0) > 0 for h in want)


def kill_and_resume(kind: str, argv: list[str], tmp_path: Path, check_live=None):
    """(resumed trainer, uninterrupted trainer, run folder). The subprocess and the uninterrupted in-process run go
    side by side; the subprocess stops inside the save of checkpoint-4 and is killed there."""
    run_dir, ref_dir, flag = tmp_path / "run", tmp_path / "ref", tmp_path / "hanging"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(DRIVER), kind, "4", str(flag), "--", *argv, "--output_dir",
                                 str(run_dir)], cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        reference = run(kind, argv + ["--output_dir", str(ref_dir)])
        deadline = time.time() + HANG_TIMEOUT_S
        while not flag.exists():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the {kind} run did not reach checkpoint-4 (rc {proc.poll()}):\n"
                            + log_path.read_text()[-4000:])
            time.sleep(0.5)
        # live: checkpoint-4 is half written (model yes, optimizer / trainer_state no), training is still running
        assert proc.poll() is None
        assert (run_dir / "checkpoint-4" / WRITING_MARKER).is_file()
        assert "being written" in checkpoint_problem(run_dir / "checkpoint-4")
        assert checkpoint_problem(run_dir / "checkpoint-2", for_resume=True) is None
        assert list_checkpoints(run_dir) == [2]
        assert resolve_resume("last", run_dir) == str(run_dir / "checkpoint-2")
        if check_live is not None:
            check_live(run_dir)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "checkpoint-4" / COMPLETE_MARKER).exists()

    resumed = run(kind, argv + ["--output_dir", str(run_dir), "--resume_from_checkpoint", "last"])
    assert resumed.state.global_step == 4
    assert checkpoint_problem(run_dir / "checkpoint-4", for_resume=True) is None  # rewritten whole
    assert (run_dir / "checkpoint-4" / COMPLETE_MARKER).is_file()
    assert not (run_dir / "checkpoint-4" / WRITING_MARKER).exists()
    hashes = json.loads((run_dir / "checkpoint-4" / COMPLETE_MARKER).read_text())["sha256"]  # the trainer's marker
    assert {"trainer_state.json", "model.safetensors"} <= set(hashes)
    assert verify_checkpoint(run_dir / "checkpoint-4", for_resume=True) == "sha256"
    _assert_same_curve(resumed, reference)
    return resumed, reference, run_dir


def test_sft_kill_and_resume(tmp_path, capsys):
    from modeling.tiny import build_tiny_model
    from test_sft import make_processed

    data = make_processed(tmp_path / "data", n_train=24, n_val=3)
    model = tmp_path / "model"
    build_tiny_model(model, tokenizer="bpe", dataset_path=data, vocab_size=400, hidden_size=32, num_layers=1)
    argv = ["--dataset_path", data, "--model_name", str(model), "--max_length", "256", "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "4", "--eval_strategy", "no", *RUN]

    def eval_val_while_writing(run_dir):
        import eval_val

        results = eval_val.main(["--run_dir", str(run_dir), "--dataset_path", data, "--max_samples", "2",
                                 "--max_new_tokens", "4", "--backend", "hf", "--n_items", "5"])
        out = capsys.readouterr().out
        assert sorted(results) == [2]
        assert "step 4:" in out and "is not complete (being written" in out

    resumed, _, run_dir = kill_and_resume("sft", argv, tmp_path, eval_val_while_writing)
    assert resumed.args.run_name == "sft_model_lr0.003"


def test_rank_grpo_kill_and_resume(tmp_path):
    from test_train_rank_grpo import tiny_setup

    _, data, model = tiny_setup.__wrapped__(_Factory(tmp_path))
    argv = ["--dataset_path", str(data), "--model_name", str(model), "--n_items", "5", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "64", "--max_prompt_length", "256",
            "--learning_rate", "1e-2", "--kl_beta", "0.05", *RUN]
    resumed, reference, run_dir = kill_and_resume("rank_grpo", argv, tmp_path)
    assert any(h["loss"] != 0 for h in _curve(reference))
    assert resumed.args.run_name == "rank_grpo_model_lr0.01_kl0.05_reward-exp_inf"
    saved = json.loads((run_dir / "checkpoint-4" / "recrl_run.json").read_text())
    assert (saved["algorithm"], saved["reward_func"]) == ("rank_grpo", "exp_inf")


def test_recpo_kill_and_resume_keeps_the_item_table(tmp_path):
    """refresh_steps 3: steps 1-3 rank against the step-0 table, step 4 against a fresh one. A resume from
    checkpoint-2 that rebuilt the table from the checkpoint's model would score step 3 differently."""
    from safetensors.torch import load_file

    from test_recpo import tiny_recpo

    _, data, model = tiny_recpo.__wrapped__(_Factory(tmp_path))
    argv = ["--dataset_path", str(data), "--model_name", str(model), "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "8", "--learning_rate", "5e-2",
            "--refresh_steps", "3", "--category", "video games", *RUN]
    resumed, reference, run_dir = kill_and_resume("recpo", argv, tmp_path)
    killed_table = load_file(str(run_dir / "checkpoint-2" / "recpo_item_table.safetensors"))["item_table"]
    ref_table = load_file(str(tmp_path / "ref" / "checkpoint-2" / "recpo_item_table.safetensors"))["item_table"]
    torch.testing.assert_close(killed_table, ref_table, rtol=0, atol=0)
    assert resumed.table_step == reference.table_step == 3
    torch.testing.assert_close(resumed.item_table, reference.item_table, rtol=REL_TOL, atol=ABS_TOL)
    assert resumed.args.run_name.startswith("recpo_model_lr0.05_kl")


def test_deeprec_kill_and_resume_keeps_stage_and_trm(tmp_path):
    from retrieval.retriever import TRMRetriever
    from test_deeprec import CATALOG_ITEMS, tiny_setup

    _, data, model, _ = tiny_setup.__wrapped__(_Factory(tmp_path))
    trm = tmp_path / "trm_stable"
    torch.manual_seed(0)
    TRMRetriever.build(CATALOG_ITEMS, StableEncoder(), hidden_size=16, num_heads=2, num_layers=1).save(trm)
    argv = ["--dataset_path", str(data), "--trm_path", str(trm), "--model_name", str(model), "--stage", "rec",
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
            "--max_trajectory_tokens", "2048", "--retrieve_k", "5", "--difficulty_top_k", "20", *RUN]
    resumed, _, run_dir = kill_and_resume("deeprec", argv, tmp_path)
    assert resumed.args.stage == "rec" and resumed.args.trm_path == str(trm)
    assert any("rewards/outcome/mean" in h for h in resumed.state.log_history)
    saved = json.loads((run_dir / "checkpoint-2" / "recrl_run.json").read_text())
    assert saved["stage"] == "rec" and saved["trm_path"] == os.path.realpath(trm)
    assert resumed.args.run_name == "deeprec-rec_model_lr0.01_kl0"
    # resuming the stage-rec run as stage cold is refused, naming both
    cold = [a if a != "rec" else "cold" for a in argv]
    with pytest.raises(ValueError, match="stage: checkpoint 'rec', now 'cold'"):
        run("deeprec", cold + ["--output_dir", str(run_dir), "--max_steps", "6", "--resume_from_checkpoint", "last"])


class _Factory:
    """tmp_path_factory stand-in for calling another module's fixture function directly."""

    def __init__(self, root: Path):
        self.root, self.n = root, 0

    def mktemp(self, name: str) -> Path:
        self.n += 1
        path = self.root / f"{name}{self.n}"
        path.mkdir()
        return path


@pytest.mark.parametrize("save_steps, warns", [(1, True), (2, False)])
def test_rl_trainer_warns_when_checkpoints_split_a_generation_batch(tmp_path, caplog, save_steps, warns):
    """num_iterations 2: one generation batch serves 2 optimizer steps, and TRL does not save it."""
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from test_train_rank_grpo import tiny_setup
    from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

    _, data, model = tiny_setup.__wrapped__(_Factory(tmp_path))
    dsd, catalog = load_processed(data)
    cfg = RankGRPOConfig(output_dir=str(tmp_path / "out"), n_items=5, num_generations=2, per_device_train_batch_size=2,
                         num_iterations=2, max_steps=2, save_strategy="steps", save_steps=save_steps,
                         report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False)
    with caplog.at_level(logging.WARNING, logger="trainers.base"):
        RankGRPOTrainer(model=str(model), args=cfg, train_dataset=dsd["train"], processing_class=load_tokenizer(model),
                        catalog=catalog)
    assert ("regenerates the batch" in caplog.text) == warns
