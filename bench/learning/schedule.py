"""The learning benchmark's scheduler: the budgets of a mode, the command slots, one part's context (its commands and
their CPU time), the dependency-ordered part runner and the command line. The parts themselves register in
``bench.learning.parts``; the report is ``bench.learning.report``."""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO

PY = sys.executable
KS = (5, 10, 20)
METRICS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]


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
    recpo_steps: int             # RecPO steps after the rec-loss-only warm-up
    recpo_warmup_steps: int      # 0: configs/tiny/recpo_ml100k.yaml; else configs/tiny/recpo_ml100k_warmup.yaml
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
# methods (200 SFT steps leave greedy decoding repeating titles). RecPO's 120 warm-up steps (item 17) add about 8
# min per seed on 2 cores; the 2-hour fit was measured before them and before the one-token-title twin.
FULL = Settings(seeds=[0, 1, 2], n_test=500, n_val=200, n_test_agent=100, sft_steps=1000, n_sft_seeds=1,
                rl_steps=40, rl_save_steps=10, recpo_steps=10, recpo_warmup_steps=120, deeprec_ws_steps=150,
                deeprec_steps=4, redial_n_test=48, redial_sft_steps=40, redial_rl_steps=3)
QUICK = Settings(seeds=[0], n_test=100, n_val=32, n_test_agent=24, sft_steps=200, n_sft_seeds=1, rl_steps=10,
                 rl_save_steps=5, recpo_steps=6, recpo_warmup_steps=0, deeprec_ws_steps=20, deeprec_steps=1,
                 redial_n_test=16, redial_sft_steps=6, redial_rl_steps=1)


def in_order(names, order: list[str]) -> list[str]:
    """`names` sorted as they come in `order`; names not in it last, in their own order."""
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))



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



def default_jobs() -> int:
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("RESULTS_NUM_THREADS", "1"))))


def run_scheduled(todo: list[str], run_part, failures: dict[str, str]) -> None:
    """Run the parts in `todo`, each on its own thread (its commands are subprocesses, which CommandSlots limits),
    a part starting once the parts it DEPENDS_ON that are also in `todo` have finished; a part whose dependency
    failed is not started."""
    import concurrent.futures as cf

    from bench.learning.parts import DEPENDS_ON, START_ORDER

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


def main(argv: list[str] | None = None) -> int:
    import bench.learning
    from bench.learning import parts as registry  # importing it discovers and registers every part
    from bench.learning.report import write_results

    usage = bench.learning.__doc__
    parser = argparse.ArgumentParser(prog="python -m bench.results", description=usage.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=usage)
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs, fewer test rows")
    parser.add_argument("--only", nargs="+", choices=registry.PARTS,
                        help="run these parts; the others come from caches")
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
    for name in registry.PARTS:
        cache = run_root / name / "part.json"
        wanted = not args.report and (args.only is None or name in args.only)
        if cache.exists() and not (wanted and args.force):
            cached = json.loads(cache.read_text())
            same = (cached.get("settings") == settings.key()
                    and cached.get("rl_overrides", []) == registry.overrides_of(name, mode))
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
            result = registry.PART_FUNCS[name](ctx)  # looked up now: a test may swap the table
        except Exception as err:  # noqa: BLE001 -- one part's failure is reported, the others still run
            failures[name] = str(err)
            print(f"[results] {name} FAILED: {err}", flush=True)
            return
        result.update(settings=settings.key(), rl_overrides=registry.overrides_of(name, mode), cpu_s=ctx.cpu_s,
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

