"""Run every benchmark in one process and write BENCHMARKS.md (ratios measured in this one run).

`make bench` (or `python -m bench.run_all [--only token_map step_time]`).
"""
from __future__ import annotations

import argparse
import datetime
import json

from bench.common import REPO, RESULTS_DIR

BENCHES = ("token_map", "step_time")


def _row_token_map(r: dict) -> str:
    return (f"| Token -> item assignment ({r['shape']}; {r['source']}) | per-token decode loop {r['slow_s'] * 1e3:.1f} ms"
            f" vs byte-offset map {r['fast_s'] * 1e3:.2f} ms (parse, shared with rewards: {r['parse_s'] * 1e3:.1f} ms) | "
            f"**{r['speedup']:.1f}x** faster, identical output: {r['identical']} | >= 50x, identical |")


def _row_step_time(r: dict) -> str:
    return (f"| Training step, RankGRPOTrainer / stock GRPOTrainer ({r['setup']}) | {r['rank_grpo_s']:.3f} s vs "
            f"{r['grpo_s']:.3f} s per step | **{r['ratio']:.3f}x** | <= 1.05x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for name in args.only:
        module = __import__(f"bench.bench_{name}", fromlist=["run"])
        print(f"[bench] {name} ...", flush=True)
        result = module.run()
        results[name] = result
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))
        rows.append({"token_map": _row_token_map, "step_time": _row_step_time}[name](result))
        print(json.dumps(result, indent=2), flush=True)
    machine = next(iter(results.values()))["machine"] if results else "?"
    text = "\n".join([
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run_all`); every ratio below was measured in ONE run on the "
        "machine named here, so the ratio is what to read, not the absolute seconds.",
        "",
        f"Run: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine}.",
        "",
        "| benchmark | measured | ratio | target |",
        "|---|---|---|---|",
        *rows,
        "",
        "Raw numbers: `bench/out/*.json`. Method notes are in each `bench/bench_*.py` docstring.",
        "",
    ])
    (REPO / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
