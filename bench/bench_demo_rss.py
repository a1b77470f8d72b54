"""Peak resident memory of `make demo` (scripts/demo.sh), target <= 3 GB.

The demo runs its steps one after another (preprocess, evaluations, SFT, Rank-GRPO), so its peak is the peak of
its largest process. A fresh Python wrapper runs the demo and reads getrusage(RUSAGE_CHILDREN).ru_maxrss: the
largest max-RSS of any process it (transitively) waited for, and nothing from the benchmarks run before it in
this process.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.common import REPO, machine

# bench/run_all.py runs it and puts its row in the main table
REPORT = {"order": 4, "row": "| Peak resident memory of `make demo`"}

_WRAPPER = r"""
import json, resource, subprocess, sys
with open(sys.argv[1], "w") as log:
    rc = subprocess.call(["bash", "scripts/demo.sh"], stdout=log, stderr=subprocess.STDOUT)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def row(r: dict) -> str:
    """The BENCHMARKS.md table row of a ``run()`` result (bench/run_all.py)."""
    return (f"| Peak resident memory of `make demo` (largest process; {r['cpu_s'] / 60:.1f} CPU min, "
            f"{r['wall_s'] / 60:.1f} wall min) | {r['peak_rss_gb']:.2f} GB | - | <= {r['target_gb']:.0f} GB |")


def run() -> dict:
    log = REPO / "bench" / "out" / "demo_rss.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", _WRAPPER, str(log)], cwd=REPO, capture_output=True, text=True,
                         check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    if measured["rc"] != 0:
        raise RuntimeError(f"make demo failed (exit {measured['rc']}); see {log}")
    return {"peak_rss_gb": measured["maxrss_kb"] / 1024**2, "cpu_s": measured["cpu_s"], "wall_s": time.time() - t0,
            "machine": machine(), "target_gb": 3.0}
