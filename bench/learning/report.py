"""The learning benchmark's report: RESULTS.md rendered from the parts' rows (tables from lists of cells through one
markdown-table function), with the targets, the curves and each part's CPU time."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path

from bench.learning import parts as registry
from bench.learning.schedule import METRICS, REPO, Settings, in_order

DOCS_FIGURES = REPO / "docs" / "results"


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


def markdown_table(head: list[str], rows: list[list]) -> list[str]:
    """The lines of a markdown table: a header of ``head`` and one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _table(rows: list[dict], protocol: str, cpu_by_method: dict[str, float]) -> list[str]:
    """One score table: a row per method (mean ± std over its seeds), the rows of one protocol only."""
    methods: dict[str, list[dict]] = {}
    for r in rows:
        if _table_of(r) == protocol:
            methods.setdefault(r["method"], []).append(r)
    extra = ["valid_item_ratio"] if protocol == "list" else []
    return markdown_table(
        ["method", "seeds", *METRICS, *extra, "test rows", "CPU min"],
        [[method, len(rs), *(_mean_std([r[m] for r in rs if m in r]) for m in METRICS + extra),
          int(rs[0].get("num_samples", 0)), f"{cpu_by_method.get(method, 0) / 60:.1f}"]
         for method, rs in methods.items()])


def _overrides_text(parts: dict[str, dict]) -> str:
    """The config overrides the RL parts in the report ran with (from their caches: a report can outlive a change)."""
    ran = {name: " ".join(p.get("rl_overrides", [])) or "none" for name, p in parts.items()
           if name in registry.OVERRIDES}
    if len(set(ran.values())) > 1:
        return "; ".join(f"{name}: {value}" for name, value in ran.items())
    return next(iter(ran.values()), "none")


def _selection_lines(rows: list[dict], settings: Settings) -> list[str]:
    """Which checkpoint each RL seed was scored at (bench.learning.parts.rank_grpo.best_checkpoint)."""
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
    for name in in_order(registry.LABELS, registry.PARTS):
        label = registry.LABELS[name]
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
    parts = {name: parts[name] for name in in_order(parts, registry.PARTS)}
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
    missing = [k for k in registry.PARTS if k not in parts and k not in failures]
    if missing:
        lines += ["", f"Parts not run (no cached result for these settings): {', '.join(f'`{k}`' for k in missing)}."]
    lines += ["", "## Curves", "", *_figures(parts, mode, out.resolve().parent)]
    cpu_rows = []
    for k, p in parts.items():
        diff = {key: value for key, value in (p.get("settings") or {}).items() if settings.key().get(key) != value}
        note = f" (cached from a run with {json.dumps(diff)})" if diff else ""
        cpu_rows.append([f"{k}{note}", f"{p.get('cpu_s', 0) / 60:.1f}", f"{p.get('wall_s', 0) / 60:.1f}"])
    lines += ["## CPU time per part", "", *markdown_table(["part", "CPU min", "wall min"], cpu_rows)]
    notes = REPO / "docs" / "results" / "NOTES.md"
    if notes.exists():  # linked, not copied: the notes are kept in one file
        link = Path(os.path.relpath(notes, out.resolve().parent)).as_posix()
        lines += ["", f"What was tuned on validation, what each run showed and why: [{link}]({link})."]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")

