"""Rows in, predictions out: the split and its --max_samples subset, and the predictions file (read and written).

* `load_split` / `take_subset` / `subset_rows`: THE subset rule of every script (--max_samples, --max_train_samples,
  --max_eval_samples); `target_only`: the next-item protocol (groundtruth = [target]); `column`: a column of a
  `datasets.Dataset` or a list of dicts.
* `write_outputs`: `predictions.jsonl` + `metrics.json` of one evaluation; `read_prediction_records`: a predictions
  file back (text or ranked ids per row; `evaluation.recommenders.StaticPredictions.from_file` scores it), errors
  naming file and line (`PredictionsError`).

`predictions.jsonl`: one JSON object per sample, in split order: `index` (row in the full split, also for a
--max_samples subset), `sample_id`, `completion` (text; absent for id-only recommenders), then that sample's
scores, `statuses` and `item_ids` (ranked catalog ids, null = not in the catalog). The file is valid input for
`--predictions` (text rows are re-parsed, id-only rows scored by their ids).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "validation"}


class PredictionsError(ValueError):
    """A predictions file is unusable; the message names the file and, when known, the line."""


def column(dataset, name: str) -> list | None:
    """A column as a Python list, for a `datasets.Dataset` or a list of dicts; None when absent."""
    if isinstance(dataset, (list, tuple)):
        if dataset and name not in dataset[0]:
            return None
        return [row.get(name) for row in dataset]
    if name not in dataset.column_names:
        return None
    return list(dataset[name])


def normalize_split(split: str) -> str:
    return SPLIT_ALIASES.get(split, split)


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
    from preprocess.contract import load_processed

    dd, catalog = load_processed(dataset_path, catalog_path)
    split = normalize_split(split)
    if split not in dd:
        raise KeyError(f"{dataset_path}: no split {split!r} (splits: {', '.join(dd)})")
    dataset, rows = take_subset(dd[split], max_samples, seed)
    return LoadedSplit(dataset, catalog, rows, len(dd[split]), dd, split)


def target_only(dataset) -> list[dict]:
    """Rows with ``groundtruth = [target]``: the next-item protocol (DeepRec and RecPO score the next item only)."""
    rows = [dict(r) for r in dataset]
    for r in rows:
        if r.get("target") is None:
            raise ValueError(f"sample {r.get('sample_id')!r}: no `target`")
        r["groundtruth"] = [r["target"]]
    return rows


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
