"""ReDial (Li et al., NeurIPS 2018) -> processed conversational data set.

Usage::

    python -m preprocess.redial --raw_dir ../shared/data/redial_official --output_dir processed_datasets/redial
    python -m preprocess.redial --raw_dir data/redial --output_dir processed_datasets/redial   # train_data + test_data

Input (``--raw_dir``): ReDial JSON Lines files, one conversation per line, named ``train_data`` / ``valid_data`` /
``test_data`` (with or without ``.jsonl``) or ``*.jsonl``; catalog ``movies_with_mentions.csv``
(``--catalog_path``; ``movieId,movieName,nbMentions``; ids = movieId, popularity = nbMentions).

Turns. Consecutive messages by the same worker are merged into one turn (texts joined by a space, whitespace
normalised): ReDial workers often split one utterance over several messages, and a recommendation spread over
them is one answer. The seeker is ``initiatorWorkerId`` (``USER:``), the recommender ``respondentWorkerId``
(``SYSTEM:``). ``@<movieId>`` is replaced by the title from the conversation's ``movieMentions`` (whitespace
normalised), else the catalog's ``Title (Year)``.

Samples. One per recommender turn that mentions at least one movie and follows at least one earlier turn.
The prompt is Rank-GRPO's instruction + the conversation before the turn (one ``USER: ...`` / ``SYSTEM: ...`` line
per turn). ``groundtruth`` = the movies the recommender mentions in the turn that were not mentioned earlier in
the conversation (turns where that is empty are skipped and counted); ``seen`` = every movie mentioned before the
turn. Ids are mapped to the id the one matcher returns for the movie's own ``Title (Year)`` (ReDial's catalog lists
some movies twice); ids not in the catalog are counted and left out. ``history`` = [], ``target`` = null,
``timestamp`` = null (ReDial has only relative time offsets).

Completion: the ground-truth movies as ``Title (Year)`` lines, padded to 20 with the most-mentioned movies
(``nbMentions``) not seen. Movies without a year in the catalog cannot be written as ``Title (Year)``, and a
completion holds at most ``--n_items`` lines: such ground-truth movies stay in the ground truth but are not written
(both counted).

Split: files are used as given (train / validation / test from their names). When a train file is given without
a validation file, ``--valid_fraction`` (default 0.1) of the train conversations move to validation by a stable
hash of ``conversationId``. When only one file is given, conversations are split 80/10/10 by that hash.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from preprocess.common import (
    GT_BEYOND_N_ITEMS_NOT_WRITTEN,
    GT_UNDATED_NOT_WRITTEN,
    SkipCounter,
    assign_split,
    build_prompt,
    check_split_fractions_option,
    format_completion,
    groundtruth_completion_ids,
    int_at_least,
    item_line,
    iter_lines_utf8,
    load_source_catalog,
    split_from_name,
)
from preprocess.contract import SPLITS, DataError, check_output_dir, save_processed

MENTION = re.compile(r"@(\d+)")
CONVERSATION_FIELDS = ("conversationId", "messages", "initiatorWorkerId", "respondentWorkerId", "movieMentions")
MESSAGE_FIELDS = ("text", "senderWorkerId")
#: Counts reported in summary.json's ``stats`` (every one present, 0 when nothing happened).
STAT_NAMES = (
    "conversations read", "messages read", "turns (consecutive messages merged)", "recommender turns",
    "recommender turns mentioning a movie", "mentions (@id) read", "mentions of ids not in the catalog",
    "mentions without a title in movieMentions (catalog title used)", "mentions with no title at all",
    "ids mapped to the matcher's id of a duplicate catalog entry", GT_UNDATED_NOT_WRITTEN,
    GT_BEYOND_N_ITEMS_NOT_WRITTEN)
_SPACES = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def discover_files(raw: Path) -> list[Path]:
    if raw.is_file():
        return [raw]
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw_dir {raw} does not exist")
    files = [p for p in sorted(raw.iterdir()) if p.is_file() and (
        p.suffix.lower() == ".jsonl" or re.fullmatch(r"(train|valid|validation|val|dev|test)_data", p.name))]
    if not files:
        raise DataError(raw, reason="no ReDial files found (expected train_data / test_data[.jsonl] or *.jsonl)")
    return files


def read_conversations(path: Path):
    """Yield ``(line_number, conversation)`` with every field the builder needs checked."""
    for number, line in iter_lines_utf8(path):
        if not line.strip():
            continue
        try:
            conv = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, line=number, reason=f"malformed JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(conv, dict):
            raise DataError(path, line=number, reason=f"expected a JSON object, got {type(conv).__name__}")
        for field in CONVERSATION_FIELDS:
            if field not in conv:
                raise DataError(path, line=number, field=field, reason="missing")
        if isinstance(conv["movieMentions"], list) and not conv["movieMentions"]:
            conv["movieMentions"] = {}  # ReDial writes [] for a conversation without mentions
        if not isinstance(conv["movieMentions"], dict):
            raise DataError(path, line=number, field="movieMentions", reason="expected an object {movieId: title}")
        if not isinstance(conv["messages"], list):
            raise DataError(path, line=number, field="messages", reason="expected a list of messages")
        for i, msg in enumerate(conv["messages"]):
            if not isinstance(msg, dict):
                raise DataError(path, line=number, field=f"messages[{i}]", reason="expected an object")
            for field in MESSAGE_FIELDS:
                if field not in msg:
                    raise DataError(path, line=number, field=f"messages[{i}].{field}", reason="missing")
            if not isinstance(msg["text"], str):
                raise DataError(path, line=number, field=f"messages[{i}].text", reason="expected a string")
        yield number, conv


def merge_turns(messages: list[dict]) -> list[dict]:
    """Consecutive messages by the same sender -> one turn ``{"sender", "text", "message_id"}``."""
    turns: list[dict] = []
    for i, msg in enumerate(messages):
        text = _norm(msg["text"])
        if turns and turns[-1]["sender"] == msg["senderWorkerId"]:
            turns[-1]["text"] = _norm(turns[-1]["text"] + " " + text)
            turns[-1]["n_messages"] += 1
        else:
            turns.append({"sender": msg["senderWorkerId"], "text": text, "message_id": msg.get("messageId", i),
                          "n_messages": 1})
    return turns


def file_splits(files: list[Path], valid_fraction: float) -> tuple[dict[Path, str | None], float, str]:
    """``({file: its split, or None for the 80/10/10 hash}, share of train carved out to validation, description)``.

    One file: every conversation is hashed 80/10/10. Several files: each file's name says its split; when there is
    a train file but no validation file, ``valid_fraction`` of the train conversations move to validation.
    """
    if len(files) == 1:
        return {files[0]: None}, 0.0, "hash of conversationId (80/10/10; one input file)"
    file_split = {f: split_from_name(f.stem) for f in files}
    unknown = [str(f) for f, s in file_split.items() if s is None]
    if unknown:
        raise DataError(unknown[0], reason="cannot tell the split from the file name (use train_data / "
                                           "valid_data / test_data or *train*/*valid*/*test*.jsonl)")
    carve = valid_fraction if "validation" not in file_split.values() else 0.0
    described = "train" in file_split.values() and "validation" not in file_split.values() and valid_fraction > 0
    split_mode = "file names" + (f" (validation = {valid_fraction:.0%} of train conversations by hash of "
                                 "conversationId)" if described else "")
    return file_split, carve, split_mode


def canonical_ids(catalog) -> tuple[dict[int, int], list[int]]:
    """``{catalog id: the id the matcher gives its own Title (Year)}`` (ReDial lists some movies twice), and the
    dated canonical ids by decreasing ``nbMentions`` (the completion's padding)."""
    canonical: dict[int, int] = {}
    for it in catalog:
        cid = catalog.match(it["title"], it["year"]) if it["year"] is not None else None
        canonical[it["id"]] = cid if cid is not None else it["id"]
    popular = [it["id"] for it in sorted(catalog, key=lambda it: (-(it.get("popularity") or 0), it["id"]))
               if it["year"] is not None and canonical[it["id"]] == it["id"]]
    return canonical, popular


def iter_conversations(files: list[Path], stats: Counter):
    """Yield ``(path, conversationId, conversation)`` of every file in order; a repeated id is a DataError."""
    conv_seen: dict[str, str] = {}
    for path in files:
        for number, conv in read_conversations(path):
            conv_id = str(conv["conversationId"])
            if conv_id in conv_seen:
                raise DataError(path, line=number, field="conversationId",
                                reason=f"duplicate conversationId {conv_id} (first at {conv_seen[conv_id]})")
            conv_seen[conv_id] = f"{path}:{number}"
            stats["conversations read"] += 1
            stats["messages read"] += len(conv["messages"])
            yield path, conv_id, conv


class MentionResolver:
    """``@<movieId>`` -> catalog id and display title, counting (in ``stats``) every mention it cannot resolve."""

    def __init__(self, catalog, canonical: dict[int, int], stats: Counter):
        self.catalog, self.canonical, self.stats = catalog, canonical, stats
        self.remapped: set[int] = set()  # ids mapped to the matcher's id of a duplicate catalog entry

    def title(self, mid: str, mentions: dict[str, str]) -> str:
        """The conversation's own title of the movie, else the catalog's ``Title (Year)``."""
        if mid in mentions:
            return mentions[mid]
        if int(mid) in self.catalog:
            self.stats["mentions without a title in movieMentions (catalog title used)"] += 1
            return self.catalog.display(int(mid))
        self.stats["mentions with no title at all"] += 1
        return "a movie"

    def to_id(self, mid: str) -> int | None:
        """The canonical catalog id, or None (counted) for an id the catalog does not list."""
        iid = int(mid)
        if iid not in self.catalog:
            self.stats["mentions of ids not in the catalog"] += 1
            return None
        if self.canonical[iid] != iid:
            self.remapped.add(iid)
        return self.canonical[iid]


def conversation_samples(conv: dict, conv_id: str, resolver: MentionResolver, popular: list[int], *, name: str,
                         n_items: int, stats: Counter, skips: SkipCounter) -> list[dict]:
    """The records of one conversation: one per recommender turn that mentions a movie new to the conversation
    (turns that do not qualify are counted in ``skips``)."""
    catalog = resolver.catalog
    mentions = {str(k): _norm(v) for k, v in conv["movieMentions"].items() if isinstance(v, str) and _norm(v)}
    seeker, recommender = conv["initiatorWorkerId"], conv["respondentWorkerId"]
    samples: list[dict] = []
    lines: list[str] = []
    seen: dict[int, None] = {}
    for turn in merge_turns(conv["messages"]):
        stats["turns (consecutive messages merged)"] += 1
        if turn["sender"] == seeker:
            role = "USER"
        elif turn["sender"] == recommender:
            role = "SYSTEM"
        else:
            skips.skip("turn by a worker who is neither initiator nor respondent (left out of the text)")
            continue
        mids = MENTION.findall(turn["text"])
        stats["mentions (@id) read"] += len(mids)
        ids = [i for i in (resolver.to_id(m) for m in mids) if i is not None]
        if role == "SYSTEM":
            stats["recommender turns"] += 1
        if role == "SYSTEM" and mids:
            stats["recommender turns mentioning a movie"] += 1
            gt = [i for i in dict.fromkeys(ids) if i not in seen]
            if not lines:
                skips.skip("recommender turn mentioning a movie before any other turn (no conversation)")
            elif not gt:
                skips.skip("recommender turn mentions only movies already mentioned earlier" if ids else
                           "recommender turn mentions only movies not in the catalog")
            else:
                comp_ids = groundtruth_completion_ids(gt, lambda i: catalog[i]["year"], popular, seen, n_items,
                                                      stats)
                samples.append({
                    "sample_id": f"{name}/c{conv_id}/m{turn['message_id']}",
                    "prompt": build_prompt("\n".join(lines), n_items=n_items),
                    "completion": format_completion([item_line(catalog[i]["title"], catalog[i]["year"])
                                                     for i in comp_ids]),
                    "groundtruth": gt,
                    "seen": list(seen),
                    "history": [],
                    "target": None,
                    "timestamp": None,
                })
        text = MENTION.sub(lambda m: resolver.title(m.group(1), mentions), turn["text"])
        lines.append(f"{role}: {text}")
        seen.update(dict.fromkeys(ids))
    return samples


def build(raw_dir, output_dir, *, catalog_path=None, name: str = "redial", n_items: int = 20,
          valid_fraction: float = 0.1, split_fractions=(0.8, 0.1, 0.1), progress: bool = True,
          quiet: bool = False) -> dict:
    """Build the processed data set in ``output_dir``; returns the summary (also written to summary.json)."""
    check_output_dir(output_dir)  # before reading anything
    raw = Path(raw_dir)
    files = discover_files(raw)
    catalog_path, catalog = load_source_catalog(raw, catalog_path, "movies_with_mentions.csv")
    file_split, carve, split_mode = file_splits(files, valid_fraction)
    canonical, popular = canonical_ids(catalog)

    skips = SkipCounter()
    stats: Counter = Counter({k: 0 for k in STAT_NAMES})
    resolver = MentionResolver(catalog, canonical, stats)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    convs_per_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    conversations = tqdm(iter_conversations(files, stats), desc=f"{name} conversations", unit="conv",
                         disable=not progress, mininterval=1.0)
    for path, conv_id, conv in conversations:
        split = assign_split(conv_id, file_split[path], split_fractions, carve_validation=carve)
        samples = conversation_samples(conv, conv_id, resolver, popular, name=name, n_items=n_items, stats=stats,
                                       skips=skips)
        records[split] += samples
        if samples:
            convs_per_split[split].add(conv_id)
    stats["ids mapped to the matcher's id of a duplicate catalog entry"] = len(resolver.remapped)

    summary = {
        "dataset": name,
        "builder": "preprocess.redial",
        "source": str(raw),
        "catalog_path": str(catalog_path),
        "inputs": [str(f) for f in files],
        "options": {"split_mode": split_mode, "n_items": n_items, "valid_fraction": valid_fraction,
                    "split_fractions": list(split_fractions)},
        "read": {"conversations": stats["conversations read"], "messages": stats["messages read"],
                 "catalog items": len(catalog)},
        "catalog_report": catalog.report,
        "users_note": "distinct conversations with a sample in the split",
        "splits": {s: {"users": len(convs_per_split[s])} for s in SPLITS},
        "stats": dict(sorted(stats.items())),
        "skipped": skips.as_dict(),
    }
    return save_processed(output_dir, records, catalog.to_list(), summary, quiet=quiet, progress=progress)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m preprocess.redial",
                                description="Build a processed conversational data set from ReDial JSON Lines.")
    p.add_argument("--raw_dir", required=True,
                   help="folder with train_data / test_data[.jsonl] or *.jsonl (or one file) "
                        "+ movies_with_mentions.csv")
    p.add_argument("--output_dir", required=True, help="where to write train/ validation/ test/ catalog.json")
    p.add_argument("--catalog_path", default=None, help="catalog CSV [<raw_dir>/movies_with_mentions.csv]")
    p.add_argument("--name", default="redial", help="data set name used in sample ids [redial]")
    p.add_argument("--n_items", type=int_at_least(1), default=20, help="lines per completion / items asked for [20]")
    p.add_argument("--valid_fraction", type=float, default=0.1,
                   help="share of train conversations moved to validation when no validation file is given [0.1]")
    p.add_argument("--split_fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"), help="hash split when only one file is given [0.8 0.1 0.1]")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    args.split_fractions = check_split_fractions_option(p, args.split_fractions)
    if not 0 <= args.valid_fraction < 1:
        p.error(f"argument --valid_fraction: must be in [0, 1), got {args.valid_fraction:g}")
    try:
        return build(args.raw_dir, args.output_dir, catalog_path=args.catalog_path, name=args.name,
                     n_items=args.n_items, valid_fraction=args.valid_fraction,
                     split_fractions=tuple(args.split_fractions), progress=not args.no_progress)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
