"""Reddit-v2 (as released for Rank-GRPO) -> processed data set.

Usage::

    python -m preprocess.reddit_v2 --raw_dir ../shared/data/reddit_v2_rankgrpo --output_dir processed_datasets/reddit_v2
    python -m preprocess.reddit_v2 --raw_dir data/reddit_v2_hf --catalog_path data/gt_catalog.pkl --output_dir ...

Input (``--raw_dir``, a folder or one file):

* JSON files in the release's record format: ``{"samples": [...]}`` (or a top-level list), or JSON Lines
  (``*.jsonl``, one sample per line). Each sample has ``prompt`` (a chat message list, or its Python-literal
  string form, parsed with ``ast.literal_eval``), ``completion`` (same forms; optional), ``seen_titles`` and
  ``groundtruth_with_release_year`` (``[[title, year-as-str], ...]``); ``sample_id`` is optional.
* HF data set folders written by ``save_to_disk`` (a ``DatasetDict`` with train/validation/test-like splits, or
  single ``Dataset`` folders), with the same columns.

Catalog: ``--catalog_path`` (default ``<raw_dir>/gt_catalog.pkl``), Rank-GRPO's list of (title, year) tuples;
ids = list index; a bad year becomes null (counted). Ground truth is resolved with ``Catalog.match`` (a sample is
kept when at least one ground-truth pair resolves; unresolved pairs are counted); ``seen`` is the union of
``Catalog.ids_for_title`` over the seen titles (a ``Title (Year)`` seen title uses ``match``). ``history`` is
``[]``, ``target`` and ``timestamp`` are null.

Split (``--split``): ``name`` uses the source names (a file or HF split whose name says train / val(idation) /
dev / test); ``hash`` assigns 80/10/10 by a sha256 of the conversation text, so that several users' answers to one
request always land in the same split; ``auto`` (default) uses names when there are several sources and all
names say their split, else the hash.

Completion (``--completion``): ``source`` (default) keeps the release's SFT target; ``groundtruth`` writes the
resolved ground-truth titles padded with the most frequent train ground-truth items not seen (yearless
ground-truth items and those beyond ``--n_items`` stay in the ground truth but are not written; both counted). A sample without a
completion falls back to ``groundtruth`` (counted). Fields outside the format (``assigned_trait``, ``gpt_usage``,
...) are dropped and reported.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from preprocess.common import (
    CONVERSATION_MARKER,
    RANK_GRPO_INSTRUCTION,
    SkipCounter,
    assign_split,
    check_split_fractions_option,
    format_completion,
    groundtruth_completion_ids,
    int_at_least,
    item_line,
    iter_lines_utf8,
    load_source_catalog,
    read_text_utf8,
    split_from_name,
)
from preprocess.contract import SPLITS, DataError, check_output_dir, save_processed
from rewards.titles import split_title_year

FORMAT_FIELDS = ("sample_id", "prompt", "completion", "seen_titles", "groundtruth_with_release_year",
                 "num_groundtruth")
REQUIRED_FIELDS = ("prompt", "seen_titles", "groundtruth_with_release_year")
#: Counts reported in summary.json's ``stats`` (every one present, 0 when nothing happened; others appear when
#: they occur).
STAT_NAMES = ("groundtruth pairs read", "groundtruth pairs not in the catalog (dropped from groundtruth)",
              "seen titles read", "seen titles not in the catalog", "groundtruth ids also in seen (can never be hit)")


class Source:
    """One input unit (a JSON file, a JSONL file or an HF split) yielding ``(where, line, record)``."""

    def __init__(self, name: str, path: Path, kind: str, hf_split: str | None = None):
        self.name, self.path, self.kind, self.hf_split = name, path, kind, hf_split

    def __repr__(self) -> str:
        return f"Source({self.name!r}, {self.kind})"

    def records(self) -> Iterator[tuple[str | None, int | None, dict]]:
        if self.kind == "jsonl":
            for number, line in iter_lines_utf8(self.path):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(self.path, line=number, reason=f"malformed JSON: {err.msg} (column {err.colno})"
                                    ) from None
                if not isinstance(rec, dict):
                    raise DataError(self.path, line=number, reason=f"expected a JSON object, got {type(rec).__name__}")
                yield None, number, rec
        elif self.kind == "json":
            text = read_text_utf8(self.path)
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(self.path, line=err.lineno, reason=f"malformed JSON: {err.msg} (column {err.colno})"
                                ) from None
            samples = doc.get("samples") if isinstance(doc, dict) else doc
            if not isinstance(samples, list):
                raise DataError(self.path, field="samples",
                                reason="expected a JSON object with a 'samples' list (or a top-level list)")
            for i, rec in enumerate(samples):
                if not isinstance(rec, dict):
                    raise DataError(self.path, record=f"samples[{i}]",
                                    reason=f"expected a JSON object, got {type(rec).__name__}")
                yield f"samples[{i}]", None, rec
        else:  # hf
            import datasets

            try:
                ds = datasets.load_from_disk(str(self.path))
            except Exception as err:  # noqa: BLE001
                raise DataError(self.path, reason=f"cannot load HF data set: {err}") from err
            if self.hf_split is not None:
                ds = ds[self.hf_split]
            for i, rec in enumerate(ds):
                yield (f"split {self.hf_split!r} row {i}" if self.hf_split else f"row {i}"), None, rec


def discover_sources(raw: Path) -> list[Source]:
    """The input units under ``raw`` (sorted by name; deterministic)."""
    if raw.is_file():
        kind = "jsonl" if raw.suffix.lower() == ".jsonl" else "json"
        return [Source(raw.stem, raw, kind)]
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw_dir {raw} does not exist")
    if (raw / "dataset_dict.json").exists():
        splits = json.loads(read_text_utf8(raw / "dataset_dict.json")).get("splits", [])
        return [Source(s, raw, "hf", s) for s in sorted(splits)]
    if (raw / "state.json").exists() and (raw / "dataset_info.json").exists():
        return [Source(raw.name, raw, "hf")]
    sources = []
    for p in sorted(raw.iterdir()):
        if p.is_file() and p.suffix.lower() in (".json", ".jsonl"):
            sources.append(Source(p.stem, p, "jsonl" if p.suffix.lower() == ".jsonl" else "json"))
        elif p.is_dir() and (p / "dataset_dict.json").exists():
            splits = json.loads(read_text_utf8(p / "dataset_dict.json")).get("splits", [])
            sources += [Source(f"{p.name}/{s}", p, "hf", s) for s in sorted(splits)]
        elif p.is_dir() and (p / "state.json").exists():
            sources.append(Source(p.name, p, "hf"))
    if not sources:
        raise DataError(raw, reason="no input found (expected *.json / *.jsonl files in the release format or HF "
                                    "save_to_disk folders)")
    return sources


# --------------------------------------------------------------------------------------------------------------
# Field parsing
# --------------------------------------------------------------------------------------------------------------


def _literal(value: Any, fail, field: str):
    """A value stored either natively or as its Python-literal string (never ``eval``)."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{", "("):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            fail(field, f"not a valid Python literal ({type(err).__name__}: {err})")
    return value


def parse_messages(value: Any, fail, field: str, role_if_text: str) -> tuple[list[dict], int]:
    """Chat messages from a list / literal string / plain text. Returns (messages, number of dropped keys)."""
    value = _literal(value, fail, field)
    if isinstance(value, str):
        return [{"role": role_if_text, "content": value}], 0
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        fail(field, f"expected a non-empty list of chat messages, got {type(value).__name__}")
    out, dropped = [], 0
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            fail(field, f"message {i} must have string 'role' and 'content'")
        dropped += len(set(msg) - {"role", "content"})
        out.append({"role": msg["role"], "content": msg["content"]})
    return out, dropped


def parse_groundtruth(value: Any, fail) -> list[tuple[str, Any]]:
    field = "groundtruth_with_release_year"
    value = _literal(value, fail, field)
    if not isinstance(value, (list, tuple)):
        fail(field, f"expected a list of [title, year] pairs, got {type(value).__name__}")
    pairs = []
    for i, pair in enumerate(value):
        if isinstance(pair, str):  # a bare "Title (Year)"
            pairs.append(split_title_year(pair))
            continue
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str):
            fail(field, f"entry {i} must be a [title, year] pair, got {pair!r:.80}")
        pairs.append((pair[0], pair[1]))
    return pairs


def parse_titles(value: Any, fail, field: str = "seen_titles") -> list[str]:
    value = _literal(value, fail, field)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        fail(field, f"expected a list of title strings, got {value!r:.80}")
    return list(value)


def conversation_of(prompt: list[dict]) -> str:
    """The conversation part of the last user message (the split's grouping key)."""
    content = [m for m in prompt if m["role"] == "user"][-1]["content"]
    pos = content.find(CONVERSATION_MARKER)
    return content[pos + len(CONVERSATION_MARKER):] if pos >= 0 else content


# --------------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------------


def choose_split_mode(sources: list[Source], split: str, raw: Path) -> tuple[dict[str, str | None], str]:
    """``({source name: its split, or None to hash the conversation}, "name" | "hash")`` for ``--split``."""
    named = {s.name: split_from_name(s.name) for s in sources}
    if split == "name" or (split == "auto" and len(sources) > 1 and all(named.values())):
        missing = [n for n, v in named.items() if v is None]
        if missing:
            raise DataError(raw, reason=f"--split name: cannot tell the split of {missing} from the name")
        return named, "name"
    return {n: None for n in named}, "hash"


def parse_record(rec: dict, fail, stats: Counter, dropped_fields: Counter) -> dict:
    """One release record -> ``{"prompt", "completion" (or None), "gt_pairs", "seen_titles"}``; a malformed field
    is a DataError (through ``fail``), fields outside the format and extra message keys are counted."""
    for f in REQUIRED_FIELDS:
        if f not in rec or rec[f] is None:
            fail(f, "missing (a Rank-GRPO Reddit-v2 record needs prompt, seen_titles and "
                    "groundtruth_with_release_year)")
    for f in rec:
        if f not in FORMAT_FIELDS:
            dropped_fields[f] += 1
    prompt, extra = parse_messages(rec["prompt"], fail, "prompt", "user")
    stats["message keys other than role/content dropped"] += extra
    if prompt[-1]["role"] != "user":
        fail("prompt", f"the last message must be the user turn, got role {prompt[-1]['role']!r}")
    src_completion = None
    if rec.get("completion") not in (None, "", []):
        src_completion, extra = parse_messages(rec["completion"], fail, "completion", "assistant")
        stats["message keys other than role/content dropped"] += extra
        if len(src_completion) != 1 or src_completion[0]["role"] != "assistant":
            fail("completion", "expected exactly one assistant message")
    return {"prompt": prompt, "completion": src_completion,
            "gt_pairs": parse_groundtruth(rec["groundtruth_with_release_year"], fail),
            "seen_titles": parse_titles(rec["seen_titles"], fail)}


def read_samples(sources: list[Source], name: str, stats: Counter, dropped_fields: Counter,
                 progress: bool) -> list[dict]:
    """Every record of every source, parsed, with its unique ``sid`` and ``source`` name."""
    parsed: list[dict] = []
    sample_ids: dict[str, str] = {}
    bar = tqdm(desc=f"{name} samples", unit="sample", disable=not progress, mininterval=1.0)
    for source in sources:
        for index, (where, line, rec) in enumerate(source.records()):
            where = where or (f"record {index}" if line is None else None)
            path = source.path if source.kind != "hf" else f"{source.path} [{source.hf_split or 'dataset'}]"

            def fail(field, reason, _path=path, _line=line, _where=where):
                raise DataError(_path, line=_line, record=_where, field=field, reason=reason)

            sample = parse_record(rec, fail, stats, dropped_fields)
            raw_id = rec.get("sample_id")
            sid = f"{name}/{raw_id}" if raw_id not in (None, "") else f"{name}/{source.name}/{index}"
            if sid in sample_ids:
                fail("sample_id", f"duplicate sample id {sid!r} (also in {sample_ids[sid]})")
            sample_ids[sid] = str(path)
            parsed.append({"sid": sid, "source": source.name, **sample})
            bar.update(1)
    bar.close()
    return parsed


def resolve_samples(parsed: list[dict], catalog, source_split: dict[str, str | None], split_fractions,
                    stats: Counter, skips: SkipCounter) -> tuple[list[tuple], dict[str, set[str]]]:
    """``[(split, sample, groundtruth ids, seen ids)]`` and the conversations of each split.

    Ground-truth pairs go through ``Catalog.match``; a sample none of whose pairs resolves is skipped (counted),
    unresolved pairs and seen titles are counted in ``stats``.
    """
    conversations: dict[str, set[str]] = {s: set() for s in SPLITS}
    resolved = []
    for p in parsed:
        conv = conversation_of(p["prompt"])
        s = assign_split(conv, source_split[p["source"]], split_fractions)
        if not p["prompt"][-1]["content"].startswith(RANK_GRPO_INSTRUCTION):
            stats["prompts not starting with the Rank-GRPO instruction (kept as given)"] += 1
        gt = []
        for title, year in p["gt_pairs"]:
            iid = catalog.match(title, year if year not in ("", None) else None)
            if iid is None:
                stats["groundtruth pairs not in the catalog (dropped from groundtruth)"] += 1
            else:
                gt.append(iid)
        stats["groundtruth pairs read"] += len(p["gt_pairs"])
        if not gt:
            skips.skip("no groundtruth pair resolves in the catalog")
            continue
        seen: dict[int, None] = {}
        for t in p["seen_titles"]:
            title, year = split_title_year(t)
            ids = ([catalog.match(title, year)] if year is not None else catalog.ids_for_title(title))
            ids = [i for i in ids if i is not None]
            if not ids:
                stats["seen titles not in the catalog"] += 1
            seen.update(dict.fromkeys(ids))
        stats["seen titles read"] += len(p["seen_titles"])
        stats["groundtruth ids also in seen (can never be hit)"] += sum(1 for i in gt if i in seen)
        conversations[s].add(conv)
        resolved.append((s, p, gt, list(seen)))
    return resolved, conversations


def train_groundtruth_popularity(resolved: list[tuple], catalog) -> tuple[Counter, list[int]]:
    """Ground-truth frequency over train samples, and the dated ids most frequent first (completion padding)."""
    gt_freq = Counter(i for s, _, gt, _ in resolved if s == "train" for i in gt)
    popular = [i for i, _ in sorted(gt_freq.items(), key=lambda kv: (-kv[1], kv[0])) if catalog[i]["year"] is not None]
    return gt_freq, popular


def build_records(resolved: list[tuple], catalog, popular: list[int], *, completion: str, n_items: int,
                  stats: Counter) -> dict[str, list[dict]]:
    """The records of every split: the source completion (``completion="source"``, when the record has one), else
    the ground-truth titles padded with popular unseen items."""
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for s, p, gt, seen in resolved:
        if completion == "source" and p["completion"] is not None:
            comp = p["completion"]
        else:
            if completion == "source":
                stats["samples without a source completion (written from groundtruth)"] += 1
            ids = groundtruth_completion_ids(gt, lambda i: catalog[i]["year"], popular, seen, n_items, stats)
            comp = format_completion([item_line(catalog[i]["title"], catalog[i]["year"]) for i in ids])
        records[s].append({"sample_id": p["sid"], "prompt": p["prompt"], "completion": comp, "groundtruth": gt,
                           "seen": seen, "history": [], "target": None, "timestamp": None})
    return records


def build(raw_dir, output_dir, *, catalog_path=None, name: str = "reddit_v2", split: str = "auto",
          completion: str = "source", n_items: int = 20, split_fractions=(0.8, 0.1, 0.1), progress: bool = True,
          quiet: bool = False) -> dict:
    """Build the processed data set in ``output_dir``; returns the summary (also written to summary.json)."""
    check_output_dir(output_dir)  # before reading anything
    raw = Path(raw_dir)
    if split not in ("auto", "name", "hash"):
        raise ValueError(f"split must be auto, name or hash, got {split!r}")
    if completion not in ("source", "groundtruth"):
        raise ValueError(f"completion must be source or groundtruth, got {completion!r}")
    sources = discover_sources(raw)
    catalog_path, catalog = load_source_catalog(raw, catalog_path, "gt_catalog.pkl")
    source_split, split_mode = choose_split_mode(sources, split, raw)

    skips = SkipCounter()
    stats: Counter = Counter({k: 0 for k in STAT_NAMES})
    dropped_fields: Counter = Counter()
    parsed = read_samples(sources, name, stats, dropped_fields, progress)
    resolved, conversations = resolve_samples(parsed, catalog, source_split, split_fractions, stats, skips)
    gt_freq, popular = train_groundtruth_popularity(resolved, catalog)
    records = build_records(resolved, catalog, popular, completion=completion, n_items=n_items, stats=stats)

    summary = {
        "dataset": name,
        "builder": "preprocess.reddit_v2",
        "source": str(raw),
        "catalog_path": str(catalog_path),
        "options": {"split": split, "split_mode": split_mode, "completion": completion, "n_items": n_items,
                    "split_fractions": list(split_fractions)},
        "inputs": [f"{s.path}" + (f" [{s.hf_split}]" if s.hf_split else "") for s in sources],
        "read": {"samples": len(parsed), "catalog items": len(catalog)},
        "catalog_report": catalog.report,
        "users_note": "distinct requests (conversation texts); several answers to one request are separate samples",
        "splits": {s: {"users": len(conversations[s])} for s in SPLITS},
        "stats": dict(sorted(stats.items())),
        "dropped_fields (not part of the format)": dict(sorted(dropped_fields.items())),
        "skipped": skips.as_dict(),
    }
    catalog_items = catalog.to_list()
    for it in catalog_items:
        it.setdefault("popularity", gt_freq.get(it["id"], 0))
    return save_processed(output_dir, records, catalog_items, summary, quiet=quiet, progress=progress)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m preprocess.reddit_v2",
                                description="Build a processed data set from Rank-GRPO's Reddit-v2 records.")
    p.add_argument("--raw_dir", required=True,
                   help="folder (or one file) with *.json/*.jsonl in the release format, or HF save_to_disk folders")
    p.add_argument("--output_dir", required=True, help="where to write train/ validation/ test/ catalog.json")
    p.add_argument("--catalog_path", default=None, help="catalog (.pkl/.json/.csv) [<raw_dir>/gt_catalog.pkl]")
    p.add_argument("--name", default="reddit_v2", help="data set name used in sample ids [reddit_v2]")
    p.add_argument("--split", choices=("auto", "name", "hash"), default="auto",
                   help="split from source names, by a stable hash of the conversation, or auto [auto]")
    p.add_argument("--split_fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"), help="fractions of the hash split [0.8 0.1 0.1]")
    p.add_argument("--completion", choices=("source", "groundtruth"), default="source",
                   help="keep the release's SFT completion, or write groundtruth + popular padding [source]")
    p.add_argument("--n_items", type=int_at_least(1), default=20, help="lines of a generated completion [20]")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    args.split_fractions = check_split_fractions_option(p, args.split_fractions)
    try:
        return build(args.raw_dir, args.output_dir, catalog_path=args.catalog_path, name=args.name, split=args.split,
                     completion=args.completion, n_items=args.n_items, split_fractions=tuple(args.split_fractions),
                     progress=not args.no_progress)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
