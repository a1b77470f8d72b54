"""scripts/gpu_smoke.py, the driver of scripts/gpu_smoke.sh, checked on CPU: the command lines it builds parse
through each script's own parser (GPU flags, vLLM on where it should be), and ``--device cpu --only sft`` really runs
(data, tiny model, 1 SFT step, evaluation) and writes its JSON report."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_smoke  # noqa: E402


def _args(*argv):
    p = gpu_smoke.argparse.ArgumentParser()
    defaults = dict(device="cuda", out="/tmp/gpu_smoke_test", steps=3, rows=400, eval_samples=16, only=None,
                    models="tiny", backends="hf", python=sys.executable, dry_run=True)
    ns = p.parse_args([])
    for k, v in defaults.items():
        setattr(ns, k, v)
    for k, v in zip(argv[::2], argv[1::2]):
        setattr(ns, k, v)
    return ns


def _script_args(step):
    cmd = step.cmd
    i = next(k for k, w in enumerate(cmd) if w.startswith("train_"))
    return cmd[i][:-3], cmd[i + 1:], cmd[:i]


def test_dry_run_lists_every_trainer_with_its_evaluation(capsys):
    assert gpu_smoke.main(["--dry_run", "--models", "tiny", "--backends", "hf", "--out", "/tmp/gs"]) == 0
    out = capsys.readouterr().out
    names = [ln[2:].split("  ")[0] for ln in out.splitlines() if ln.startswith("# ")]
    for trainer in ("rank_grpo", "recpo", "deeprec"):
        assert f"tiny/hf/{trainer}/train" in names and f"tiny/hf/{trainer}/eval" in names, names
    assert {"prep/data", "prep/tiny", "prep/trm", "tiny/sft/train", "tiny/sft/eval"} <= set(names)
    assert out.count("--bf16 true") == 4 and "single_gpu.yaml" in out  # the four trainers, bf16 on one GPU


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_the_train_command_lines_parse_through_each_scripts_parser(monkeypatch, backend):
    """GPU command lines (bf16, the vLLM flags) as the scripts read them; vLLM's fields parse without vLLM."""
    monkeypatch.setattr(gpu_smoke, "backends_for", lambda device, requested: [backend])
    steps = gpu_smoke.build_steps(_args())
    trains = [s for s in steps if s.name.endswith("/train")]
    assert {s.name.split("/")[-2] for s in trains} == {"sft", "rank_grpo", "recpo", "deeprec"}
    for step in trains:
        script, argv, launcher = _script_args(step)
        assert launcher[-3] in ("launch", "accelerate.commands.launch") and launcher[launcher.index("--config_file") + 1].endswith("single_gpu.yaml")
        assert " ".join(argv).count("--use_cpu false --bf16 true") == 1, step.name
        # parsed on this CPU machine with the device switched back (later flags win), everything else as built
        config = importlib.import_module(script).parse_args([*argv, "--use_cpu", "true", "--bf16", "false"])[1]
        assert config.max_steps == 3 and config.report_to in ([], "none", ["none"]), step.name
        if script != "train_sft":
            assert config.use_vllm is (backend == "vllm"), step.name
            if backend == "vllm":
                assert config.vllm_mode == "colocate" and config.vllm_tensor_parallel_size == 1
            from cli.training import check_generation_settings

            check_generation_settings(config, world_size=1)
    evals = {s.name: s.cmd for s in steps if s.name.endswith("/eval")}
    assert evals[f"tiny/{backend}/rank_grpo/eval"][evals[f"tiny/{backend}/rank_grpo/eval"].index("--backend") + 1] \
        == backend


def test_vllm_is_refused_where_it_cannot_run():
    with pytest.raises(SystemExit, match="--backends vllm needs CUDA"):
        gpu_smoke.backends_for("cpu", "hf,vllm")
    assert gpu_smoke.backends_for("cpu", "auto") == ["hf"]
    with pytest.raises(SystemExit, match="unknown trainers"):
        gpu_smoke.build_steps(_args("only", "sft,grpo"))


def test_cpu_mode_runs_one_sft_step_and_its_evaluation(tmp_path):
    out = tmp_path / "smoke"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_smoke.py"), "--device", "cpu", "--only", "sft", "--steps", "1",
           "--rows", "100", "--eval_samples", "4", "--models", "tiny", "--out", str(out)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_smoke.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["prep/data", "prep/tiny", "tiny/sft/train", "tiny/sft/eval"]
    assert all(s["rc"] == 0 and s["seconds"] > 0 for s in report["steps"]), report
    assert (out / "tiny" / "sft" / "model.safetensors").is_file()
    metrics = json.loads((out / "tiny" / "sft" / "eval" / "metrics.json").read_text())
    assert metrics  # the evaluation wrote its scores
    assert "tiny/sft/train" in proc.stdout and "4/4 steps succeeded" in proc.stdout
