"""Scoring throughput: the batch path (rewards.metrics.score_texts) vs today's per-sample loop, same run.

10,000 samples x ~20 items against the REAL Reddit-v2 catalog (7,404 titles, ../shared/data). Ground truths and
seen items are the real ones of the 100 released Reddit-v2 records (cycled); each completion starts from that
record's real SFT completion and is perturbed the way model output is: random catalog titles swapped in,
ground-truth hits, seen items, duplicates, out-of-catalog lines (invented titles, wrong years), numbering
("1.", "2)", "#3"), bullets, **bold**, a preamble and an outro, blank lines, CRLF line ends.

Timed, on ONE core (torch/numpy threads = 1), from completion texts to per-sample metrics, for packed AND strict:

* slow: per sample ``rewards.judge.judge`` + ``rewards.metrics.ranking_metrics`` (the per-sample API);
* fast: ``rewards.metrics.score_texts`` (``match_texts`` -> id lists -> ``score_id_lists``).

Both start cold (the title-normalisation cache cleared before every run). Both must give identical output:
every sample's catalog ids, statuses and every metric value (bit for bit) and the means. Target (issue #6):
>= 10,000 samples/s for the fast path.
"""
from __future__ import annotations

import json
import os
import platform
import random
import time

from bench.common import SHARED_DATA

# bench/run_all.py runs it and writes its section
REPORT = {"order": 3, "section": "## Scoring throughput"}

N_SAMPLES = 10_000
KS = (5, 10, 15, 20)
N_ITEMS = 20
CATALOG = SHARED_DATA / "reddit_v2_rankgrpo" / "gt_catalog.pkl"
RECORDS = SHARED_DATA / "reddit_v2_rankgrpo" / "sft_with_assigned_traits_test.json"
PREAMBLES = ("Here are 20 movies you might enjoy:", "Sure! Based on what you liked, I recommend:",
             "Here's a list of recommendations:")
OUTROS = ("Enjoy!", "I hope you enjoy these recommendations!", "Let me know if you want more.")
WORDS = ("Midnight", "Shadow", "Return", "Last", "Silent", "Garden", "Empire", "Crimson", "River", "Echo")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _line_style(rng: random.Random):
    style = rng.randrange(6)
    return {
        0: lambda k, t: t,
        1: lambda k, t: f"{k}. {t}",
        2: lambda k, t: f"{k}) {t}",
        3: lambda k, t: f"{k}. **{t}**",
        4: lambda k, t: f"- {t}",
        5: lambda k, t: f"#{k} {t}",
    }[style]


def build_samples(catalog, n_samples: int = N_SAMPLES, seed: int = 0):
    """``(texts, groundtruths, seens)``: real ground truths / seen ids, perturbed real completions."""
    rng = random.Random(seed)
    records = json.loads(RECORDS.read_text(encoding="utf-8"))["samples"]
    base = []
    for r in records:
        gt = [catalog.match(t, int(y)) for t, y in r["groundtruth_with_release_year"]]
        seen = [catalog.match(t) for t in r["seen_titles"]]
        lines = [ln for ln in r["completion"][0]["content"].split("\n") if ln.strip()]
        base.append(([g for g in gt if g is not None], [s for s in seen if s is not None], lines))
    ids = catalog.ids
    texts, gts, seens = [], [], []
    for i in range(n_samples):
        gt, seen, lines = base[i % len(base)]
        lines = list(lines)
        rng.shuffle(lines)
        for j in range(len(lines)):  # about a third swapped for random catalog titles (many distinct lines)
            if rng.random() < 0.35:
                lines[j] = catalog.display(rng.choice(ids))
        extras = []
        if gt and rng.random() < 0.7:
            extras += [catalog.display(g) for g in rng.sample(gt, min(len(gt), rng.randint(1, 3)))]
        if seen and rng.random() < 0.4:
            extras.append(catalog.display(rng.choice(seen)))
        if rng.random() < 0.3:
            extras.append(rng.choice(lines))  # a duplicate
        for _ in range(rng.randint(0, 2)):  # out of catalog: an invented title, or a real one 10 years off
            if rng.random() < 0.5:
                extras.append(f"The {rng.choice(WORDS)} {rng.choice(WORDS)} ({rng.randint(1950, 2023)})")
            else:
                it = catalog[rng.choice(ids)]
                extras.append(f"{it['title']} ({(it['year'] or 2000) + 10})")
        for e in extras:
            lines.insert(rng.randrange(len(lines) + 1), e)
        lines = lines[: N_ITEMS + rng.randint(-3, 2)]
        style = _line_style(rng)
        lines = [style(k, t) for k, t in enumerate(lines, start=1)]
        if rng.random() < 0.3:
            lines = [rng.choice(PREAMBLES), ""] + lines + ["", rng.choice(OUTROS)]
        sep = "\r\n" if rng.random() < 0.1 else "\n"
        texts.append(sep.join(lines))
        gts.append(list(gt))
        seens.append(list(seen))
    return texts, gts, seens


def _clear_caches() -> None:
    from rewards.titles import _normalize_cached

    _normalize_cached.cache_clear()


def slow_scores(texts, catalog, gts, seens, protocol: str):
    from rewards.judge import judge
    from rewards.metrics import mean_metrics, ranking_metrics

    rows, ids, status = [], [], []
    for text, gt, seen in zip(texts, gts, seens):
        j = judge(text, catalog, gt, seen, n_items=N_ITEMS, require_year=True)
        rows.append(ranking_metrics(j, len(gt), ks=KS, protocol=protocol, n_items=N_ITEMS))
        ids.append(j.ids)
        status.append(j.status)
    return rows, ids, status, mean_metrics(rows)


def fast_scores(texts, catalog, gts, seens, protocol: str):
    from rewards.metrics import score_texts

    s = score_texts(texts, catalog, gts, seens, ks=KS, protocol=protocol, n_items=N_ITEMS, require_year=True)
    return s.rows(), s.judged.ids, s.judged.status, s.mean()


def _timed(fn, repeat: int):
    """Best of ``repeat`` cold runs (caches cleared each time): (CPU seconds, wall seconds, last output).

    CPU time of this process (``time.process_time``) is the headline: on a shared box wall time also counts
    the time other processes held the core; on an idle core the two agree."""
    best_cpu, best_wall, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        _clear_caches()
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall, out


def section(r: dict, heading: str) -> str:
    """The BENCHMARKS.md section of a ``run()`` result (bench/run_all.py)."""
    p, st = r["packed"], r["strict"]
    return "\n".join([
        heading,
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


def run(n_samples: int = N_SAMPLES, repeat_fast: int = 5, repeat_slow: int = 2) -> dict:
    import torch

    torch.set_num_threads(1)
    from rewards.catalog import load_catalog
    from rewards.judge import match_texts

    catalog = load_catalog(CATALOG)
    texts, gts, seens = build_samples(catalog, n_samples)
    n_lines = sum(len([ln for ln in t.splitlines() if ln.strip()]) for t in texts)
    distinct = len({ln for t in texts for ln in t.splitlines() if ln.strip()})
    result = {"name": "scoring", "n_samples": n_samples, "catalog": f"Reddit-v2 gt_catalog.pkl ({len(catalog)} titles)",
              "non_blank_lines": n_lines, "distinct_lines": distinct}
    identical = True
    for protocol in ("packed", "strict"):
        t_slow, w_slow, slow = _timed(lambda: slow_scores(texts, catalog, gts, seens, protocol), repeat_slow)
        t_fast, w_fast, fast = _timed(lambda: fast_scores(texts, catalog, gts, seens, protocol), repeat_fast)
        same = slow[0] == fast[0] and slow[1] == fast[1] and slow[2] == fast[2] and slow[3] == fast[3]
        identical &= same
        if not same:
            bad = next((i for i in range(n_samples) if (slow[0][i], slow[1][i], slow[2][i]) !=
                        (fast[0][i], fast[1][i], fast[2][i])), None)
            if bad is None:
                raise AssertionError(f"{protocol}: the means differ: {slow[3]} vs {fast[3]}")
            raise AssertionError(f"{protocol}: sample {bad} differs:\n{texts[bad]!r}\nslow {slow[0][bad]} "
                                 f"{slow[2][bad]}\nfast {fast[0][bad]} {fast[2][bad]}")
        result[protocol] = {"slow_cpu_s": t_slow, "fast_cpu_s": t_fast, "slow_wall_s": w_slow, "fast_wall_s": w_fast,
                            "slow_samples_per_s": n_samples / t_slow, "fast_samples_per_s": n_samples / t_fast,
                            "speedup": t_slow / t_fast,
                            "mean_ndcg@20": fast[3]["ndcg@20"], "mean_recall@20": fast[3]["recall@20"]}
    _clear_caches()
    t0 = time.process_time()
    match_texts(texts, catalog, require_year=True)
    result["match_texts_cpu_s"] = time.process_time() - t0  # of fast_cpu_s: text -> id lists
    result["identical"] = identical
    result["machine"] = (f"{os.cpu_count()} cores ({cpu_model()}), 1 thread, python {platform.python_version()}")
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
