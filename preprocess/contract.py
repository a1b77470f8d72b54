"""The processed-data contract: what a processed data set is, how it is validated, written and read back.

A processed data set is a folder::

    <output_dir>/train/ validation/ test/   HF ``Dataset.save_to_disk`` folders, one record per sample
    <output_dir>/catalog.json               JSON list of catalog items {"id", "title", "year", ...}
    <output_dir>/summary.json               the builder's summary (counts per split, skips with reasons)

Every record has the fields of ``RECORD_FIELDS`` and may have those of ``OPTIONAL_RECORD_FIELDS``.
``save_processed`` validates each record against the contract before anything is written; ``load_processed``
reads a folder back with its ``Catalog``. The helpers the builders share to make records (prompts, splits, input
reading, skip counting) are in ``preprocess.common``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
import pyarrow as pa
from datasets import Features, List, Value
from datasets.table import InMemoryTable

SPLITS = ("train", "validation", "test")

# --------------------------------------------------------------------------------------------------------------
# Errors and the output folder
# --------------------------------------------------------------------------------------------------------------


class DataError(ValueError):
    """Bad input data. The message names the file and, when known, the (1-based) line, the record and the field.

    >>> str(DataError("data/train.jsonl", line=12, field="messages", reason="missing"))
    "data/train.jsonl, line 12, field 'messages': missing"
    """

    def __init__(self, path: Any, line: int | None = None, field: str | None = None, reason: str = "",
                 record: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        self.record = record
        where = [self.path]
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(str(record))
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(", ".join(where) + (f": {reason}" if reason else ""))

    def __reduce__(self):  # keep the exception picklable (multiprocessing, pytest-xdist)
        return (_make_data_error, (self.path, self.line, self.field, self.reason, self.record))


def _make_data_error(path, line, field, reason, record):
    return DataError(path, line=line, field=field, reason=reason, record=record)



def check_output_dir(output_dir: str | os.PathLike, option: str = "--output_dir") -> Path:
    """Refuse an output folder that cannot be created: the path is a file, or lies under one, or under a folder
    this user cannot write. Builders and every root script call it before reading any input, so a long build,
    generation or training never fails at the end. ``option``: the flag named in the error."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise DataError(path, reason=f"{option} is a file, not a folder")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path and not ancestor.is_dir():
        raise DataError(path, reason=f"{option} is under {ancestor}, which is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(path, reason=f"{option}: cannot write in {ancestor} (permission denied)")
    return path


def format_counts(title: str, counts: Mapping[str, Any]) -> str:
    """``title:`` and one aligned ``key  count`` line per entry (skip reasons, summary counters)."""
    if not counts:
        return f"{title}: none"
    width = max(len(str(k)) for k in counts)
    lines = [f"{title}:"]
    lines += [f"  {str(k):<{width}}  {v:>9,}" if _is_int(v) else f"  {str(k):<{width}}  {v}"
              for k, v in counts.items()]
    return "\n".join(lines)



# --------------------------------------------------------------------------------------------------------------
# The record contract, writing and loading
# --------------------------------------------------------------------------------------------------------------

_MESSAGE = {"role": Value("string"), "content": Value("string")}

#: Arrow schema of every split (explicit, so that all-null columns and empty splits keep their types).
FEATURES = Features({
    "sample_id": Value("string"),
    "prompt": List(_MESSAGE),
    "completion": List(_MESSAGE),
    "groundtruth": List(Value("int64")),
    "seen": List(Value("int64")),
    "history": List(Value("int64")),
    "target": Value("int64"),
    "timestamp": Value("int64"),
})
RECORD_FIELDS = tuple(FEATURES)

#: Fields a record MAY carry (sequential data sets whose source has them; RecPO's user prompt shows them). Each is
#: null or one number per ``history`` item. A data set writes an optional column to every split when any of its
#: records has the field (records without it get null there).
OPTIONAL_FEATURES = Features({
    "history_ratings": List(Value("float64")),  # the user's rating of each history item
    "history_time_deltas": List(Value("float64")),  # seconds from each history item to the target's time, >= 0
})
OPTIONAL_RECORD_FIELDS = tuple(OPTIONAL_FEATURES)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_finite_number(x: Any) -> bool:
    """An int or float (not bool), not nan / inf."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_messages(value: Any, fail, field: str, *, last_role: str | None, exactly_one: bool = False) -> None:
    if not isinstance(value, list) or not value:
        fail(field, f"must be a non-empty list of {{'role', 'content'}} messages, got {type(value).__name__}")
    if exactly_one and len(value) != 1:
        fail(field, f"must hold exactly one message, got {len(value)}")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            keys = sorted(msg) if isinstance(msg, dict) else type(msg).__name__
            fail(field, f"message {i} must be a dict with exactly the keys 'role' and 'content', got {keys}")
        if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
            fail(field, f"message {i}: 'role' and 'content' must be strings")
    if last_role is not None and value[-1]["role"] != last_role:
        fail(field, f"the last message must have role {last_role!r}, got {value[-1]['role']!r}")


def validate_catalog_items(catalog_items: Sequence[Mapping], source: str = "catalog") -> set[int]:
    """Check catalog items against the contract; returns the set of ids."""
    if not catalog_items:
        raise DataError(source, reason="the catalog is empty")
    ids: set[int] = set()
    for i, item in enumerate(catalog_items):
        def fail(field, reason, _i=i):
            raise DataError(source, record=f"item {_i}", field=field, reason=reason)
        if not isinstance(item, Mapping):
            fail(None, f"must be a dict, got {type(item).__name__}")
        if not _is_int(item.get("id")):
            fail("id", f"must be an int, got {item.get('id')!r}")
        if item["id"] in ids:
            fail("id", f"duplicate id {item['id']}")
        ids.add(item["id"])
        if not isinstance(item.get("title"), str) or not item["title"].strip():
            fail("title", f"must be a non-empty str, got {item.get('title')!r}")
        if "year" not in item or not (item["year"] is None or _is_int(item["year"])):
            fail("year", f"must be an int or null, got {item.get('year')!r}")
    return ids


def validate_record(record: Mapping, split: str, catalog_ids: set[int]) -> None:
    """Raise DataError (naming split, sample_id and field) unless ``record`` follows the contract."""
    sid = record.get("sample_id") if isinstance(record, Mapping) else None

    def fail(field, reason):
        raise DataError(f"split {split!r}", record=f"sample_id {sid!r}", field=field, reason=reason)

    if not isinstance(record, Mapping):
        fail(None, f"a record must be a dict, got {type(record).__name__}")
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        fail(missing[0], "missing")
    extra = sorted(set(record) - set(RECORD_FIELDS) - set(OPTIONAL_RECORD_FIELDS))
    if extra:
        fail(extra[0], f"not part of the record contract (fields: {', '.join(RECORD_FIELDS)}; optional: "
                       f"{', '.join(OPTIONAL_RECORD_FIELDS)})")
    if not isinstance(sid, str) or not sid:
        fail("sample_id", f"must be a non-empty str, got {sid!r}")
    _check_messages(record["prompt"], fail, "prompt", last_role="user")
    _check_messages(record["completion"], fail, "completion", last_role="assistant", exactly_one=True)
    for field in ("groundtruth", "seen", "history"):
        value = record[field]
        if not isinstance(value, list) or set(map(type, value)) - {int}:  # (C-speed; bool is not int here)
            fail(field, f"must be a list of int catalog ids, got {value!r:.80}")
        if not catalog_ids.issuperset(value):
            fail(field, f"ids not in the catalog: {[x for x in value if x not in catalog_ids][:5]}")
    if not record["groundtruth"]:
        fail("groundtruth", "must hold at least one id")
    target = record["target"]
    if target is not None and not _is_int(target):
        fail("target", f"must be an int or null, got {target!r}")
    if target is not None and target not in catalog_ids:
        fail("target", f"id {target} not in the catalog")
    ts = record["timestamp"]
    if ts is not None and not _is_int(ts):
        fail("timestamp", f"must be an int (unix seconds) or null, got {ts!r}")
    for field in OPTIONAL_RECORD_FIELDS:
        values = record.get(field)
        if values is None:
            continue
        if not isinstance(values, list) or not all(is_finite_number(v) for v in values):
            fail(field, f"must be null or a list of finite numbers, got {values!r:.80}")
        if len(values) != len(record["history"]):
            fail(field, f"has {len(values)} values for {len(record['history'])} history items")
        if field == "history_time_deltas" and any(v < 0 for v in values):
            fail(field, f"a history item cannot be later than the target (deltas {values!r:.80})")


def _split_counts(records: Sequence[Mapping]) -> dict[str, int]:
    items: set[int] = set()
    for r in records:
        items.update(r["groundtruth"])
        items.update(r["history"])
    return {"samples": len(records), "items": len(items)}


def format_summary(summary: Mapping) -> str:
    """A readable table of a builder summary (the same dict that goes to summary.json)."""
    out = [f"== {summary.get('dataset', '?')}  ->  {summary.get('output_dir', '?')}"]
    splits = summary.get("splits", {})
    if splits:
        out.append(f"{'split':<12}{'samples':>10}{'users':>10}{'items':>10}")
        for name, c in splits.items():
            users = c.get("users")
            out.append(f"{name:<12}{c.get('samples', 0):>10,}{(f'{users:,}' if users is not None else '-'):>10}"
                       f"{c.get('items', 0):>10,}")
        if summary.get("users_note"):
            out.append(f"(users = {summary['users_note']}; items = distinct groundtruth/history ids)")
    out.append(f"catalog items: {summary.get('catalog_items', '?'):,}" if isinstance(summary.get("catalog_items"), int)
               else "catalog items: ?")
    shown = {"dataset", "output_dir", "splits", "users_note", "catalog_items", "skipped"}
    for key, value in summary.items():
        if key in shown or not isinstance(value, dict) or not value:
            continue
        if all(isinstance(v, (int, float, str, list, type(None))) for v in value.values()):
            out.append(format_counts(key, value))
    out.append(format_counts("skipped (reason: count)", summary.get("skipped", {})))
    return "\n".join(out)


def save_processed(output_dir: str | os.PathLike, splits: Mapping[str, Sequence[Mapping]],
                   catalog_items: Sequence[Mapping], summary: Mapping, *, overwrite: bool = True,
                   quiet: bool = False, progress: bool = True) -> dict:
    """Validate and write a processed data set; returns the summary written to summary.json.

    ``summary`` is the builder's summary; this function adds ``splits[<name>]["samples"/"items"]`` (a builder may
    give ``users`` per split), ``catalog_items`` and ``output_dir``. Empty splits are not written (noted in
    ``summary["stats"]``); a data set with no sample at all, or an ``output_dir`` that is (or lies under) a file, is
refused. Every record is validated first, so a failed build leaves nothing half-written.
    """
    output_dir = check_output_dir(output_dir)
    if not any(splits.values()):
        raise DataError(output_dir, reason=f"no sample in any split ({', '.join(splits) or 'none given'}); nothing "
                                           "written")
    catalog_ids = validate_catalog_items(catalog_items, source=f"{output_dir / 'catalog.json'} (catalog to write)")
    seen_ids: set[str] = set()
    for name, records in splits.items():
        for rec in records:
            validate_record(rec, name, catalog_ids)
            if rec["sample_id"] in seen_ids:
                raise DataError(f"split {name!r}", record=f"sample_id {rec['sample_id']!r}", field="sample_id",
                                reason="duplicate sample_id (must be unique within the data set)")
            seen_ids.add(rec["sample_id"])

    out = json.loads(json.dumps(dict(summary)))  # deep copy, JSON-safe
    out_splits = out.setdefault("splits", {})
    for name, records in splits.items():
        entry = out_splits.setdefault(name, {})
        entry.update(_split_counts(records))
    out["splits"] = {k: out_splits[k] for k in [*[s for s in SPLITS if s in out_splits],
                                               *sorted(set(out_splits) - set(SPLITS))]}
    out["catalog_items"] = len(catalog_items)
    out["output_dir"] = str(output_dir)
    empty = [name for name, records in splits.items() if not records]
    if empty:
        out.setdefault("stats", {})["empty splits (not written)"] = ", ".join(empty)

    if output_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists (pass overwrite=True)")
        for name in SPLITS:
            if (output_dir / name).is_dir():
                shutil.rmtree(output_dir / name)
    output_dir.mkdir(parents=True, exist_ok=True)
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    if not progress and bars_were_on:
        datasets.disable_progress_bars()
    try:
        optional = [f for f in OPTIONAL_RECORD_FIELDS if any(f in r for rs in splits.values() for r in rs)]
        for name, records in splits.items():
            if not records:
                continue
            _to_dataset(records, optional).save_to_disk(str(output_dir / name))
    finally:
        if not progress and bars_were_on:
            datasets.enable_progress_bars()
    with open(output_dir / "catalog.json", "w", encoding="utf-8") as fh:  # one item per line
        fh.write("[\n" + ",\n".join(json.dumps(_ordered_item(it), ensure_ascii=False) for it in catalog_items)
                 + "\n]\n")
    with open(output_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    if not quiet:
        print(format_summary(out), flush=True)
    return out


def _to_dataset(records: Sequence[Mapping], optional: Sequence[str] = ()) -> datasets.Dataset:
    """Validated records -> Dataset with the contract's FEATURES and the ``optional`` fields named (null where a
    record lacks one); arrow arrays are built directly (fast)."""
    features = Features({**FEATURES, **{f: OPTIONAL_FEATURES[f] for f in optional}})
    schema = features.arrow_schema
    table = pa.table({f: pa.array([r.get(f) for r in records], type=schema.field(f).type) for f in features},
                     schema=schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _ordered_item(item: Mapping) -> dict:
    head = {k: item[k] for k in ("id", "title", "year") if k in item}
    return {**head, **{k: v for k, v in item.items() if k not in head}}


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").exists() and (path / "state.json").exists()




def load_processed(dataset_path: str | os.PathLike, catalog_path: str | os.PathLike | None = None):
    """Load ``(datasets.DatasetDict, Catalog)`` from a processed folder.

    Splits are the sub-folders written by ``save_processed`` (train / validation / test first, then any other).
    The catalog is ``<dataset_path>/catalog.json``, unless ``catalog_path`` is given: then that file is loaded
    with ``rewards.catalog.load_catalog`` and must describe the same items (the same ids, each with the same
    normalised title and, where both give one, the same year) as the data set's catalog.json, so that ids in
    the records keep their meaning.
    """
    from rewards.catalog import load_catalog

    root = Path(dataset_path)
    if not root.is_dir():
        raise FileNotFoundError(f"processed data set not found: {root} (build it with python -m preprocess.<name>)")
    names = [p.name for p in sorted(root.iterdir()) if _is_saved_dataset(p)]
    names = [s for s in SPLITS if s in names] + [n for n in names if n not in SPLITS]
    if not names:
        raise FileNotFoundError(f"{root}: no split folders (expected train/ validation/ test/ written by "
                                "save_to_disk)")
    try:
        dd = datasets.DatasetDict({n: datasets.load_from_disk(str(root / n)) for n in names})
    except Exception as err:  # noqa: BLE001 - re-raise with the path
        raise DataError(root, reason=f"cannot load split folders: {err}") from err
    missing = [f for f in RECORD_FIELDS if f not in dd[names[0]].column_names]
    if missing:
        raise DataError(root / names[0], field=missing[0], reason="missing column (not a processed data set?)")

    own = root / "catalog.json"
    if catalog_path is None:
        if not own.exists():
            raise FileNotFoundError(f"{own} not found (pass catalog_path=...)")
        catalog = load_catalog(str(own))
    else:
        catalog_path = Path(catalog_path)
        if not catalog_path.exists():
            raise FileNotFoundError(f"catalog not found: {catalog_path}")
        catalog = load_catalog(str(catalog_path))
        if own.exists():
            _check_same_catalog(load_catalog(str(own)), own, catalog, catalog_path)
    catalog_ids = {it["id"] for it in catalog_items_of(catalog)}
    seen_ids: dict[str, str] = {}
    for name in names:
        validate_loaded_split(dd[name], name, catalog_ids, root / name, seen_ids)
    return dd, catalog


def _first_bad_row(table: pa.Table, catalog_ids: set[int]) -> int | None:
    """The first row of a split table that breaks a rule a score depends on, found with arrow compute (fast on
    a few 100k rows): a null/empty sample_id, groundtruth null or empty, a null or non-catalog id in
    groundtruth/seen/history/target, a prompt with no message, a completion that is not one message."""
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    sid = table.column("sample_id")
    bad |= pc.fill_null(pc.equal(pc.utf8_length(sid), 0), True).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(table.column("groundtruth"))
    bad |= pc.fill_null(pc.equal(lengths, 0), True).to_numpy(zero_copy_only=False)
    value_set = pa.array(sorted(catalog_ids), type=pa.int64())
    for field in ("groundtruth", "seen", "history"):
        column = table.column(field).combine_chunks()
        values = pc.list_flatten(column)
        if len(values):
            outside = pc.invert(pc.fill_null(pc.is_in(values, value_set=value_set), False)).to_numpy(
                zero_copy_only=False)
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            bad[parents[outside]] = True
    target = table.column("target")
    outside = pc.and_(pc.is_valid(target), pc.invert(pc.is_in(target, value_set=value_set)))
    bad |= pc.fill_null(outside, False).to_numpy(zero_copy_only=False)
    bad |= pc.fill_null(pc.less(pc.list_value_length(table.column("prompt")), 1), True).to_numpy(
        zero_copy_only=False)
    bad |= pc.fill_null(pc.not_equal(pc.list_value_length(table.column("completion")), 1), True).to_numpy(
        zero_copy_only=False)
    for field, role in (("prompt", "user"), ("completion", "assistant")):  # the last message's role
        column = table.column(field).combine_chunks()
        roles = pc.struct_field(column.flatten(), "role")
        ends = column.offsets.to_numpy()[1:] - 1
        ok = ends >= column.offsets.to_numpy()[:-1]
        if len(roles) and ok.any():
            last = pc.take(roles, pa.array(np.where(ok, ends, 0)))
            wrong = pc.fill_null(pc.not_equal(last, role), True).to_numpy(zero_copy_only=False)
            bad |= ok & wrong
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def validate_loaded_split(dataset, split: str, catalog_ids: set[int], source: Path,
                          seen_ids: dict[str, str] | None = None) -> None:
    """Check the records of a loaded split against the contract (``save_processed`` checked them when it wrote
    them, but a folder can be edited, or written by another tool): the rules a score depends on are checked on
    every row with arrow compute, and the first row that breaks one is reported by ``validate_record`` (the
    message of the contract, naming the split folder, the row, the sample_id and the field). Sample ids must be
    unique across splits (``seen_ids``: sample_id -> split, shared by the calls of one data set)."""
    table = dataset.data.table if hasattr(dataset, "data") else dataset
    if table.num_rows == 0:
        return
    row = _first_bad_row(table, catalog_ids)
    if row is not None:
        record = dataset[row]
        try:
            validate_record(record, split, catalog_ids)
        except DataError as err:
            raise DataError(source, record=f"row {row}, sample_id {record.get('sample_id')!r}",
                            field=err.field, reason=err.reason) from None
        raise DataError(source, record=f"row {row}, sample_id {record.get('sample_id')!r}",
                        reason="breaks the record contract (null value in a list column?)")
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        counts = Counter(ids)
        dup = next(i for i, x in enumerate(ids) if counts[x] > 1)
        raise DataError(source, record=f"row {dup}, sample_id {ids[dup]!r}", field="sample_id",
                        reason=f"duplicate sample_id ({counts[ids[dup]]} rows of the split have it; sample ids must "
                               "be unique)")
    if seen_ids is not None:
        clash = next((i for i, x in enumerate(ids) if x in seen_ids), None)
        if clash is not None:
            raise DataError(source, record=f"row {clash}, sample_id {ids[clash]!r}", field="sample_id",
                            reason=f"duplicate sample_id (also in split {seen_ids[ids[clash]]!r}; sample ids must "
                                   "be unique within the data set)")
        seen_ids.update(dict.fromkeys(ids, split))


def catalog_items_of(catalog) -> list[dict]:
    """The catalog items of a ``Catalog`` as a list of dicts (at least id, title, year)."""
    items = getattr(catalog, "items", None)
    if callable(items):
        items = items()
    if items is None:
        raise TypeError(f"cannot list the items of {type(catalog).__name__}")
    out = []
    for it in items:
        if isinstance(it, Mapping):
            out.append(dict(it))
        else:
            d = {k: getattr(it, k) for k in ("id", "title", "year")}
            for k in ("raw_title", "text", "genres", "popularity"):
                if getattr(it, k, None) is not None:
                    d[k] = getattr(it, k)
            out.append(d)
    return out


def catalog_fingerprint(catalog) -> str:
    """sha256 (hex) of a catalog's content: every ``(id, normalised title, year)``, in id order.

    Two catalogs with the same fingerprint give every id the same item, so records written against one keep their
    meaning with the other. Titles are compared normalised (``rewards.catalog.normalize_title``: the same film
    written as in Rank-GRPO's pickle or in a processed catalog.json), years exactly."""
    return hashlib.sha256(_catalog_content_bytes(_catalog_content(catalog))).hexdigest()


def _catalog_content(catalog) -> dict[int, tuple[str, int | None]]:
    from rewards.titles import normalize_title

    return {it["id"]: (normalize_title(it["title"]), it.get("year")) for it in catalog_items_of(catalog)}


def _catalog_content_bytes(content: Mapping[int, tuple[str, int | None]]) -> bytes:
    return json.dumps(sorted([i, t, y] for i, (t, y) in content.items()), ensure_ascii=False).encode("utf-8")


def _check_same_catalog(own, own_path: Path, other, other_path: Path) -> None:
    """DataError (naming both files and the first differing item) unless ``other`` has the content of ``own``:
    the same ids, each with the same normalised title AND the same year where both give one (a catalog with every
    year shifted by +3 used to pass, and every year-checked match then missed: popularity recall 0.054 -> 0)."""
    a, b = _catalog_content(own), _catalog_content(other)
    if a == b:  # the same content, i.e. the same catalog_fingerprint
        return
    # A year missing on either side is unknown, not different: an external catalog may give a year the data set's
    # catalog lacks (or the reverse) and ids keep their meaning; two given years must be equal.
    why = "ids would not mean the same items"
    if len(a) != len(b):
        raise DataError(other_path, reason=f"catalog has {len(b)} items but the data set's {own_path} has {len(a)}; "
                                           f"{why}")
    only_own = sorted(set(a) - set(b))
    if only_own:
        raise DataError(other_path, record=f"id {only_own[0]}",
                        reason=f"missing here but in the data set's {own_path} ({len(only_own)} ids differ); {why}")
    diff = sorted(i for i in a if a[i][0] != b[i][0] or None not in (a[i][1], b[i][1]) and a[i][1] != b[i][1])
    if not diff:
        return
    i = diff[0]
    field = "title" if a[i][0] != b[i][0] else "year"
    value = {"title": 0, "year": 1}[field]
    raise DataError(other_path, record=f"id {i}", field=field,
                    reason=f"{b[i][value]!r} here but {a[i][value]!r} in the data set's {own_path} ({len(diff)} "
                           f"ids differ in title or year); {why}")
