"""Run every benchmark in one process and write BENCHMARKS.md (ratios measured in this one run).

`make bench` (or `python -m bench.run_all [--only token_map step_time scoring demo_rss recpo deeprec]`). A partial
run (`--only`) keeps the rows / sections of the benchmarks it did not run, as they are in BENCHMARKS.md (each says
when it ran); `--report` rewrites BENCHMARKS.md from bench/out/*.json without running anything. Figures measured by
hand (the pretrained model's timings) live in docs/bench/, not here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re

from bench.common import REPO, RESULTS_DIR

BENCHES = ("token_map", "step_time", "scoring", "demo_rss", "recpo", "deeprec")
TABLE_BENCHES = ("token_map", "step_time", "demo_rss")  # rows of the main table; scoring has a section of its own
ROW_PREFIX = {"token_map": "| Token -> item assignment", "step_time": "| Training step",
              "demo_rss": "| Peak resident memory of `make demo`"}
SCORING_HEADING = "## Scoring throughput"
# benchmarks whose module writes its own section (bench_<name>.section(result, heading)); kept when not run
OWN_SECTIONS = {"recpo": "## RecPO: rewards, item-table refresh, step time",
                "deeprec": "## DeepRec: retrieval latency and rollout split"}


def _row_token_map(r: dict) -> str:
    return (f"| Token -> item assignment ({r['shape']}; {r['source']}) | per-token decode loop {r['slow_s'] * 1e3:.1f} ms"
            f" vs byte-offset map {r['fast_s'] * 1e3:.2f} ms (parse, shared with rewards: {r['parse_s'] * 1e3:.1f} ms) | "
            f"**{r['speedup']:.1f}x** faster, identical output: {r['identical']} | >= 50x, identical |")


def _row_step_time(r: dict) -> str:
    return (f"| Training step, RankGRPOTrainer / stock GRPOTrainer ({r['setup']}) | {r['rank_grpo_s']:.3f} s vs "
            f"{r['grpo_s']:.3f} s per step | **{r['ratio']:.3f}x** | <= 1.05x |")


def _row_demo_rss(r: dict) -> str:
    return (f"| Peak resident memory of `make demo` (largest process; {r['cpu_s'] / 60:.1f} CPU min, "
            f"{r['wall_s'] / 60:.1f} wall min) | {r['peak_rss_gb']:.2f} GB | - | <= {r['target_gb']:.0f} GB |")


def _section_scoring(r: dict) -> str:
    p, st = r["packed"], r["strict"]
    return "\n".join([
        SCORING_HEADING,
        "",
        f"`python -m bench.run_all --only scoring` ({r['run_at']}, {r['machine']}). {r['n_samples']:,} samples "
        f"against the {r['catalog']}: real Reddit-v2 ground truths and seen items, completions built from the real "
        f"SFT completions with noise (random catalog titles, hits, seen items, duplicates, out-of-catalog lines, "
        f"numbering, bullets, bold, preambles, CRLF): {r['non_blank_lines']:,} non-blank lines, "
        f"{r['distinct_lines']:,} distinct. Text -> parse -> match -> statuses -> Recall/NDCG/HR@5,10,15,20 + "
        f"ratios, per-sample rows and means. CPU seconds of the one process (best of cold runs, caches cleared); "
        "wall seconds in brackets.",
        "",
        "| protocol | per-sample loop (`judge` + `ranking_metrics`) | batch (`score_texts`) | speedup | identical | target |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {x['slow_cpu_s']:.2f} s ({x['slow_wall_s']:.2f} s) = {x['slow_samples_per_s']:,.0f} samples/s | "
          f"{x['fast_cpu_s']:.3f} s ({x['fast_wall_s']:.3f} s) = **{x['fast_samples_per_s']:,.0f} samples/s** | "
          f"{x['speedup']:.1f}x | {r['identical']} | >= 10,000 samples/s |" for name, x in (("packed", p), ("strict", st))),
        "",
        f"Of the batch time, text -> id lists (`match_texts`) is {r['match_texts_cpu_s']:.3f} s; the rest is the status "
        "rule and the vectorised metrics. Identical = every sample's ids, statuses and metric values bit for bit, "
        "and the means.",
        "",
    ])


def _old_section(text: str, heading: str) -> str | None:
    m = re.search(rf"^{re.escape(heading)}.*?(?=^## |\Z)", text, flags=re.S | re.M)
    return (m.group(0).rstrip() + "\n") if m else None


def _old_parts(text: str) -> tuple[dict, str | None, str | None]:
    """Rows by benchmark, the Run line and the scoring section of the current BENCHMARKS.md."""
    rows = {name: line for line in text.splitlines() for name, prefix in ROW_PREFIX.items() if line.startswith(prefix)}
    run_line = next((line for line in text.splitlines() if line.startswith("Run: ")), None)
    m = re.search(rf"^{re.escape(SCORING_HEADING)}.*?(?=^## |\Z)", text, flags=re.S | re.M)
    return rows, run_line, (m.group(0).rstrip() + "\n") if m else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--report", action="store_true",
                        help="run nothing: rewrite BENCHMARKS.md from the last results in bench/out/*.json")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = REPO / "BENCHMARKS.md"
    old_text = path.read_text() if path.exists() else ""
    old_rows, old_run, old_scoring = _old_parts(old_text)
    results = {}
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    for name in args.only:
        if args.report:
            saved = RESULTS_DIR / f"{name}.json"
            if saved.exists():
                results[name] = json.loads(saved.read_text())
            continue
        module = __import__(f"bench.bench_{name}", fromlist=["run"])
        print(f"[bench] {name} ...", flush=True)
        load_start = os.getloadavg()
        result = module.run()
        result.update(run_at=now, load_avg=[load_start[0], os.getloadavg()[0]])  # 1-min load before / after
        results[name] = result
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    makers = {"token_map": _row_token_map, "step_time": _row_step_time, "demo_rss": _row_demo_rss}
    rows = [makers[n](results[n]) if n in results else old_rows.get(n) for n in TABLE_BENCHES]
    ran_table = [n for n in TABLE_BENCHES if n in results]
    first = results[ran_table[0]] if ran_table else {}
    run_line = (f"Run: {first.get('run_at', now)} on {first['machine']}." if ran_table else old_run) or "Run: -"
    scoring = _section_scoring(results["scoring"]) if "scoring" in results else old_scoring
    own = [__import__(f"bench.bench_{n}", fromlist=["section"]).section(results[n], h) if n in results
           else _old_section(old_text, h) for n, h in OWN_SECTIONS.items()]
    text = "\n".join([
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run_all`); every ratio below was measured in ONE run on the "
        "machine named here, so the ratio is what to read, not the absolute seconds.",
        "",
        run_line,
        "",
        "| benchmark | measured | ratio | target |",
        "|---|---|---|---|",
        *[r for r in rows if r],
        "",
        "Raw numbers: `bench/out/*.json`. Method notes are in each `bench/bench_*.py` docstring. SmolLM2-135M's "
        "timings and zero-shot scores were measured by hand, not by this run: docs/bench/smollm2_by_hand.md.",
        "",
        *([scoring] if scoring else []),
        *[x for x in own if x],
    ])
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
