"""Run every benchmark in one process and write BENCHMARKS.md (ratios measured in this one run).

`make bench` (or `python -m bench.run_all [--only token_map step_time scoring demo_rss recpo deeprec]`). A partial
run (`--only`) keeps the rows / sections of the benchmarks it did not run, as they are in BENCHMARKS.md (each says
when it ran); `--report` rewrites BENCHMARKS.md from bench/out/*.json without running anything. Figures measured by
hand (the pretrained model's timings) live in docs/bench/, not here.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import json
import os
import re
from pathlib import Path

from bench.common import REPO, RESULTS_DIR


def discover() -> dict[str, dict]:
    """``name -> REPORT`` of every ``bench/bench_<name>.py`` that declares a ``REPORT`` (``{"order", "row": the
    main-table row's opening}`` for a module with ``row(result)``, ``{"order", "section": its heading}`` for one
    with ``section(result, heading)``), in ``order``. A new benchmark is a new module; nothing here lists them. The
    declarations are read from the source, so listing them imports no benchmark (and no torch / trl)."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["REPORT"]:
                found[path.stem.removeprefix("bench_")] = ast.literal_eval(node.value)
    return dict(sorted(found.items(), key=lambda kv: kv[1]["order"]))


REPORTS = discover()
BENCHES = tuple(REPORTS)
ROW_PREFIX = {name: r["row"] for name, r in REPORTS.items() if "row" in r}  # rows of the main table, in order
OWN_SECTIONS = {name: r["section"] for name, r in REPORTS.items() if "section" in r}  # kept when not run


def _module(name: str):
    return importlib.import_module(f"bench.bench_{name}")


def _old_section(text: str, heading: str) -> str | None:
    m = re.search(rf"^{re.escape(heading)}.*?(?=^## |\Z)", text, flags=re.S | re.M)
    return (m.group(0).rstrip() + "\n") if m else None


def _old_parts(text: str) -> tuple[dict, str | None]:
    """Rows by benchmark and the Run line of the current BENCHMARKS.md."""
    rows = {name: line for line in text.splitlines() for name, prefix in ROW_PREFIX.items() if line.startswith(prefix)}
    run_line = next((line for line in text.splitlines() if line.startswith("Run: ")), None)
    return rows, run_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--report", action="store_true",
                        help="run nothing: rewrite BENCHMARKS.md from the last results in bench/out/*.json")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = REPO / "BENCHMARKS.md"
    old_text = path.read_text() if path.exists() else ""
    old_rows, old_run = _old_parts(old_text)
    results = {}
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    for name in args.only:
        if args.report:
            saved = RESULTS_DIR / f"{name}.json"
            if saved.exists():
                results[name] = json.loads(saved.read_text())
            continue
        module = _module(name)
        print(f"[bench] {name} ...", flush=True)
        load_start = os.getloadavg()
        result = module.run()
        result.update(run_at=now, load_avg=[load_start[0], os.getloadavg()[0]])  # 1-min load before / after
        results[name] = result
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    rows = [_module(n).row(results[n]) if n in results else old_rows.get(n) for n in ROW_PREFIX]
    ran_table = [n for n in ROW_PREFIX if n in results]
    first = results[ran_table[0]] if ran_table else {}
    run_line = (f"Run: {first.get('run_at', now)} on {first['machine']}." if ran_table else old_run) or "Run: -"
    own = [_module(n).section(results[n], h) if n in results else _old_section(old_text, h)
           for n, h in OWN_SECTIONS.items()]
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
        *[x for x in own if x],
    ])
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
