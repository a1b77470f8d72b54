"""The learning benchmark: train and evaluate every method on CPU, write RESULTS.md and its PNG figures.

    make results                                 # python -m bench.results  (3 seeds, >= 500 test samples)
    python -m bench.results --quick              # 1 seed, short runs, fewer samples (labelled as such)
    python -m bench.results --only sft grpo      # rerun some parts (the others are read from their caches)
    python -m bench.results --seeds 0 1 --force  # ignore the caches of the parts run

Every part runs the repository's own scripts (train_*.py, eval_test.py, eval_val.py) as subprocesses, so what is
measured here is what a user gets from the command line. Each part caches its outcome in
results/results_run/<mode>/<part>/part.json (and its runs / evaluations in that folder): a finished part is
skipped unless --force, a part killed midway resumes from the evaluations and trainings it finished. Every part
starts as soon as the parts it reads from are done; their commands take turns (first asked, first run) on --jobs
command slots (default: one per core, one thread each), so no core idles while any part has work left. CPU
time is each command's own user+system time (os.wait4): on a shared machine it is the cost that does not depend
on how many other jobs run; the wall time is reported next to it.

Tuning rule: every choice below (steps, learning rates, temperatures) was made on the VALIDATION split
(eval_val.py curves); the test split is only scored, once per run, for the tables.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DOCS_FIGURES = REPO / "docs" / "results"
KS = (5, 10, 20)
METRICS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]

ML_DATA = "processed_datasets/ml100k"
REDIAL_DATA = "processed_datasets/redial"
SMOL = "models/smollm2-135m-instruct"


@dataclass
class Settings:
    """Budgets of one mode (full = `make results`, quick = `--quick`)."""
    seeds: list[int]
    n_test: int                  # test rows scored per model (seeded subset, the same rows for every model)
    n_val: int                   # validation rows per checkpoint for the curves
    n_test_agent: int            # test rows for the multi-turn DeepRec episodes (each is several generations)
    sft_steps: int
    n_sft_seeds: int             # SFT is trained for the first n seeds; an RL seed >= n starts from seed 0's SFT
    rl_steps: int
    rl_save_steps: int
    recpo_steps: int
    deeprec_ws_steps: int
    deeprec_steps: int
    redial_n_test: int
    redial_sft_steps: int
    redial_rl_steps: int

    def key(self) -> dict:
        return self.__dict__.copy()


# FULL is sized for 2 hours from scratch on 2 cores with --jobs 2 (one shared SFT start; DeepRec and ReDial on fewer
# test rows: each episode / 135M generation costs 10-50x a tiny-model list). 60 RL steps did not fit (about 128 min
# of two cores' work: docs/results/NOTES.md items 13-14), so the RL parts run 40. QUICK checks the pipeline, not the
# methods (200 SFT steps leave greedy decoding repeating titles).
FULL = Settings(seeds=[0, 1, 2], n_test=500, n_val=200, n_test_agent=100, sft_steps=1000, n_sft_seeds=1,
                rl_steps=40, rl_save_steps=10, recpo_steps=20, deeprec_ws_steps=150, deeprec_steps=4,
                redial_n_test=48, redial_sft_steps=40, redial_rl_steps=3)
QUICK = Settings(seeds=[0], n_test=100, n_val=32, n_test_agent=24, sft_steps=200, n_sft_seeds=1, rl_steps=10,
                 rl_save_steps=5, recpo_steps=6, deeprec_ws_steps=20, deeprec_steps=1, redial_n_test=16,
                 redial_sft_steps=6, redial_rl_steps=1)

# RL on the tiny SFT model (ML-100k parts only; ReDial has its own config): configs/tiny/rank_grpo_ml100k.yaml
# (temperature 0.7, G 4, beta 1e-3) with 8 prompts a step instead of 4 and lr 1e-4 instead of 5e-5, tuned on
# ML-100k validation rows (docs/results/NOTES.md item 9: 3 seeds rose steadily, where 4 prompts at 5e-5 or 8 at
# 5e-5 did not); part of each RL part's cache key. --quick keeps the config's 4 prompts a step: it checks the
# pipeline in 20 minutes, and 8 prompts a step doubled its RL parts.
RL_OVERRIDES: dict[str, list[str]] = {
    "full": ["--per_device_train_batch_size", "32", "--learning_rate", "1e-4", "--max_train_samples", "4000"],
    "quick": []}
RL_METHODS = {  # part -> (label, train_rank_grpo.py arguments)
    "grpo": ("GRPO", ["--algorithm", "grpo"]),
    "rank_grpo_exp_inf": ("Rank-GRPO (exp_inf)", ["--algorithm", "rank_grpo", "--reward_func", "exp_inf"]),
    "rank_grpo_log": ("Rank-GRPO (log)", ["--algorithm", "rank_grpo", "--reward_func", "log"]),
    "gspo": ("GSPO", ["--algorithm", "gspo"]),
}
# DeepRec is evaluated with the episodes its stage configs train (chat prompts, 3 calls of 10 items, token budgets)
DEEPREC_EPISODE = ["--episode_config", "configs/tiny/deeprec_ml100k_stage2.yaml"]
PARTS = ["data", "popularity", "trm", "sft", *RL_METHODS, "recpo", "deeprec", "redial"]
# what a part reads from another part's outputs: it starts only after those finished (or were cached)
DEPENDS_ON = {"popularity": ["data"], "trm": ["data"], "sft": ["data"], **{m: ["sft"] for m in RL_METHODS},
              "recpo": ["sft"], "deeprec": ["sft", "trm"], "redial": ["data"]}
# the order parts start in when several are ready (their first commands queue about in it: threads race): SFT first
# (it gates six parts; ReDial needs only the data and fills the other core while SFT runs), then the longest
START_ORDER = ["data", "sft", "trm", "popularity", "redial", "deeprec", "rank_grpo_exp_inf", "grpo", "rank_grpo_log",
               "gspo", "recpo"]


def in_order(names, order: list[str]) -> list[str]:
    """`names` sorted as they come in `order`; names not in it last, in their own order."""
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def overrides_of(part: str, mode: str) -> list[str]:
    """The RL_OVERRIDES a part runs with in a mode ("full", "quick", or either with --set suffixes); part of its
    cache key: a part run with other overrides is rerun."""
    return list(RL_OVERRIDES[mode.split("-")[0]]) if part in RL_METHODS else []


class PartFailed(RuntimeError):
    pass


class CommandSlots:
    """At most `n` commands run at once, granted in the order they were asked for. (threading.Semaphore would let
    a part that just released a slot take it straight back for its next command, so one part would keep a core and
    the last part left would run alone on a 2-core box while the other core idled.)"""

    def __init__(self, n: int):
        self._cond = threading.Condition()
        self._free = max(1, n)
        self._queue: collections.deque = collections.deque()

    @contextlib.contextmanager
    def slot(self):
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] is ticket)
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()  # the next in line may be waiting for a second free slot
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


@dataclass
class Ctx:
    settings: Settings
    mode: str
    root: Path
    force: bool
    tag: str = ""
    slots: CommandSlots | None = None  # shared by every part of a run: how many commands run at once
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def run(self, args: list[str], log: Path, done: Path | None = None) -> None:
        """Run one command (skipped when `done` exists); its CPU / wall time is added to the part's."""
        ledger = self.root / "commands.jsonl"  # CPU / wall time of each finished command, so a resumed part counts it
        if done is not None and done.exists():
            for line in (ledger.read_text().splitlines() if ledger.exists() else []):
                entry = json.loads(line)
                if entry["done"] == str(done):
                    self.cpu_s += entry["cpu_s"]
                    self.wall_s += entry["wall_s"]
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                   WANDB_MODE=os.environ.get("WANDB_MODE", "offline"), TQDM_DISABLE="1")
        # one intra-op thread per process unless told otherwise: on a small shared box, torch's default of one
        # thread per core loses more to contention than it gains (measured: SFT steps several times slower)
        threads = os.environ.get("RESULTS_NUM_THREADS", "1")
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        with self.slots.slot() if self.slots else contextlib.nullcontext():
            t0 = time.time()  # after the wait for a slot: a command's wall time is its own
            print(f"  [{self.tag}] $ {' '.join(args)}", flush=True)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"\n$ {' '.join(args)}\n")
                fh.flush()
                child = subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
                # wait4: this child's own user+system time (RUSAGE_CHILDREN would mix in the other workers' children)
                _, status, usage = os.wait4(child.pid, 0)
                child.returncode = rc = os.waitstatus_to_exitcode(status)
        cpu_s = usage.ru_utime + usage.ru_stime
        wall_s = time.time() - t0
        self.cpu_s += cpu_s
        self.wall_s += wall_s
        if rc != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-25:]
            raise PartFailed(f"exit {rc}: {' '.join(args)}\n  (log {log})\n" + "\n".join(tail))
        if done is not None:
            with open(ledger, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"done": str(done), "cpu_s": cpu_s, "wall_s": wall_s}) + "\n")

    def evaluate(self, out: Path, args: list[str], split: str = "test", n: int | None = None) -> dict:
        """eval_test.py with the shared protocol; returns metrics.json (cached)."""
        n = n or self.settings.n_test
        metrics = out / "metrics.json"
        self.run([PY, "eval_test.py", *args, "--split", split, "--max_samples", str(n), "--ks", *map(str, KS),
                  "--output_dir", str(out), "--no_progress"], out.parent / f"{out.name}.log", done=metrics)
        scores = json.loads(metrics.read_text())
        scores["eval_seed"] = scores.pop("seed", None)  # eval_test.py's sampling seed, not the run's training seed
        return scores


# ----------------------------------------------------------------------------- parts
def part_data(ctx: Ctx) -> dict:
    if not (REPO / ML_DATA / "summary.json").exists():
        ctx.run([PY, "-m", "preprocess.movielens", "--output_dir", ML_DATA], ctx.root / "movielens.log")
    tiny = tiny_dir(ctx)
    ctx.run([PY, "-m", "modeling.tiny", "--output_dir", str(tiny), "--dataset_path", ML_DATA, "--hidden_size", "128",
             "--num_layers", "4", "--intermediate_size", "256", "--vocab_size", "4096"], ctx.root / "tiny.log",
            done=tiny / "config.json")
    summary = json.loads((REPO / ML_DATA / "summary.json").read_text())
    return {"ml100k_splits": {k: v["samples"] for k, v in summary["splits"].items()}}


def tiny_dir(ctx: Ctx) -> Path:
    """The run's own random-init tiny model (BPE trained on ML_DATA), so no other job's models/ folder leaks in."""
    return ctx.root.parent / "data" / "tiny"


def _text_eval_args(model: str, data: str = ML_DATA) -> list[str]:
    return ["--model_path", model, "--dataset_path", data, "--max_new_tokens", "160", "--batch_size", "16"]


def part_popularity(ctx: Ctx) -> dict:
    rows = [{"method": "Popularity", "seed": None,
             **ctx.evaluate(ctx.root / "eval_list", ["--baseline", "popularity", "--dataset_path", ML_DATA])},
            {"method": "Popularity", "seed": None,
             **ctx.evaluate(ctx.root / "eval_next", ["--baseline", "popularity", "--dataset_path", ML_DATA,
                                                     "--target_only"])}]
    return {"rows": rows}


def trm_dir(ctx: Ctx) -> Path:
    return ctx.root.parent / "trm" / "model"


def part_trm(ctx: Ctx) -> dict:
    model = trm_dir(ctx)
    ctx.run([PY, "train_trm.py", "--config", "configs/tiny/trm_ml100k.yaml", "--output_dir", str(model)],
            ctx.root / "train.log", done=model / "model.safetensors")
    rows = [{"method": "TRM alone", "seed": None,
             **ctx.evaluate(ctx.root / "eval_next", ["--recommender", "trm", "--model_path", str(model),
                                                     "--dataset_path", ML_DATA, "--target_only"])}]
    return {"rows": rows}


def sft_dir(ctx: Ctx, seed: int) -> Path:
    return ctx.root.parent / "sft" / f"seed{seed}" / "model"


def sft_start(ctx: Ctx, seed: int) -> Path:
    """The SFT model an RL seed starts from: its own seed's, or seed 0's when SFT ran for fewer seeds."""
    start = sft_dir(ctx, seed if seed in ctx.settings.seeds[:ctx.settings.n_sft_seeds] else ctx.settings.seeds[0])
    if not (start / "config.json").exists():
        raise PartFailed(f"needs the SFT model {start}: run --only sft first")
    return start


def _val_curve(ctx: Ctx, run_dir: Path, data: str = ML_DATA) -> list[dict]:
    """eval_val.py over the run's checkpoints; returns the CSV rows (step + metrics)."""
    import csv

    ctx.run([PY, "eval_val.py", "--run_dir", str(run_dir), "--dataset_path", data, "--max_samples",
             str(ctx.settings.n_val), "--max_new_tokens", "160", "--batch_size", "16", "--ks", *map(str, KS),
             "--no_progress"], run_dir.parent / "eval_val.log", done=run_dir / "eval_validation.csv")
    csv_path = run_dir / "eval_validation.csv"
    if not csv_path.exists():
        return []
    with open(csv_path, encoding="utf-8") as fh:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _reward_curve(run_dir: Path) -> list[tuple[float, float]]:
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    history = json.loads(states[-1].read_text()).get("log_history") or []
    return [(h["step"], h["reward"]) for h in history if "reward" in h and "step" in h]


def part_sft(ctx: Ctx) -> dict:
    s = ctx.settings
    rows, curves = [], {}
    for seed in s.seeds[:s.n_sft_seeds]:
        model = sft_dir(ctx, seed)
        # one epoch of fresh rows (16 a step) instead of the config's 4,000-row subset
        ctx.run([PY, "train_sft.py", "--config", "configs/tiny/sft_ml100k.yaml", "--model_name", str(tiny_dir(ctx)),
                 "--dataset_path", ML_DATA, "--output_dir", str(model), "--seed", str(seed),
                 "--max_train_samples", str(16 * s.sft_steps),
                 "--max_steps", str(s.sft_steps), "--save_steps", str(max(1, s.sft_steps // 2)),
                 "--eval_steps", str(max(1, s.sft_steps // 4))],
                model.parent / "train.log", done=model / "config.json")
        rows.append({"method": "SFT", "seed": seed,
                     **ctx.evaluate(model.parent / "eval_test", _text_eval_args(str(model)))})
        val0 = ctx.evaluate(model.parent / "eval_val_final", _text_eval_args(str(model)), split="validation",
                            n=s.n_val)
        curves[seed] = {"val": _val_curve(ctx, model), "val_final": val0}
    return {"rows": rows, "curves": curves}


def _rl_part(name: str):
    label, algo_args = RL_METHODS[name]

    def run_part(ctx: Ctx) -> dict:
        s = ctx.settings
        rows, curves = [], {}
        for seed in s.seeds:
            start = sft_start(ctx, seed)
            out = ctx.root / f"seed{seed}" / "model"
            ctx.run([PY, "train_rank_grpo.py", "--config", "configs/tiny/rank_grpo_ml100k.yaml",
                     "--model_name", str(start), "--dataset_path", ML_DATA, "--output_dir", str(out),
                     "--seed", str(seed), "--max_steps", str(s.rl_steps), "--save_steps", str(s.rl_save_steps),
                     *algo_args, *overrides_of(name, ctx.mode)],
                    out.parent / "train.log", done=out / "config.json")
            # model selection on validation rows only: the checkpoint with the best validation NDCG@10 is scored on
            # test (one RL seed's curve goes up and down by 20%: docs/results/NOTES.md items 7-9)
            val = _val_curve(ctx, out)
            step = best_checkpoint(val, s.rl_steps)
            model = out if step == s.rl_steps else out / f"checkpoint-{step}"
            rows.append({"method": label, "seed": seed, "selected_step": step,
                         **ctx.evaluate(out.parent / f"eval_test_step{step}", _text_eval_args(str(model)))})
            curves[seed] = {"val": val, "reward": _reward_curve(out)}
        return {"rows": rows, "curves": curves}

    return run_part


def best_checkpoint(val_rows: list[dict], last_step: int, key: str = "ndcg@10") -> int:
    """The step of the best validation score (the earliest on a tie); the last step when there is no curve."""
    scored = [(r[key], -int(r["step"])) for r in val_rows if isinstance(r.get(key), float)]
    return -max(scored)[1] if scored else last_step


def part_recpo(ctx: Ctx) -> dict:
    s = ctx.settings
    rows = []
    for seed in s.seeds:
        start = sft_start(ctx, seed)
        out = ctx.root / f"seed{seed}" / "model"
        ctx.run([PY, "train_recpo.py", "--config", "configs/tiny/recpo_ml100k.yaml", "--model_name", str(start),
                 "--dataset_path", ML_DATA, "--output_dir", str(out), "--seed", str(seed),
                 "--max_steps", str(s.recpo_steps), "--save_steps", str(s.recpo_steps)],
                out.parent / "train.log", done=out / "config.json")
        rows.append({"method": "RecPO", "seed": seed,
                     **ctx.evaluate(out.parent / "eval_next",
                                    ["--recommender", "recpo", "--model_path", str(out), "--dataset_path", ML_DATA,
                                     "--category", "movies", "--target_only", "--batch_size", "16",
                                     "--max_new_tokens", "48"])})  # = the config's max_completion_length
    return {"rows": rows}


def part_deeprec(ctx: Ctx) -> dict:
    s = ctx.settings
    trm = trm_dir(ctx)
    if not (trm / "model.safetensors").exists():
        raise PartFailed(f"needs the TRM {trm}: run --only trm first")
    ws_data = ctx.root / "warmstart_data"
    ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage1.yaml", "--trm_path", str(trm),
             "--dataset_path", ML_DATA, "--model_name", str(tiny_dir(ctx)), "--write_warmstart_data", str(ws_data),
             "--max_train_samples", "2000"], ctx.root / "warmstart_data.log", done=ws_data / "train")
    rows = []
    for seed in s.seeds:
        base = ctx.root / f"seed{seed}"
        # the format warm-start is SFT: trained once per SFT seed, from that seed's list SFT model (as SFT is shared)
        own_ws = seed in s.seeds[:s.n_sft_seeds]
        ws = (base if own_ws else ctx.root / f"seed{s.seeds[0]}") / "warmstart_sft"
        if own_ws:
            ctx.run([PY, "train_sft.py", "--config", "configs/tiny/deeprec_ml100k_warmstart_sft.yaml", "--model_name",
                     str(sft_start(ctx, seed)), "--dataset_path", str(ws_data), "--output_dir", str(ws), "--seed",
                     str(seed), "--max_steps", str(s.deeprec_ws_steps)], base / "warmstart_sft.log",
                    done=ws / "config.json")
        common = ["--model_name", str(ws), "--trm_path", str(trm), "--dataset_path", ML_DATA, "--seed", str(seed),
                  "--max_steps", str(s.deeprec_steps), "--save_steps", str(s.deeprec_steps)]
        st1, st2 = base / "stage1", base / "stage2"
        ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage1.yaml", *common,
                 "--output_dir", str(st1)], base / "stage1.log", done=st1 / "config.json")
        ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage2.yaml", *common,
                 "--init_from", str(st1), "--output_dir", str(st2)], base / "stage2.log", done=st2 / "config.json")
        for label, model in ([("DeepRec warm-start SFT", ws)] if own_ws else []) + [("DeepRec stage 2", st2)]:
            rows.append({"method": label, "seed": seed,
                         **ctx.evaluate(base / f"eval_next_{model.name}",
                                        ["--recommender", "deeprec", "--model_path", str(model), "--trm_path",
                                         str(trm), "--dataset_path", ML_DATA, "--target_only", "--batch_size", "16",
                                         *DEEPREC_EPISODE],
                                        n=s.n_test_agent)})
    return {"rows": rows}


def part_redial(ctx: Ctx) -> dict:
    """ReDial with the pretrained SmolLM2-135M-Instruct: zero-shot, SFT, GRPO, Rank-GRPO (exp_inf); seed 0 only."""
    s = ctx.settings
    n = s.redial_n_test
    if not (REPO / REDIAL_DATA / "summary.json").exists():
        raw = SHARED_DATA / "redial_official"
        if not raw.is_dir():
            raise PartFailed(f"needs the ReDial files in {raw} (see ../shared/data/SOURCES.md); not found")
        ctx.run([PY, "-m", "preprocess.redial", "--raw_dir", str(raw), "--output_dir", REDIAL_DATA],
                ctx.root / "preprocess.log")
    if not (REPO / SMOL / "config.json").exists():
        ctx.run([PY, "-m", "modeling.pretrained", "--name", "smollm2-135m-instruct", "--output_dir", SMOL],
                ctx.root / "smollm2.log")
    eval_args = lambda m: _text_eval_args(m, REDIAL_DATA)  # noqa: E731
    rows = [{"method": "SmolLM2-135M zero-shot", "seed": 0,
             **ctx.evaluate(ctx.root / "eval_zero_shot", eval_args(SMOL), n=n)}]
    sft = ctx.root / "sft"
    ctx.run([PY, "train_sft.py", "--config", "configs/tiny/sft_ml100k.yaml", "--model_name", SMOL,
             "--dataset_path", REDIAL_DATA, "--output_dir", str(sft), "--max_steps", str(s.redial_sft_steps),
             "--learning_rate", "5.0e-5", "--per_device_train_batch_size", "4", "--max_train_samples", "2662",
             "--save_strategy", "no", "--eval_strategy", "no", "--seed", "0"],
            ctx.root / "sft.log", done=sft / "config.json")
    rows.append({"method": "SmolLM2-135M SFT", "seed": 0,
                 **ctx.evaluate(ctx.root / "eval_sft", eval_args(str(sft)), n=n)})
    curves = {}
    for label, tag, algo in (("SmolLM2-135M GRPO", "grpo", ["--algorithm", "grpo"]),
                             ("SmolLM2-135M Rank-GRPO (exp_inf)", "rank_grpo_exp_inf",
                              ["--algorithm", "rank_grpo", "--reward_func", "exp_inf"])):
        out = ctx.root / tag
        ctx.run([PY, "train_rank_grpo.py", "--config", "configs/tiny/rank_grpo_redial.yaml", "--model_name", str(sft),
                 "--dataset_path", REDIAL_DATA, "--output_dir", str(out), "--max_steps", str(s.redial_rl_steps),
                 "--max_completion_length", "192", "--save_strategy", "steps", "--save_steps",
                 str(s.redial_rl_steps), "--seed", "0", *algo],
                ctx.root / f"{tag}.log", done=out / "config.json")
        rows.append({"method": label, "seed": 0,
                     **ctx.evaluate(ctx.root / f"eval_{tag}", eval_args(str(out)), n=n)})
        curves[tag] = _reward_curve(out)
    return {"rows": rows, "curves": {"reward": curves}}


PART_FUNCS = {"data": part_data, "popularity": part_popularity, "trm": part_trm, "sft": part_sft,
              **{name: _rl_part(name) for name in RL_METHODS}, "recpo": part_recpo, "deeprec": part_deeprec,
              "redial": part_redial}


def default_jobs() -> int:
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("RESULTS_NUM_THREADS", "1"))))


def run_scheduled(todo: list[str], run_part, failures: dict[str, str]) -> None:
    """Run the parts in `todo`, each on its own thread (its commands are subprocesses, which CommandSlots limits),
    a part starting once the parts it DEPENDS_ON that are also in `todo` have finished; a part whose dependency
    failed is not started."""
    import concurrent.futures as cf

    pending = in_order(todo, START_ORDER)
    finished: set[str] = set()
    running: dict[cf.Future, str] = {}
    with cf.ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        while pending or running:
            for name in list(pending):
                needs = [d for d in DEPENDS_ON.get(name, []) if d in todo]
                broken = [d for d in needs if d in failures]
                if broken:
                    failures[name] = f"not run: it needs {', '.join(broken)}, which failed"
                    pending.remove(name)
                elif all(d in finished for d in needs):
                    running[pool.submit(run_part, name)] = name
                    pending.remove(name)
            if not running:  # everything left waits on a failed part
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                future.result()  # run_part records failures itself; anything else is a bug: raise it
                finished.add(running.pop(future))


# ----------------------------------------------------------------------------- report
def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, python "
            f"{platform.python_version()}, torch {torch.__version__}")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _table_of(row: dict) -> str:
    """'next' for rows scored on the next item only (eval_test.py --target_only records groundtruth=target)."""
    return "next" if row.get("groundtruth") == "target" else "list"


def _table(rows: list[dict], protocol: str, cpu_by_method: dict[str, float]) -> list[str]:
    methods: dict[str, list[dict]] = {}
    for r in rows:
        if _table_of(r) == protocol:
            methods.setdefault(r["method"], []).append(r)
    extra = ["valid_item_ratio"] if protocol == "list" else []
    head = ["method", "seeds", *METRICS, *extra, "test rows", "CPU min"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rs in methods.items():
        cells = [method, str(len(rs))]
        cells += [_mean_std([r[m] for r in rs if m in r]) for m in METRICS + extra]
        cells += [str(int(rs[0].get("num_samples", 0))), f"{cpu_by_method.get(method, 0) / 60:.1f}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _overrides_text(parts: dict[str, dict]) -> str:
    """The RL_OVERRIDES the RL parts in the report ran with (from their caches: a report can outlive a change)."""
    ran = {name: " ".join(p.get("rl_overrides", [])) or "none" for name, p in parts.items() if name in RL_METHODS}
    if len(set(ran.values())) > 1:
        return "; ".join(f"{name}: {value}" for name, value in ran.items())
    return next(iter(ran.values()), "none")


def _selection_lines(rows: list[dict], settings: Settings) -> list[str]:
    """Which checkpoint each RL seed was scored at (bench.results.best_checkpoint)."""
    picked: dict[str, list[str]] = {}
    for r in rows:
        if "selected_step" in r:
            picked.setdefault(r["method"], []).append(f"{int(r['selected_step'])}")
    if not picked:
        return []
    return [f"RL rows: each seed is scored at its checkpoint (every {settings.rl_save_steps} of {settings.rl_steps} "
            f"steps) with the best NDCG@10 on {settings.n_val} validation rows; the test split chooses nothing. "
            "Steps picked, by seed: " + "; ".join(f"{m} {'/'.join(v)}" for m, v in picked.items()) + ".", ""]


def _metric(rows, method, key="ndcg@10"):
    vals = [r[key] for r in rows if r["method"] == method and key in r]
    return statistics.mean(vals) if vals else None


def _figures(parts: dict[str, dict], tag: str, md_dir: Path) -> list[str]:
    """Validation NDCG@10 vs step (SFT's last point = step 0 of RL) and the RL reward curves, seed 0."""
    from evaluation.plots import plot_series

    DOCS_FIGURES.mkdir(parents=True, exist_ok=True)
    lines = []
    val_series, reward_series = {}, {}
    sft = parts.get("sft", {}).get("curves", {})
    for name, (label, _) in [("sft", ("SFT", None)), *RL_METHODS.items()]:
        curves = parts.get(name, {}).get("curves", {})
        seed_curves = curves.get(0) or curves.get("0")
        if not seed_curves:
            continue
        pts = [(r["step"], r["ndcg@10"]) for r in seed_curves.get("val", []) if "ndcg@10" in r]
        if name != "sft":
            start = (sft.get(0) or sft.get("0") or {}).get("val_final")
            if start:
                pts = [(0.0, start["ndcg@10"])] + pts
        if pts:
            pts.sort()
            val_series[f"{label}: val NDCG@10"] = ([p[0] for p in pts], [p[1] for p in pts])
        rew = seed_curves.get("reward") or []
        if rew:
            reward_series[f"{label}: train reward"] = ([p[0] for p in rew], [p[1] for p in rew])
    for redial_tag, rew in (parts.get("redial", {}).get("curves", {}).get("reward") or {}).items():
        if rew:
            reward_series[f"ReDial 135M {redial_tag}: reward"] = ([p[0] for p in rew], [p[1] for p in rew])
    if val_series:
        p = plot_series(val_series, DOCS_FIGURES / f"{tag}_val_ndcg10.png",
                        title="ML-100k validation NDCG@10 per checkpoint (seed 0)")
        lines += [f"![validation curves]({Path(os.path.relpath(p, md_dir)).as_posix()})", ""]
    if reward_series:
        p = plot_series(reward_series, DOCS_FIGURES / f"{tag}_train_reward.png",
                        title="mean sampled training reward per step (seed 0)")
        lines += [f"![training reward]({Path(os.path.relpath(p, md_dir)).as_posix()})", ""]
    return lines


def _run_windows(parts: dict[str, dict]) -> list[tuple[str, str, list[str]]]:
    """The runs the stamped parts came from, as (first start, last finish, part names), grouped by the run's own
    start (`run_started`); parts cached without it are grouped by overlapping or touching (start, finish)."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    loose = []
    for name, p in parts.items():
        if "started" in p:
            (groups.setdefault(p["run_started"], []) if "run_started" in p else loose).append(
                (p["started"], p["finished"], name))
    windows = [(min(x[0] for x in g), max(x[1] for x in g), [x[2] for x in sorted(g)]) for g in groups.values()]
    merged: list[tuple[str, str, list[str]]] = []
    for start, finish, name in sorted(loose):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], finish), merged[-1][2] + [name])
        else:
            merged.append((start, finish, [name]))
    return sorted(windows + merged)


def _window_minutes(window: tuple[str, str, list[str]]) -> float:
    parse = lambda t: datetime.datetime.strptime(t, "%Y-%m-%d %H:%M")  # noqa: E731  (the stamps are UTC minutes)
    return (parse(window[1]) - parse(window[0])).total_seconds() / 60


def _windows_text(windows: list[tuple[str, str, list[str]]]) -> str:
    if not windows:
        return ""
    if len(windows) == 1:
        return (f"{_window_minutes(windows[0]):.0f} min from the first part's start to the last part's end (parts run "
                "side by side); ")
    each = "; ".join(f"{w[0]}-{w[1][-5:]} UTC, {_window_minutes(w):.0f} min: {', '.join(w[2])}" for w in windows)
    return f"the parts come from {len(windows)} runs ({each}); "


def write_results(parts: dict[str, dict], mode: str, settings: Settings, started: str, load: tuple, out: Path,
                  failures: dict[str, str]) -> None:
    parts = {name: parts[name] for name in in_order(parts, PARTS)}
    rows = [r for name, p in parts.items() if name != "redial" for r in p.get("rows", [])]  # ReDial: own table
    cpu_by_method: dict[str, float] = {}
    for name, p in parts.items():
        methods = {r["method"] for r in p.get("rows", [])}
        for m in methods:  # a part's CPU time is shared equally by the rows it produced
            cpu_by_method[m] = cpu_by_method.get(m, 0) + p.get("cpu_s", 0) / max(1, len(methods))
    end_load = os.getloadavg()
    stamped = [p for p in parts.values() if "started" in p]
    unstamped = [k for k, p in parts.items() if "started" not in p]
    if stamped and unstamped:
        started = (f"{min(p['started'] for p in stamped)} UTC for the parts that recorded it; parts "
                   f"{', '.join(unstamped)} ran earlier and recorded no start time or load, so the load figures "
                   "are those of the other parts")
    if not stamped:
        started = f"(not recorded by the cached parts; report written {started} UTC)"
    if stamped:  # the parts' own times: a report rewritten from caches describes the runs that made them
        started = f"{min(p['started'] for p in stamped)} UTC" if not unstamped else started
        first, last = min(stamped, key=lambda p: p["started"]), max(stamped, key=lambda p: p["finished"])
        load, end_load = first["load_start"], last["load_end"]
    windows = _run_windows(parts)
    if mode.startswith("quick"):
        label = "a `--quick` run (1 seed, short runs, fewer test rows: NOT the full benchmark)"
    elif mode != "full":  # --set overrides: the budgets differ from FULL (see Settings below)
        label = f"a run with overridden budgets (`{mode}`: NOT the full benchmark; see Settings)"
    else:
        label = "the full `make results` run" if len(windows) <= 1 else \
            f"the full `make results` settings, its parts from {len(windows)} runs (which ran when: next line)"
    lines = [
        "# Results",
        "",
        f"Written by `python -m bench.results{' --quick' if mode.startswith('quick') else ''}` — {label}.",
        "",
        f"Machine: {machine_line()}. Started {started}; load average (1/5/15 min) {load[0]:.1f}/{load[1]:.1f}/"
        f"{load[2]:.1f} at the start and {end_load[0]:.1f}/{end_load[1]:.1f}/{end_load[2]:.1f} at the end "
        "(read the CPU minutes, which are this run's own user+system time; the wall minutes grow with any other "
        f"load on the cores). Total: {sum(p.get('cpu_s', 0) for p in parts.values()) / 60:.1f} CPU min; "
        + _windows_text(windows) + "the parts' wall minutes add up to "
        f"{sum(p.get('wall_s', 0) for p in parts.values()) / 60:.1f}.",
        "",
        f"Settings: `{json.dumps(settings.key())}`; RL overrides of configs/tiny/rank_grpo_ml100k.yaml: "
        f"{_overrides_text(parts)}. Metrics are means ± sample std over seeds (a single value = one seed), "
        "on a seeded subset of the test split (the same rows for every model); greedy decoding, packed protocol.",
        "",
        "## ML-100k, tiny model, list protocol (10 held-out items; each RL seed starts from its seed's SFT, or from "
        f"seed {settings.seeds[0]}'s when SFT ran for fewer seeds: here {settings.n_sft_seeds})",
        "",
        *_table(rows, "list", cpu_by_method),
        "",
        *_selection_lines(rows, settings),
        "## ML-100k, next-item protocol (`--target_only`: the next item only, as DeepRec and RecPO report)",
        "",
        *_table(rows, "next", cpu_by_method),
        "",
        "## ReDial, pretrained SmolLM2-135M-Instruct (seed 0)",
        "",
        *_table([r for r in parts.get("redial", {}).get("rows", [])], "list",
                {r["method"]: parts["redial"].get("cpu_s", 0) / 4 for r in parts.get("redial", {}).get("rows", [])}),
        "",
        "## Targets",
        "",
    ]
    sft, rg, grpo = (_metric(rows, m) for m in ("SFT", "Rank-GRPO (exp_inf)", "GRPO"))
    pop_next = statistics.mean([r["ndcg@10"] for r in rows if r["method"] == "Popularity" and _table_of(r) == "next"]
                               or [float("nan")])
    checks = []
    if sft is not None and rg is not None:
        if sft:
            rel = (rg - sft) / sft * 100
            checks.append(f"- Rank-GRPO (exp_inf) vs its SFT start, test NDCG@10: {rg:.4f} vs {sft:.4f} "
                          f"({rel:+.1f}% relative; target >= +15%): **{'met' if rel >= 15 else 'missed'}**")
        else:
            checks.append(f"- Rank-GRPO (exp_inf) vs its SFT start, test NDCG@10: {rg:.4f} vs {sft:.4f} (SFT scores "
                          "0: no relative gain defined; target >= +15%): **missed**")
    if None not in (sft, rg, grpo):
        ok = rg >= grpo >= sft
        tie = " (all equal: nothing is ordered)" if rg == grpo == sft else ""
        checks.append(f"- ordering Rank-GRPO >= GRPO >= SFT (NDCG@10 {rg:.4f} / {grpo:.4f} / {sft:.4f}): "
                      f"**{'holds' if ok else 'does not hold'}**{tie}")
    for m in ("RecPO", "DeepRec stage 2", "TRM alone"):
        v = _metric([r for r in rows if _table_of(r) == "next"], m)
        if v is not None:
            checks.append(f"- {m} vs popularity (next item, NDCG@10): {v:.4f} vs {pop_next:.4f}: "
                          f"**{'beats' if v > pop_next else 'does not beat'}**")
    dr, trm = _metric(rows, "DeepRec stage 2"), _metric(rows, "TRM alone")
    if dr is not None and trm is not None:
        checks.append(f"- DeepRec stage 2 vs its TRM alone (next item, NDCG@10): {dr:.4f} vs {trm:.4f}: "
                      f"**{'beats' if dr > trm else 'does not beat'}**")
    lines += checks or ["- (no parts measured)"]
    if failures:
        lines += ["", "## Parts that failed in this run", ""]
        lines += [f"- `{k}`: {v.splitlines()[0]}" for k, v in failures.items()]
    missing = [k for k in PARTS if k not in parts and k not in failures]
    if missing:
        lines += ["", f"Parts not run (no cached result for these settings): {', '.join(f'`{k}`' for k in missing)}."]
    lines += ["", "## Curves", "", *_figures(parts, mode, out.resolve().parent)]
    lines += ["## CPU time per part", "", "| part | CPU min | wall min |", "|---|---|---|"]
    for k, p in parts.items():
        diff = {key: value for key, value in (p.get("settings") or {}).items() if settings.key().get(key) != value}
        note = f" (cached from a run with {json.dumps(diff)})" if diff else ""
        lines.append(f"| {k}{note} | {p.get('cpu_s', 0) / 60:.1f} | {p.get('wall_s', 0) / 60:.1f} |")
    notes = REPO / "docs" / "results" / "NOTES.md"
    if notes.exists():  # linked, not copied: the notes are kept in one file
        link = Path(os.path.relpath(notes, out.resolve().parent)).as_posix()
        lines += ["", f"What was tuned on validation, what each run showed and why: [{link}]({link})."]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs, fewer test rows")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run these parts; the others come from caches")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the mode's seeds")
    parser.add_argument("--force", action="store_true", help="rerun the parts run even when cached")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=INT",
                        help="override budgets (e.g. sft_steps=400); the run is cached under <mode>-<overrides>")
    parser.add_argument("--report", action="store_true", help="run nothing: rewrite the report from the caches")
    parser.add_argument("--output", default=str(REPO / "RESULTS.md"))
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="commands run at once, each with RESULTS_NUM_THREADS threads (default: cores / "
                             "threads = %(default)s here); every part whose inputs are ready queues its commands "
                             "for these slots, first asked first run")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = Settings(**(QUICK if args.quick else FULL).key())
    if args.seeds:
        settings.seeds = args.seeds
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in settings.key() or key == "seeds" or not value.isdigit():
            parser.error(f"--set {item!r}: expected KEY=INT with KEY one of "
                         f"{', '.join(k for k in settings.key() if k != 'seeds')}")
        setattr(settings, key, int(value))
    if args.set:
        mode += "-" + "-".join(sorted(x.replace("=", "") for x in args.set))
    run_root = REPO / "results" / "results_run" / mode
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()
    parts: dict[str, dict] = {}
    failures: dict[str, str] = {}
    todo = []
    for name in PARTS:
        cache = run_root / name / "part.json"
        wanted = not args.report and (args.only is None or name in args.only)
        if cache.exists() and not (wanted and args.force):
            cached = json.loads(cache.read_text())
            same = (cached.get("settings") == settings.key()
                    and cached.get("rl_overrides", []) == overrides_of(name, mode))
            if same or not wanted:
                parts[name] = cached
                print(f"[results] {name}: cached", flush=True)
                continue
        if wanted:
            todo.append(name)

    slots = CommandSlots(args.jobs)

    def run_part(name: str) -> None:
        root = run_root / name
        if args.force and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        ctx = Ctx(settings=settings, mode=mode, root=root, force=args.force, tag=name, slots=slots)
        part_started, part_load = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), os.getloadavg()
        print(f"[results] {name} ... ({datetime.datetime.utcnow():%H:%M:%S})", flush=True)
        try:
            result = PART_FUNCS[name](ctx)
        except Exception as err:  # noqa: BLE001 -- one part's failure is reported, the others still run
            failures[name] = str(err)
            print(f"[results] {name} FAILED: {err}", flush=True)
            return
        result.update(settings=settings.key(), rl_overrides=overrides_of(name, mode), cpu_s=ctx.cpu_s,
                      wall_s=ctx.wall_s, run_started=started, started=part_started,
                      finished=datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), load_start=part_load,
                      load_end=os.getloadavg())
        (root / "part.json").write_text(json.dumps(result, indent=1))
        parts[name] = result
        print(f"[results] {name}: {ctx.cpu_s / 60:.1f} CPU min, {ctx.wall_s / 60:.1f} wall min "
              f"({datetime.datetime.utcnow():%H:%M:%S})", flush=True)

    run_scheduled(todo, run_part, failures)
    write_results(parts, mode, settings, started, load, Path(args.output), failures)
    print(f"[results] wrote {args.output}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
