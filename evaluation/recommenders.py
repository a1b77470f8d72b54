"""The recommender-level evaluation seam: anything that returns a ranked list of catalog ids per sample.

    recommender.recommend(dataset) -> list[Recommendation]      # one per row, in row order
    evaluate_recommender(recommender, dataset, catalog, output_dir, ks=..., protocol=..., n_items=...)

A `Recommendation` is `item_ids` (ranked, as listed; `None` = a listed entry that matched no catalog item, so the
catalog-hit ratio still counts it) and, for recommenders that write text, `text` (the completion). Every
recommender is scored by the same code (`score_recommendations`: relevance statuses from `rewards.judge`, metrics
from `rewards.metrics`) and written to the same `metrics.json` / `predictions.jsonl`, so a text model, a
hidden-state ranker (RecPO) and a multi-turn agent (DeepRec) are compared on one table.

Implementations here:

* `TextRecommender(backend, catalog, require_year=None)`: greedy generation (one call per distinct prompt) and THE
  text -> ids step (`text_item_ids`: `rewards.parse` + `Catalog.match`, the matcher training rewards use).
* `StaticPredictions`: a predictions file or a list of completions / id lists (no model).
* `PopularityRecommender(train_dataset, catalog, n_items, as_text=False)`: the most popular unseen training items.
* `GroundtruthRecommender(catalog, n_items, as_text=False)`: the oracle (each sample's unseen ground truth).
  With `as_text=True` both write their list as `Title (Year)` lines and parse it back, like a model would.

Text and ids: a text recommendation is scored by the ids parsed from its text, ALL of them (not cut to N: the
packed protocol moves items listed past N up when earlier ones are dropped), exactly as
`evaluation.evaluate.score_completions` scores the same completions.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from evaluation.backends import GenerationBackend
from evaluation.evaluate import (
    DEFAULT_KS,
    PROTOCOLS,
    PredictionsError,
    _column,
    check_evaluation_options,
    count_distinct_prompts,
    generate_completions,
    popularity_ranking,
    read_prediction_records,
    summarize_scores,
    write_outputs,
)


@dataclass
class Recommendation:
    """One sample's answer: ranked catalog ids (None = a listed entry outside the catalog) and, for text
    recommenders, the completion they were parsed from."""

    item_ids: list[int | None]
    text: str | None = None


@runtime_checkable
class Recommender(Protocol):
    """Returns one `Recommendation` per row of `dataset` (a `datasets.Dataset` or a list of dicts), in order.

    `require_year` (optional attribute) is recorded in metrics.json for recommenders that parse text."""

    def recommend(self, dataset) -> list[Recommendation]: ...


# --------------------------------------------------------------------------------------------------- text
def text_item_ids(text: str, catalog, require_year: bool) -> list[int | None]:
    """THE text -> ranked ids step: the catalog id of every item line (`rewards.judge.match_texts`, the rule
    `rewards.judge.judge` and every training reward apply)."""
    return texts_item_ids([text or ""], catalog, require_year)[0]


def texts_item_ids(texts: Sequence[str], catalog, require_year: bool) -> list[list[int | None]]:
    """`text_item_ids` of each text, batched (`rewards.judge.match_texts`: each distinct line parsed once): the one
    place the seam turns a batch of completions into id lists."""
    from rewards.judge import match_texts

    return match_texts(list(texts), catalog, require_year=require_year)


def _resolve_require_year(catalog, require_year: bool | None) -> bool:
    from rewards.catalog import resolve_require_year

    return resolve_require_year(catalog, require_year)


class TextRecommender:
    """A generation backend (evaluation.backends) + the one matcher: greedy text, parsed into catalog ids.

    `require_year=None` takes it from the catalog (`rewards.catalog.resolve_require_year`)."""

    def __init__(self, backend: GenerationBackend, catalog, require_year: bool | None = None,
                 prompt_column: str = "prompt", decoding: str = "greedy"):
        self.backend, self.catalog, self.prompt_column = backend, catalog, prompt_column
        self.require_year = _resolve_require_year(catalog, require_year)
        self.generation_seconds: float | None = None
        self.item_tokens = None
        if decoding == "item_aware":
            tokenizer, model = getattr(backend, "tokenizer", None), getattr(backend, "model", None)
            if tokenizer is None or model is None:
                raise ValueError(f"--decoding item_aware needs the hf backend (got {type(backend).__name__})")
            from modeling.item_decoding import ItemTokens
            from preprocess.common import catalog_items_of

            self.item_tokens = ItemTokens.from_catalog(tokenizer, catalog_items_of(catalog),
                                                       model.config.get_text_config().vocab_size)
        elif decoding != "greedy":
            raise ValueError(f"decoding must be greedy or item_aware, got {decoding!r}")

    def recommend(self, dataset) -> list[Recommendation]:
        t0 = time.time()
        texts = generate_completions(self.backend, dataset, self.prompt_column, item_tokens=self.item_tokens)
        self.generation_seconds = round(time.time() - t0, 3)
        return [Recommendation(ids, t) for ids, t in zip(texts_item_ids(texts, self.catalog, self.require_year), texts)]

    def close(self) -> None:
        """Release the backend's model (before the next checkpoint of a sweep is loaded)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


# ------------------------------------------------------------------------------------------------- static
class StaticPredictions:
    """Fixed recommendations, one per row; `missing` lists the rows that had none (scored as an empty list).

    A row given as text is parsed with `text_item_ids` (so re-scoring a predictions file follows the current
    matcher); a row given as ids is used as is."""

    def __init__(self, recommendations: Sequence[Recommendation], missing: Sequence[int] = (),
                 path: str | None = None, require_year: bool | None = None):
        self.recommendations = list(recommendations)
        self.missing = list(missing)
        self.path = path
        self.require_year = require_year

    @classmethod
    def from_texts(cls, texts: Sequence[str], catalog, require_year: bool | None = None) -> "StaticPredictions":
        require_year = _resolve_require_year(catalog, require_year)
        texts = list(texts)
        return cls([Recommendation(ids, t) for ids, t in zip(texts_item_ids(texts, catalog, require_year), texts)],
                   require_year=require_year)

    @classmethod
    def from_file(cls, path, catalog, n_rows: int, sample_ids: Sequence[str] | None = None,
                  rows: Sequence[int] | None = None, require_year: bool | None = None) -> "StaticPredictions":
        """Read a predictions file (`evaluation.evaluate.read_prediction_records`: `{"index", "completion"}` or
        `{"index", "item_ids"}` lines; `completion` wins when both are there) and keep `rows` (default: all), in
        that order. `index` is the row in the full split, so a file made on a subset scores the same rows; with
        `sample_ids` (the full split's) every line must carry the `sample_id` of its row."""
        records = read_prediction_records(path, n_rows, sample_ids=sample_ids, catalog=catalog)
        require_year = _resolve_require_year(catalog, require_year)
        rows = list(range(n_rows)) if rows is None else list(rows)
        if rows and not any(r in records for r in rows):
            raise PredictionsError(f"{path}: none of the {len(rows)} evaluated rows has a prediction (the file has "
                                   f"{len(records)} lines, for other rows: made with another --max_samples / --seed?)")
        texts = [records[r].text for r in rows if r in records and records[r].text is not None]
        parsed = iter(texts_item_ids(texts, catalog, require_year))
        recs, missing = [], []
        for position, row in enumerate(rows):
            record = records.get(row)
            if record is None:
                missing.append(position)
                recs.append(Recommendation([], ""))
            elif record.text is not None:
                recs.append(Recommendation(next(parsed), record.text))
            else:
                recs.append(Recommendation(list(record.item_ids)))
        return cls(recs, missing, str(path), require_year)

    def recommend(self, dataset) -> list[Recommendation]:
        n = len(_column(dataset, "groundtruth") or [])
        if len(self.recommendations) != n:
            raise ValueError(f"{len(self.recommendations)} predictions for {n} samples"
                             + (f" ({self.path})" if self.path else ""))
        return list(self.recommendations)


# ---------------------------------------------------------------------------------------------- baselines
def _seen_sets(dataset) -> list[set]:
    n = len(_column(dataset, "groundtruth") or [])
    seens = _column(dataset, "seen")
    return [set(seens[i] or []) if seens is not None else set() for i in range(n)]


class PopularityRecommender:
    """The `n_items` most popular training items (`evaluation.evaluate.popularity_ranking`) not in each
    sample's `seen`, as catalog ids. `as_text=True`: written as `Title (Year)` lines
    (`evaluation.evaluate.popularity_completions`) and parsed back, i.e. what a model writing exactly these
    titles would score (eval_test.py's `--baseline popularity`)."""

    def __init__(self, train_dataset, catalog, n_items: int = 20, as_text: bool = False,
                 require_year: bool | None = None):
        self.train_dataset, self.catalog, self.n_items, self.as_text = train_dataset, catalog, int(n_items), as_text
        self.ranking = [i for i in popularity_ranking(train_dataset) if i in catalog]
        if not self.ranking:
            raise ValueError("the training split has no ground-truth items to rank by popularity")
        self.require_year = _resolve_require_year(catalog, require_year) if as_text else None

    def recommend(self, dataset) -> list[Recommendation]:
        if self.as_text:
            from evaluation.evaluate import popularity_completions

            texts = popularity_completions(self.train_dataset, dataset, self.catalog, n_items=self.n_items)
            return StaticPredictions.from_texts(texts, self.catalog, self.require_year).recommend(dataset)
        out = []
        for seen in _seen_sets(dataset):
            picked: list[int | None] = []
            for item in self.ranking:
                if item not in seen:
                    picked.append(item)
                    if len(picked) >= self.n_items:
                        break
            out.append(Recommendation(picked))
        return out


class GroundtruthRecommender:
    """Oracle: each sample's ground-truth ids (distinct, in order, seen ones left out), cut to `n_items`; 1 on
    every metric by construction. `as_text=True`: written as `Title (Year)` lines
    (`evaluation.evaluate.groundtruth_completions`) and parsed back, a check of the whole text chain (parse +
    match + metrics) that a model's answer goes through (eval_test.py's `--baseline groundtruth`)."""

    def __init__(self, catalog, n_items: int = 20, as_text: bool = False, require_year: bool | None = None):
        self.catalog, self.n_items, self.as_text = catalog, int(n_items), as_text
        self.require_year = _resolve_require_year(catalog, require_year) if as_text else None

    def recommend(self, dataset) -> list[Recommendation]:
        if self.as_text:
            from evaluation.evaluate import groundtruth_completions

            texts = groundtruth_completions(dataset, self.catalog, n_items=self.n_items)
            return StaticPredictions.from_texts(texts, self.catalog, self.require_year).recommend(dataset)
        groundtruths = _column(dataset, "groundtruth") or []
        return [Recommendation([g for g in dict.fromkeys(gt or []) if g not in seen][: self.n_items])
                for gt, seen in zip(groundtruths, _seen_sets(dataset))]


# ---------------------------------------------------------------------------------------------------- scoring
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
    groundtruths = _column(dataset, "groundtruth")
    if groundtruths is None:
        raise KeyError("the data set has no 'groundtruth' column")
    if len(recommendations) != len(groundtruths):
        raise ValueError(f"{len(recommendations)} recommendations for {len(groundtruths)} samples")
    seens = _column(dataset, "seen") or [[] for _ in groundtruths]
    sample_ids = _column(dataset, "sample_id") or [str(i) for i in range(len(groundtruths))]
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
