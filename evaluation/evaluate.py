"""Evaluation: generate once per distinct prompt, score with `rewards` (the one matcher), write the outputs.

Any recommender (text generation, a ranker over the catalog, an agent) is evaluated through
`evaluation.recommenders.evaluate_recommender`; this module holds the pieces it is made of (splits and subsets,
generation, the predictions file format, baselines' rankings, outputs, table) and the text-only shortcut
`evaluate`. Scoring goes through `rewards.judge.judge` (parse + match + relevance status) and `rewards.metrics`
(Recall/NDCG/HR@K, catalog-hit and valid-item ratios) only: evaluation has no matcher of its own, so a title
that earns a reward during training is the same title that counts as a hit here.

Outputs of one evaluation (`write_outputs`):

* `metrics.json`: the mean metrics (`recall@K`, `ndcg@K`, `hr@K` for K in ks, `catalog_hit_ratio`,
  `valid_item_ratio`, `num_parsed`) over the rows that can be scored, `num_samples` (those rows), the rows left
  out (`num_unscorable` = `num_empty_groundtruth` + `num_groundtruth_in_seen`, `summarize_scores`), `protocol`,
  `split` and the provenance (model path or predictions file or baseline, dataset path, catalog, generation
  settings, missing predictions).
* `predictions.jsonl`: one JSON object per sample, in split order: `index` (row in the full split, also for a
  --max_samples subset), `sample_id`, `completion` (text; absent for id-only recommenders), then that sample's
  scores, `statuses` and `item_ids` (ranked catalog ids, null = not in the catalog). The file is valid input for
  `--predictions` (text rows are re-parsed, id-only rows scored by their ids).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.backends import GenerationBackend, clean_messages, prompt_key

DEFAULT_KS = (5, 10, 15, 20)
PROTOCOLS = ("packed", "strict")
DECODINGS = ("greedy", "item_aware")  # modeling/item_decoding.py
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}


class PredictionsError(ValueError):
    """A predictions file is unusable; the message names the file and, when known, the line."""


# ------------------------------------------------------------------------------------------------- helpers
def _column(dataset, name: str) -> list | None:
    """A column as a Python list, for a `datasets.Dataset` or a list of dicts; None when absent."""
    if isinstance(dataset, (list, tuple)):
        if dataset and name not in dataset[0]:
            return None
        return [row.get(name) for row in dataset]
    if name not in dataset.column_names:
        return None
    return list(dataset[name])


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """The headline metric names, in table order."""
    keys = [f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in ks]
    return keys + ["catalog_hit_ratio", "valid_item_ratio"]


def normalize_split(split: str) -> str:
    return SPLIT_ALIASES.get(split, split)


def default_require_year(catalog) -> bool:
    """Require `Title (Year)` lines unless the catalog has no years at all (`rewards.catalog.resolve_require_year`)."""
    from rewards.catalog import resolve_require_year

    return resolve_require_year(catalog)


DEFAULT_SEED = 42  # TrainingArguments' default seed: an eval script's subset = a training script's by default


def subset_rows(n_rows: int, max_samples: int | None, seed: int = DEFAULT_SEED) -> list[int] | None:
    """THE subset rule behind every script's --max_samples / --max_train_samples / --max_eval_samples: a seeded
    uniform random subset of `max_samples` rows, returned in split order (None = keep every row).

    The rows are the first `max_samples` of one seeded permutation of the split, so the same (N, seed) gives the
    same rows in every script and a smaller N's rows are among a larger N's. Random rather than the first N rows
    because the builders write rows grouped by user (MovieLens) or by thread: the first N rows are a few users.
    """
    if max_samples is None or max_samples >= n_rows:
        return None
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    import numpy as np

    order = np.random.default_rng(seed).permutation(n_rows)[:max_samples]
    return sorted(int(i) for i in order)


def take_subset(dataset, max_samples: int | None, seed: int = DEFAULT_SEED):
    """`(subset, rows)`: `dataset` cut by `subset_rows` (`rows[i]` = split row of subset row i)."""
    rows = subset_rows(len(dataset), max_samples, seed)
    if rows is None:
        return dataset, list(range(len(dataset)))
    subset = dataset.select(rows) if hasattr(dataset, "select") else [dataset[i] for i in rows]
    return subset, rows


@dataclass
class LoadedSplit:
    """One split of a processed data set, cut to the --max_samples subset."""

    dataset: Any  # the subset (a datasets.Dataset)
    catalog: Any  # rewards.catalog.Catalog
    rows: list[int]  # rows[i] = index in the full split of dataset row i (predictions' `index`)
    num_rows_in_split: int
    splits: Any  # every split of the data set (DatasetDict): popularity needs train
    split: str

    @property
    def full(self):
        return self.splits[self.split]


def load_split(dataset_path, split: str, catalog_path=None, max_samples: int | None = None,
               seed: int = DEFAULT_SEED) -> LoadedSplit:
    """One split of a processed data set (and its catalog), cut to `subset_rows(n, max_samples, seed)`."""
    from preprocess.common import load_processed

    dd, catalog = load_processed(dataset_path, catalog_path)
    split = normalize_split(split)
    if split not in dd:
        raise KeyError(f"{dataset_path}: no split {split!r} (splits: {', '.join(dd)})")
    dataset, rows = take_subset(dd[split], max_samples, seed)
    return LoadedSplit(dataset, catalog, rows, len(dd[split]), dd, split)


# ---------------------------------------------------------------------------------------------- generation
def generate_completions(backend: GenerationBackend, dataset, prompt_column: str = "prompt",
                         item_tokens=None) -> list[str]:
    """One greedy completion per row, generating ONCE per distinct prompt and fanning the text out.

    Several samples can share a prompt (Reddit-v2: answers from several users to one request are separate
    samples); under greedy decoding they would get the same text, so it is generated once. With ``item_tokens``
    (a ``modeling.item_decoding.ItemTokens``) decoding is item-aware: each row's ``seen`` items are banned, so rows
    are shared only when prompt AND seen list are the same.
    """
    prompts = _column(dataset, prompt_column)
    if prompts is None:
        raise KeyError(f"the data set has no {prompt_column!r} column")
    seen_rows = None
    if item_tokens is not None:
        seen_rows = _column(dataset, "seen")
        if seen_rows is None:
            raise KeyError("item-aware decoding needs the data set's `seen` column")
    slot_of: dict[str, int] = {}
    unique: list[list[dict]] = []
    unique_seen: list[list[int]] = []
    slots: list[int] = []
    for r, prompt in enumerate(prompts):
        key = prompt_key(prompt)
        if seen_rows is not None:
            key += "\x00" + ",".join(map(str, seen_rows[r] or []))
        if key not in slot_of:
            slot_of[key] = len(unique)
            unique.append(clean_messages(prompt))
            unique_seen.append(list(seen_rows[r] or []) if seen_rows is not None else [])
        slots.append(slot_of[key])
    if not unique:
        texts = []
    elif item_tokens is not None:
        texts = backend.generate(unique, seen=unique_seen, item_tokens=item_tokens)
    else:
        texts = backend.generate(unique)
    if len(texts) != len(unique):
        raise RuntimeError(f"the backend returned {len(texts)} completions for {len(unique)} prompts")
    return [texts[s] for s in slots]


def count_distinct_prompts(dataset, prompt_column: str = "prompt") -> int:
    prompts = _column(dataset, prompt_column) or []
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
    groundtruths = _column(dataset, "groundtruth")
    if groundtruths is None:
        raise KeyError("the data set has no 'groundtruth' column")
    seens = _column(dataset, "seen") or [[] for _ in groundtruths]
    sample_ids = _column(dataset, "sample_id") or [str(i) for i in range(len(groundtruths))]
    if len(completions) != len(groundtruths):
        raise ValueError(f"{len(completions)} completions for {len(groundtruths)} samples")
    ks = check_evaluation_options(ks, n_items)
    if require_year is None:
        require_year = default_require_year(catalog)

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


# ------------------------------------------------------------------------------------------------- outputs
def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_json(value):
    """Replace NaN / inf by None so the files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_outputs(output_dir, metrics: dict, per_sample: list[dict], completions: Sequence[str | None]) -> Path:
    """Write `predictions.jsonl` then `metrics.json` (last, atomically: its presence marks a finished run).

    `completions[i]` is row i's text, or None for a recommender that returns ids only (no `completion` field)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if len(per_sample) != len(completions):
        raise ValueError(f"{len(per_sample)} per-sample rows but {len(completions)} completions")
    lines = []
    for row, text in zip(per_sample, completions):
        record = {"index": row["index"], "sample_id": row.get("sample_id")}
        if text is not None:
            record["completion"] = text
        record.update({k: v for k, v in row.items() if k not in record})
        lines.append(json.dumps(_clean_json(record), ensure_ascii=False, default=_json_default))
    _atomic_write(output_dir / "predictions.jsonl", "".join(line + "\n" for line in lines))
    text = json.dumps(_clean_json(metrics), ensure_ascii=False, indent=2, default=_json_default) + "\n"
    _atomic_write(output_dir / "metrics.json", text)
    return output_dir / "metrics.json"


class Predictions(list):
    """`list[str]` of completions, one per row, with `missing` (row indices that had no prediction)."""

    def __init__(self, texts, missing: list[int], path: str):
        super().__init__(texts)
        self.missing = missing
        self.path = path


def _completion_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    # Also accept the chat form, [{"role": "assistant", "content": ...}] (TRL / our `completion` column).
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        contents = [m["content"] for m in value]
        if all(isinstance(c, str) for c in contents):
            return contents[-1]
    raise PredictionsError(f"{where}: field 'completion' must be a string (or a list of chat messages), "
                           f"got {type(value).__name__}")


@dataclass
class PredictionRecord:
    """One line of a predictions file: the completion text, or (when there is none) the ranked item ids."""

    text: str | None
    item_ids: list[int | None] | None
    line: int


def _item_ids(value, where: str, catalog) -> list[int | str | None]:
    if not isinstance(value, list):
        raise PredictionsError(f"{where}: field 'item_ids' must be a list of catalog ids (or null), "
                               f"got {type(value).__name__}")
    # string ids only where the catalog has them (a title -> id map such as Reddit-Movie's entity2id.json)
    id_types = (int, str) if getattr(catalog, "has_string_ids", False) else int
    for position, iid in enumerate(value):
        if iid is None:
            continue
        if isinstance(iid, bool) or not isinstance(iid, id_types):
            kind = "an int or a string id" if id_types != int else "an int"
            raise PredictionsError(f"{where}: item_ids[{position}] must be {kind} or null, got {iid!r}")
        if catalog is not None and iid not in catalog:
            raise PredictionsError(f"{where}: item_ids[{position}] = {iid!r} is not an id of the catalog "
                                   f"({len(catalog)} items); were these predictions made with another catalog?")
    return list(value)


def read_prediction_records(path, n_rows: int, sample_ids: Sequence[str] | None = None,
                            catalog=None) -> dict[int, PredictionRecord]:
    """`{index: PredictionRecord}` from a JSON Lines file of `{"index": int, "completion": str, ...}` or
    `{"index": int, "item_ids": [int | null, ...], ...}` (extra fields ignored; `completion` wins when both are
    there, so re-scoring text follows the current matcher).

    `index` is the row in the split (0-based, < n_rows). Blank lines are skipped; a file without any line is
    refused. Errors name the file and the
    line: not UTF-8, malformed JSON, not an object, missing field, bad type, index out of range, duplicate
    index, an item id not in `catalog` (when given), and, when `sample_ids` (the split's, in row order) is given, a
    line without `sample_id` or whose sample_id is not the one at its row: `index` alone cannot tell a file whose
    rows are shifted by one from an aligned one. `sample_ids=None` skips that check (the caller vouches).
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    records: dict[int, PredictionRecord] = {}
    without_sample_id: list[tuple[int, int]] = []  # (line, index)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}: line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PredictionsError(f"{where}: not valid UTF-8 (byte {err.start} of the line: {err.reason})") \
                    from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionsError(f"{where}: malformed JSON (column {err.colno}: {err.msg})") from None
            if not isinstance(record, dict):
                raise PredictionsError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if "index" not in record:
                raise PredictionsError(f"{where}: missing field 'index'")
            has_text = record.get("completion") is not None
            if not has_text and record.get("item_ids") is None:
                raise PredictionsError(f"{where}: missing field 'completion' (or 'item_ids')")
            index = record["index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise PredictionsError(f"{where}: field 'index' must be an int, got {index!r}")
            if not 0 <= index < n_rows:
                raise PredictionsError(f"{where}: index {index} out of range (the split has {n_rows} rows)")
            if index in records:
                raise PredictionsError(f"{where}: duplicate index {index} (first on line {records[index].line})")
            if sample_ids is not None and record.get("sample_id") is None:
                without_sample_id.append((lineno, index))
            elif sample_ids is not None:
                if str(record["sample_id"]) != str(sample_ids[index]):
                    raise PredictionsError(
                        f"{where}: sample_id {record['sample_id']!r} does not match row {index} of the split "
                        f"({sample_ids[index]!r}); were these predictions made on another split or data set?"
                    )
            text = _completion_text(record["completion"], where) if has_text else None
            ids = _item_ids(record["item_ids"], where, catalog) if not has_text else None
            records[index] = PredictionRecord(text, ids, lineno)
    if without_sample_id:  # checked after every line, so a malformed line is reported first
        # Without it a file whose rows are shifted by one reads as valid and scores near zero, silently.
        lineno, index = without_sample_id[0]
        raise PredictionsError(
            f"{path}: line {lineno}: missing field 'sample_id' ({len(without_sample_id)} of {len(records)} lines "
            f"lack it): each line needs the sample_id of its row (index {index}: {sample_ids[index]!r}) so that a "
            "file made on another split, data set or row order is refused instead of scored (eval_test.py's "
            "predictions.jsonl has it)")
    if not records:  # scoring it would report zeros as if a model had answered nothing right
        size = path.stat().st_size
        raise PredictionsError(f"{path}: no prediction lines ({'an empty file' if size == 0 else 'only blank lines'}"
                               "); nothing to score: write one JSON object per row (eval_test.py's predictions.jsonl "
                               "format)")
    return records


def read_predictions(path, n_rows: int, sample_ids: Sequence[str] | None = None) -> Predictions:
    """Completions (text) from a predictions file (`read_prediction_records`; every line needs a `completion`).
    Rows with no prediction get "" (scored as an empty completion, i.e. zero) and are listed in `.missing`.
    Files with `item_ids` only are read by `evaluation.recommenders.StaticPredictions.from_file`."""
    records = read_prediction_records(path, n_rows, sample_ids)
    for index, record in records.items():
        if record.text is None:
            raise PredictionsError(f"{path}: line {record.line}: missing field 'completion' (this reader needs "
                                   "text; StaticPredictions.from_file also scores item_ids)")
    texts = [records[i].text if i in records else None for i in range(n_rows)]
    missing = [i for i, t in enumerate(texts) if t is None]
    return Predictions([t if t is not None else "" for t in texts], missing, str(path))


# ------------------------------------------------------------------------------------------------ baselines
def popularity_ranking(train_dataset) -> list[int]:
    """Catalog ids by training popularity (most frequent first; ties by id): each train row counts its
    `target` when it has one, else every id of its `groundtruth`."""
    counts: Counter = Counter()
    targets = _column(train_dataset, "target")
    groundtruths = _column(train_dataset, "groundtruth") or []
    for i, gt in enumerate(groundtruths):
        target = targets[i] if targets is not None else None
        if target is not None:
            counts[target] += 1
        else:
            counts.update(gt or [])
    return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def popularity_completions(train_dataset, dataset, catalog, n_items: int = 20) -> list[str]:
    """The `n_items` most popular training items not in each sample's `seen`, one `Title (Year)` per line."""
    ranking = [i for i in popularity_ranking(train_dataset) if i in catalog]
    if not ranking:
        raise ValueError("the training split has no ground-truth items to rank by popularity")
    seens = _column(dataset, "seen")
    n = len(_column(dataset, "groundtruth") or [])
    out = []
    for i in range(n):
        seen = set(seens[i] or []) if seens is not None else set()
        picked = []
        for item in ranking:
            if item not in seen:
                picked.append(catalog.display(item))
                if len(picked) >= n_items:
                    break
        out.append("\n".join(picked))
    return out


def groundtruth_completions(dataset, catalog, n_items: int = 20) -> list[str]:
    """Oracle: each sample's ground-truth items (distinct, seen ones left out), one `Title (Year)` per line."""
    out = []
    seens = _column(dataset, "seen")
    for i, gt in enumerate(_column(dataset, "groundtruth") or []):
        seen = set(seens[i] or []) if seens is not None else set()
        ids = [g for g in dict.fromkeys(gt or []) if g not in seen][:n_items]
        out.append("\n".join(catalog.display(g) for g in ids))
    return out


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

    A text-only shortcut of `evaluation.recommenders.evaluate_recommender` (TextRecommender / StaticPredictions)."""
    from evaluation.recommenders import StaticPredictions, TextRecommender, evaluate_recommender

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


# ----------------------------------------------------------------------------------------- shared CLI options
def add_evaluation_arguments(parser) -> None:
    """Scoring and generation options of eval_test.py and eval_val.py (their data options, shared with the
    training scripts, come from `trainers.script_args.add_common_script_arguments`)."""
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--protocol", choices=PROTOCOLS, default="packed",
                         help="packed (default; the released Rank-GRPO evaluation: seen and out-of-catalog items are "
                              "removed and the rest packed upward) or strict (positions as generated)")
    scoring.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="cut-offs K (default 5 10 15 20)")

    gen = parser.add_argument_group("generation (greedy)")
    gen.add_argument("--backend", choices=("hf", "vllm", "auto"), default="auto",
                     help="auto = vllm when importable and CUDA is available, else hf (transformers)")
    gen.add_argument("--decoding", choices=DECODINGS, default="greedy",
                     help="greedy, or item_aware: greedy that never emits an item already in the list or in the "
                          "row's seen items (modeling/item_decoding.py; hf backend, one token per title). Written "
                          "to its own <tag>_item_aware folder, beside the plain greedy one")
    gen.add_argument("--max_new_tokens", type=int, default=512)
    gen.add_argument("--batch_size", type=int, default=16, help="hf backend: prompts per generate call")
    gen.add_argument("--max_prompt_length", type=int, default=None,
                     help="cut the history (oldest first, never the instruction) so the templated prompt has at most this "
                          "many tokens")
    gen.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    gen.add_argument("--trust_remote_code", action="store_true")
    gen.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm backend")
    gen.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vllm backend")
    gen.add_argument("--max_model_len", type=int, default=None, help="vllm backend")
    gen.add_argument("--no_progress", action="store_true", help="no progress bars")


def backend_options(args) -> dict:
    """make_backend options from parsed add_evaluation_arguments args."""
    return dict(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code or None,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, show_progress=not args.no_progress,
    )


def output_tag(split: str, protocol: str, decoding: str = "greedy") -> str:
    """Folder / file stem of an evaluation: `eval_<split>` (packed) or `eval_<split>_<protocol>`, plus
    `_item_aware` for that decoding (so its numbers sit beside plain greedy's, never in their place)."""
    split = normalize_split(split)
    tag = f"eval_{split}" if protocol == "packed" else f"eval_{split}_{protocol}"
    return tag if decoding == "greedy" else f"{tag}_{decoding}"
