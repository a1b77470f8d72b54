"""One compact console line per logging step (trainers/console.py), the full metrics dict still in
`trainer.state.log_history` and in the --log_file; run names from `compose_run_name`."""
from __future__ import annotations

import json
import re

import pytest
import torch

from cli.run_logging import compose_run_name
from trainers.console import CompactLineFormatter

torch.set_num_threads(1)

MAX_LINE_CHARS = 220
MAX_FIELDS = 16


def _train_lines(text: str) -> list[str]:
    # tqdm redraws share the line: keep what follows the last carriage return / bar
    lines = []
    for raw in text.splitlines():
        if "[train] step" in raw:
            lines.append(raw[raw.index("[train] step"):])
    return lines


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_rank_grpo_console_line_is_short_and_the_full_dict_is_kept(tmp_path, capsys, disable_tqdm):
    import kill_resume_driver
    from test_train_rank_grpo import COMMON, tiny_setup

    from test_kill_resume import _Factory

    _, data, model = tiny_setup.__wrapped__(_Factory(tmp_path))
    log_file = tmp_path / "train.log"
    trainer = kill_resume_driver.run("rank_grpo", [
        "--dataset_path", str(data), "--model_name", str(model), "--output_dir", str(tmp_path / "out"),
        "--kl_beta", "0.05", "--learning_rate", "1e-2", "--log_file", str(log_file),
        "--disable_tqdm", str(disable_tqdm).lower(), *COMMON])
    out = capsys.readouterr().out
    lines = _train_lines(out)
    assert len(lines) == 2, out[-3000:]
    full = [h for h in trainer.state.log_history if "loss" in h]
    assert len(full) == 2 and len(full[0]) > 35  # the whole dict: ~40 keys, 5 of them per-rank rewards
    for line, logged in zip(lines, full):
        print(line)
        fields = line.split(" | ")
        assert len(line) <= MAX_LINE_CHARS and len(fields) <= MAX_FIELDS, line
        assert fields[0] == f"[train] step {logged['step']}/2"
        assert f"loss {logged['loss']:.4g}" in line and f"reward {logged['reward']:.4g}" in line
        assert f"kl {logged['kl']:.4g}" in line and f"lr {logged['learning_rate']:.2e}" in line
        assert f"rank_exp_inf {logged['rewards/rank_exp_inf/mean']:.4g}" in line  # the method's reward terms
        assert re.search(r"\| \d+\.\d\ds/step$", line)
        assert "pos_1" not in line and "{" not in line
    assert "'rewards/pos_1/mean'" not in out  # transformers' dict print is gone from the console
    # the log file: the compact lines (tee) plus the full dict as JSON, written to the file only
    text = log_file.read_text()
    metrics = [json.loads(x[len("[metrics] "):]) for x in text.splitlines() if x.startswith("[metrics] ")]
    train_metrics = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_metrics] == [1, 2]
    assert set(train_metrics[0]) == set(full[0])  # every key trainer_state.json has
    assert "[metrics]" not in out
    assert trainer.args.run_name == "rank_grpo_model_lr0.01_kl0.05_reward-exp_inf"


def test_formatter_eval_and_summary_lines():
    fmt = CompactLineFormatter([("fmt", "rewards/format/mean")])
    fmt.start(0)
    line = fmt.line({"loss": 0.5, "reward": 1.25, "reward_std": 0.5, "rewards/format/mean": -1.0, "kl": 0.01,
                     "learning_rate": 1e-5, "step_time": 2.5, "rewards/pos_1/mean": 3.0}, step=3, max_steps=10)
    assert line == "[train] step 3/10 | loss 0.5 | reward 1.25±0.5 | fmt -1 | kl 0.01 | lr 1.00e-05 | 2.50s/step"
    ev = fmt.line({"eval_loss": 0.25, "eval_reward": 0.5, "eval_kl": 0.0, "eval_runtime": 3.0}, step=3)
    assert ev == "[eval] step 3 | loss 0.25 | reward 0.5 | kl 0 | 3.0s"
    end = fmt.line({"train_runtime": 12.34, "train_loss": 0.75, "train_samples_per_second": 1.0}, step=10)
    assert end == "[train] done at step 10 | 12.3s | train_loss 0.75"
    assert "nan" in fmt.line({"loss": float("nan")}, step=4)


def test_compose_run_name_and_sft_default():
    import train_sft

    assert compose_run_name("Qwen/Qwen2.5-0.5B-Instruct", "rank_grpo", 1e-6, 1e-3, reward="exp_inf") == \
        "rank_grpo_Qwen2.5-0.5B-Instruct_lr1e-06_kl0.001_reward-exp_inf"
    assert compose_run_name("models/tiny", "sft", 5e-5, lora=True) == "sft_tiny_lr5e-05_lora"
    assert compose_run_name("m", "recpo", 1e-5, 0.0, reward_beta=0.3) == "recpo_m_lr1e-05_kl0_reward_beta-0.3"
    _, args = train_sft.parse_args(["--dataset_path", "d", "--model_name", "Qwen/Qwen2.5-0.5B-Instruct",
                                    "--learning_rate", "5e-5", "--use_lora", "true"])
    assert args.run_name == "sft_Qwen2.5-0.5B-Instruct_lr5e-05_lora"
    _, args = train_sft.parse_args(["--dataset_path", "d", "--model_name", "m", "--run_name", "mine"])
    assert args.run_name == "mine"  # an explicit name wins


def test_script_logging_follows_the_current_stderr(monkeypatch):
    """The scripts' log handler writes to the sys.stderr of each record: one made while an earlier stream (a test
    capture, tee_output) was current must not fail with "--- Logging error ---" once that stream is closed."""
    import io
    import logging
    import sys

    from cli.run_logging import CurrentStderrHandler

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = CurrentStderrHandler()
    log = logging.getLogger("test_current_stderr")
    log.addHandler(handler)
    log.propagate = False
    try:
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        log.warning("hello")
        assert "hello" in second.getvalue() and "Logging error" not in second.getvalue()
    finally:
        log.removeHandler(handler)
