"""Evaluation: score any recommender with `rewards` (the one matcher) and write the outputs.

    evaluate_recommender(recommender, dataset, catalog, output_dir, ks=..., protocol=..., n_items=...)

Every recommender (`evaluation.recommenders`: text generation, a ranker over the catalog, an agent) is evaluated
by `evaluate_recommender`: recommend, score (`score_recommendations`), write (`evaluation.predictions.write_outputs`);
`evaluate` is its text-only shortcut and `score_completions` scores completions directly. Scoring goes through
`rewards.judge.judge` (parse + match + relevance status) and `rewards.metrics` (Recall/NDCG/HR@K, catalog-hit and
valid-item ratios) only: evaluation has no matcher of its own, so a title that earns a reward during training is
the same title that counts as a hit here.

`metrics.json` holds the mean metrics (`recall@K`, `ndcg@K`, `hr@K` for K in ks, `catalog_hit_ratio`,
`valid_item_ratio`, `num_parsed`) over the rows that can be scored, `num_samples` (those rows), the rows left out
(`num_unscorable` = `num_empty_groundtruth` + `num_groundtruth_in_seen`, `summarize_scores`), `protocol`, `split`
and the provenance (model path or predictions file or baseline, dataset path, catalog, generation settings, missing
predictions); `predictions.jsonl` is described in `evaluation.predictions`.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.backends import GenerationBackend, prompt_key
from evaluation.predictions import column, write_outputs
from evaluation.recommenders import Recommendation, Recommender, StaticPredictions, TextRecommender
from rewards.catalog import resolve_require_year

DEFAULT_KS = (5, 10, 15, 20)
PROTOCOLS = ("packed", "strict")


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """The headline metric names, in table order."""
    keys = [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in ks]
    return keys + ["catalog_hit_ratio", "valid_item_ratio"]


def count_distinct_prompts(dataset, prompt_column: str = "prompt") -> int:
    prompts = column(dataset, prompt_column) or []
    return len({prompt_key(p) for p in prompts})


# ------------------------------------------------------------------------------------------------- scoring
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_evaluation_options(ks: Sequence[int], n_items: int, max_samples: int | None = None) -> tuple[int, ...]:
    """Range-check an evaluation's options (ValueError naming the option); returns ``ks`` as ints.

    ``n_items`` and every K must be >= 1 and ``max_samples`` (when given) >= 1: each of 0 or below used to write a
    metrics.json of zeros (or a negative valid_item_ratio) that looks like a real, bad result."""
    from rewards.metrics import check_scoring_options

    ks = check_scoring_options(ks, n_items, minimum=1)
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ValueError(f"max_samples must be an int >= 1 (or None for every row), got {max_samples!r}")
    return ks


#: ``per_sample`` rows a metric cannot be computed for carry this key, with the reason as its value.
UNSCORABLE_KEY = "unscorable"


#: Why a row cannot be scored (``per_sample[i]["unscorable"]``), and the metrics.json count of each reason.
EMPTY_GROUNDTRUTH = "empty groundtruth"
GROUNDTRUTH_SEEN = "every groundtruth item is in seen"
UNSCORABLE_COUNTS = {EMPTY_GROUNDTRUTH: "num_empty_groundtruth", GROUNDTRUTH_SEEN: "num_groundtruth_in_seen"}


def unscorable_reason(groundtruth, seen) -> str | None:
    """Why a row's metrics cannot be computed, or None: an empty ground truth (0/0), or a ground truth whose every
    item is in ``seen`` (seen items are never counted as hits, so no list can reach it: the next item of a repeat
    purchase, when ``seen`` is the history). ``groundtruth`` and ``seen`` as the scorer sees them (canonical ids)."""
    if not groundtruth:
        return EMPTY_GROUNDTRUTH
    if seen and set(groundtruth) <= set(seen):
        return GROUNDTRUTH_SEEN
    return None


def summarize_scores(per_sample: list[dict], groundtruths: Sequence, ks: Sequence[int], mean_all,
                     seens: Sequence | None = None) -> dict:
    """The mean metrics of an evaluation, over the rows that CAN be scored.

    A row with an empty ground truth has no Recall/NDCG/HR (0/0), and one whose every ground-truth item is in its
    ``seen`` scores 0 whatever is recommended: averaging them in as zeros silently lowered every mean (and kept the
    oracle below 1), so such rows are left out of the means, marked ``per_sample[i]["unscorable"]`` (the reason),
    counted in ``num_unscorable`` and per reason in ``num_empty_groundtruth`` / ``num_groundtruth_in_seen`` (their
    sample ids, at most 100, in ``unscorable_sample_ids``) and warned about on stderr. ``mean_all()`` gives the means
    over every row (the fast batch path, used when every row can be scored). ``groundtruths`` / ``seens``: canonical
    ids (``rewards.judge.canonical_targets``)."""
    from rewards.metrics import mean_metrics

    seens = seens if seens is not None else [()] * len(groundtruths)
    reasons = [unscorable_reason(gt, seen) for gt, seen in zip(groundtruths, seens, strict=True)]
    unscorable = [i for i, why in enumerate(reasons) if why is not None]
    if not unscorable:
        metrics = dict(mean_all()) if per_sample else {k: 0.0 for k in metric_keys(ks)}
    else:
        skip = set(unscorable)
        for i in unscorable:
            per_sample[i][UNSCORABLE_KEY] = reasons[i]
        kept = [{k: v for k, v in row.items() if k not in ("index", "sample_id")}
                for i, row in enumerate(per_sample) if i not in skip]
        metrics = mean_metrics(kept) if kept else {k: 0.0 for k in metric_keys(ks)}
        import sys

        for why, key in UNSCORABLE_COUNTS.items():
            n = reasons.count(why)
            if n:
                print(f"[evaluation] WARNING: {n} of {len(per_sample)} rows cannot be scored ({why}); they are left "
                      f"out of the means ({key} in metrics.json)", file=sys.stderr, flush=True)
    metrics["num_samples"] = len(per_sample) - len(unscorable)
    metrics["num_unscorable"] = len(unscorable)
    for why, key in UNSCORABLE_COUNTS.items():
        metrics[key] = reasons.count(why)
    if unscorable:
        metrics["unscorable_sample_ids"] = [per_sample[i].get("sample_id") for i in unscorable[:100]]
    return metrics


def score_completions(
    dataset,
    catalog,
    completions: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = "packed",
    n_items: int = 20,
    require_year: bool | None = None,
) -> tuple[dict, list[dict]]:
    """Score one completion per row with the batch path of `rewards` (`rewards.metrics.score_texts`: the one
    matcher turns each text into a list of catalog ids, scored like any recommender's ranked ids); the values are
    those of `rewards.judge.judge` + `rewards.metrics.ranking_metrics` per row.

    Returns `(metrics, per_sample)`: `metrics` holds the mean of every per-sample metric plus `num_samples`
    and `protocol`; `per_sample[i]` holds `index`, `sample_id`, the metrics of row i (with `num_groundtruth`) and
    `statuses` / `item_ids` (each parsed item's judged status and catalog id, in list order).
    """
    from rewards.metrics import score_texts

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {PROTOCOLS}")
    groundtruths = column(dataset, "groundtruth")
    if groundtruths is None:
        raise KeyError("the data set has no 'groundtruth' column")
    seens = column(dataset, "seen") or [[] for _ in groundtruths]
    sample_ids = column(dataset, "sample_id") or [str(i) for i in range(len(groundtruths))]
    if len(completions) != len(groundtruths):
        raise ValueError(f"{len(completions)} completions for {len(groundtruths)} samples")
    ks = check_evaluation_options(ks, n_items)
    if require_year is None:
        require_year = resolve_require_year(catalog)

    from rewards.judge import canonical_targets

    groundtruths, seens = canonical_targets(catalog, groundtruths, seens)  # (score_texts maps them the same way)
    scores = score_texts([text or "" for text in completions], catalog, groundtruths, seens, ks=ks,
                         protocol=protocol, n_items=n_items, require_year=require_year)
    per_sample: list[dict] = []
    for index, (sid, m, ids, status) in enumerate(zip(sample_ids, scores.rows(), scores.judged.ids,
                                                      scores.judged.status)):
        row = {"index": index, "sample_id": sid}
        row.update(m)
        row.update({"statuses": status, "item_ids": ids})
        per_sample.append(row)

    # An empty split: every metric named, valued NaN-free zero, so tables and CSVs keep their columns.
    metrics: dict[str, Any] = summarize_scores(per_sample, groundtruths, ks, scores.mean, seens)
    metrics["protocol"] = protocol
    metrics["n_items"] = n_items
    metrics["ks"] = list(ks)
    metrics["require_year"] = bool(require_year)
    return metrics, per_sample


# ------------------------------------------------------------------------------------------- recommendations
def _score_ids(id_lists, groundtruths, seens, ks, protocol: str, n_items: int) -> tuple[list[dict], list[list]]:
    """`(per-sample metrics, per-sample statuses)` of ranked id lists: THE one place the seam calls the shared
    scoring (`rewards.metrics.score_id_lists`: the status rule, then the batch metrics -- the path
    `score_completions` takes after matching its texts)."""
    from rewards.metrics import score_id_lists

    scores = score_id_lists(id_lists, groundtruths, seens, ks=ks, protocol=protocol, n_items=n_items)
    return scores.rows(), [list(s) for s in scores.judged.status]


def _check_ids(rec: Recommendation, index: int, catalog) -> None:
    if not isinstance(rec, Recommendation):
        raise TypeError(f"row {index}: a recommender must return Recommendation objects, got {type(rec).__name__}")
    for position, iid in enumerate(rec.item_ids):
        if iid is not None and (isinstance(iid, bool) or not isinstance(iid, (int, str)) or iid not in catalog):
            # (a string is an id only in a catalog that has string ids: `iid not in catalog` refuses it elsewhere)
            raise ValueError(f"row {index}: item_ids[{position}] = {iid!r} is not a catalog id (or None)")


def score_recommendations(dataset, catalog, recommendations: Sequence[Recommendation],
                          ks: Sequence[int] = DEFAULT_KS, protocol: str = "packed",
                          n_items: int = 20) -> tuple[dict, list[dict]]:
    """`(metrics, per_sample)` with the keys of `score_completions`: mean metrics + `num_samples`, `protocol`,
    `n_items`, `ks`; per sample `index`, `sample_id`, its metrics, `statuses` and `item_ids`."""
    from rewards.metrics import mean_metrics

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {PROTOCOLS}")
    groundtruths = column(dataset, "groundtruth")
    if groundtruths is None:
        raise KeyError("the data set has no 'groundtruth' column")
    if len(recommendations) != len(groundtruths):
        raise ValueError(f"{len(recommendations)} recommendations for {len(groundtruths)} samples")
    seens = column(dataset, "seen") or [[] for _ in groundtruths]
    sample_ids = column(dataset, "sample_id") or [str(i) for i in range(len(groundtruths))]
    for index, rec in enumerate(recommendations):
        _check_ids(rec, index, catalog)
    ks = check_evaluation_options(ks, n_items)
    from rewards.judge import canonical_targets

    # entries the matcher cannot tell apart are one item (rewards.catalog.Catalog.canonical_id), for ids as for text
    groundtruths, seens = canonical_targets(catalog, groundtruths, seens)
    id_lists = [[None if i is None else catalog.canonical_id(i) for i in r.item_ids] for r in recommendations]
    rows, statuses = _score_ids(id_lists, groundtruths, seens, ks, protocol, n_items)
    per_sample = []
    for index, (m, st, rec, sid) in enumerate(zip(rows, statuses, recommendations, sample_ids)):
        per_sample.append({"index": index, "sample_id": sid, **m, "statuses": st, "item_ids": list(rec.item_ids)})
    metrics: dict[str, Any] = summarize_scores(per_sample, groundtruths, ks, lambda: mean_metrics(rows), seens)
    metrics.update(protocol=protocol, n_items=n_items, ks=list(ks))
    return metrics, per_sample


def evaluate_recommender(recommender: Recommender, dataset, catalog, output_dir=None, *,
                         ks: Sequence[int] = DEFAULT_KS, protocol: str = "packed", n_items: int = 20,
                         provenance: dict | None = None, row_indices: Sequence[int] | None = None) -> dict:
    """Recommend, score (`score_recommendations`), write `predictions.jsonl` + `metrics.json` (when
    `output_dir` is given); returns the metrics. `row_indices[i]` is row i's index in the full split (a
    subset keeps its split indices in `index`, so the file stays valid `--predictions` input); default 0..n-1.
    The options are range-checked before anything is generated (a bad --n_items must not cost a generation run)."""
    check_evaluation_options(ks, n_items)
    t0 = time.time()
    recommendations = recommender.recommend(dataset)
    t1 = time.time()
    metrics, per_sample = score_recommendations(dataset, catalog, recommendations, ks, protocol, n_items)
    if row_indices is not None:
        if len(row_indices) != len(per_sample):
            raise ValueError(f"{len(row_indices)} row indices for {len(per_sample)} samples")
        for row, index in zip(per_sample, row_indices):
            row["index"] = int(index)
    metrics["require_year"] = getattr(recommender, "require_year", None)
    metrics["num_distinct_prompts"] = count_distinct_prompts(dataset)
    metrics.update(provenance or {})
    metrics.update(getattr(recommender, "episode_stats", None) or {})  # e.g. DeepRec: TRM calls per episode
    generation = getattr(recommender, "generation_seconds", None)
    metrics["generation_seconds"] = generation
    metrics["recommend_seconds"] = round(t1 - t0, 3)
    metrics["scoring_seconds"] = round(time.time() - t1, 3)
    metrics["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if output_dir is not None:
        write_outputs(Path(output_dir), metrics, per_sample, [r.text for r in recommendations])
    return metrics


# ------------------------------------------------------------------------------------------------- running
def evaluate(
    dataset,
    catalog,
    output_dir,
    *,
    backend: GenerationBackend | None = None,
    completions: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = "packed",
    n_items: int = 20,
    require_year: bool | None = None,
    provenance: dict | None = None,
) -> dict:
    """Generate (when `backend` is given) or take `completions`, score, write the outputs; returns metrics.

    A text-only shortcut of `evaluate_recommender` (TextRecommender / StaticPredictions)."""
    if (backend is None) == (completions is None):
        raise ValueError("pass exactly one of backend= or completions=")
    if backend is not None:
        recommender = TextRecommender(backend, catalog, require_year)
    else:
        recommender = StaticPredictions.from_texts(list(completions), catalog, require_year)
    return evaluate_recommender(recommender, dataset, catalog, output_dir, ks=ks, protocol=protocol,
                                n_items=n_items, provenance=provenance)


def format_metrics(metrics: dict, ks: Sequence[int] | None = None, title: str | None = None) -> str:
    """A plain-text table: one row per K (Recall, NDCG, HR), then the ratios and the sample count."""
    ks = ks or metrics.get("ks") or DEFAULT_KS

    def f(key):
        value = metrics.get(key)
        return f"{value:.4f}" if _is_number(value) else "-"

    lines = []
    if title:
        lines.append(title)
    lines.append(f"protocol={metrics.get('protocol')}  split={metrics.get('split', '-')}  "
                 f"samples={metrics.get('num_samples')}")
    lines.append(f"{'K':>4} {'Recall':>8} {'NDCG':>8} {'HR':>8}")
    for k in ks:
        lines.append(f"{k:>4} {f(f'recall@{k}'):>8} {f(f'ndcg@{k}'):>8} {f(f'hr@{k}'):>8}")
    lines.append(f"catalog_hit_ratio {f('catalog_hit_ratio')}   valid_item_ratio {f('valid_item_ratio')}")
    if metrics.get("num_empty_groundtruth"):
        lines.append(f"WARNING: {metrics['num_empty_groundtruth']} rows have an empty ground truth (left out of the "
                     "means)")
    if metrics.get("num_groundtruth_in_seen"):
        lines.append(f"WARNING: {metrics['num_groundtruth_in_seen']} rows have every ground-truth item in seen, "
                     "unreachable (left out of the means)")
    if metrics.get("num_unscorable") and not any(metrics.get(k) for k in UNSCORABLE_COUNTS.values()):
        lines.append(f"WARNING: {metrics['num_unscorable']} rows cannot be scored (left out of the means)")
    if metrics.get("num_missing_predictions"):
        lines.append(f"WARNING: {metrics['num_missing_predictions']} rows had no prediction (scored as empty)")
    return "\n".join(lines)


