"""Relevance judgement of completions (docs/methods.md §2.1, docs/ARCHITECTURE.md).

Every parsed item gets one status, checked in this order:

``out_of_catalog`` (no catalog id) -> ``seen`` (id in ``seen``) -> ``duplicate`` (id listed earlier in the
same completion) -> ``hit`` (id still in the ground-truth multiset; consumes one copy) -> ``miss``.

``rel_k = 1`` iff status is ``hit``. ALL parsed items are judged; callers cut to N.

Which lines are items (:func:`line_catalog_id`, the one rule, used by :func:`judge` (one completion, with spans)
and by :func:`match_texts` (a batch: each distinct line read and matched once)), from ``rewards.parse.read_line``:

1. a line whose numbered form (``#10 Solid Rubber Stopper``) is exactly a catalog title is that item; so is a
   ``Title (YYYY)`` line that names no dated entry but is exactly an undated one's title (``NVIDIA SHIELD
   Controller (2015)``, an Amazon product title);
2. a line that reads as prose (more than 15 words, a 6+ word sentence, "Here are ...") is an item only when it is
   exactly a catalog title (full titles, no fuzzy fallback): a long product title is an item, a preamble is not;
3. otherwise with ``require_year`` a line without a year is an item only when it names a catalog entry that has no
   year (``Catalog.match_undated``; parse.py's docstring says why); every other line is an item, matched by
   ``Catalog.match`` (None: out of catalog).

Ids the matcher cannot tell apart (``Catalog.canonical_id``) are one item: :func:`judge` and :func:`judge_batch`
map the ground truth (``Catalog.canonical_groundtruth``) and ``seen`` through it (matched ids already are).

One status rule: :func:`judge_ids` (ids of one list) is what :func:`judge_items` and :func:`judge_id_lists`
(a batch of lists, e.g. ranked catalog ids from a recommender that writes no text) both apply.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .catalog import Catalog
from .parse import LineReading, ParsedItem, iter_lines, numbered_reading, read_line, split_lines

__all__ = [
    "DUPLICATE",
    "HIT",
    "MISS",
    "OUT_OF_CATALOG",
    "SEEN",
    "STATUSES",
    "BatchJudgement",
    "Judgement",
    "judge",
    "judge_batch",
    "judge_id_lists",
    "judge_ids",
    "judge_items",
    "canonical_targets",
    "line_catalog_id",
    "match_texts",
]

OUT_OF_CATALOG = "out_of_catalog"
SEEN = "seen"
DUPLICATE = "duplicate"
HIT = "hit"
MISS = "miss"
STATUSES = (OUT_OF_CATALOG, SEEN, DUPLICATE, HIT, MISS)


@dataclass
class Judgement:
    """Parsed items, their catalog ids (``None`` = not in the catalog) and statuses, in list order."""

    items: list[ParsedItem]
    ids: list[int | None]
    status: list[str]
    n_groundtruth: int = 0  # size of the ground-truth multiset the completion was judged against
    n_items: int = 20  # list length N the caller asked for (informational; all items are judged)

    def __post_init__(self) -> None:
        if not len(self.items) == len(self.ids) == len(self.status):
            raise ValueError(
                f"Judgement fields differ in length: {len(self.items)} items, {len(self.ids)} ids, "
                f"{len(self.status)} statuses"
            )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rel(self) -> np.ndarray:
        """0/1 relevance per parsed item (float64), 1 iff ``hit``."""
        return np.fromiter((s == HIT for s in self.status), dtype=np.float64, count=len(self.status))

    def rel_at(self, n: int | None = None) -> np.ndarray:
        """Strict relevance vector cut / zero-padded to ``n`` positions (default ``n_items``)."""
        n = self.n_items if n is None else int(n)
        out = np.zeros(n, dtype=np.float64)
        r = self.rel[:n]
        out[: len(r)] = r
        return out

    def mask(self, *statuses: str) -> np.ndarray:
        """Boolean mask of the items whose status is one of ``statuses``."""
        wanted = set(statuses)
        return np.fromiter((s in wanted for s in self.status), dtype=bool, count=len(self.status))

    @property
    def in_catalog(self) -> np.ndarray:
        return np.fromiter((i is not None for i in self.ids), dtype=bool, count=len(self.ids))

    @property
    def valid(self) -> np.ndarray:
        """In catalog, unseen, not a duplicate (status ``hit`` or ``miss``)."""
        return self.mask(HIT, MISS)

    def catalog_hit_ratio(self, n: int | None = None) -> float:
        """THE catalog-hit ratio (training logs and evaluation): in-catalog items among the first ``n`` parsed
        items (default ``n_items``) / those items; 0.0 when nothing was parsed."""
        n = self.n_items if n is None else int(n)
        cut = self.ids[:n]
        return sum(i is not None for i in cut) / len(cut) if cut else 0.0

    def valid_item_ratio(self, n: int | None = None) -> float:
        """THE valid-item ratio: items among the first ``n`` list positions that are ``hit`` or ``miss`` (in the
        catalog, unseen, not a duplicate) / ``n``."""
        n = self.n_items if n is None else int(n)
        return sum(s in (HIT, MISS) for s in self.status[:n]) / n if n else 0.0

    @property
    def n_hits(self) -> int:
        return sum(s == HIT for s in self.status)

    def counts(self) -> dict[str, int]:
        """Number of parsed items per status (every status present, zeros included)."""
        c = Counter(self.status)
        return {s: c.get(s, 0) for s in STATUSES}

    def packed_rel(self, n: int | None = None) -> np.ndarray:
        """Relevance of the packed list (the released evaluation's protocol): ``seen`` and ``out_of_catalog``
        items dropped from the WHOLE parsed list, the rest packed upward, then cut to ``n`` (default ``n_items``)."""
        n = self.n_items if n is None else int(n)
        keep = [s == HIT for s in self.status if s not in (SEEN, OUT_OF_CATALOG)]
        return np.asarray(keep[:n], dtype=np.float64)

    def to_records(self) -> list[dict]:
        """JSON-ready rows (for ``predictions.jsonl``)."""
        return [
            {"title": it.title, "year": it.year, "id": iid, "status": st, "line": it.line,
             "start": it.start, "end": it.end}
            for it, iid, st in zip(self.items, self.ids, self.status)
        ]


def judge_ids(ids: Sequence[int | None], groundtruth: Iterable[int], seen: Iterable[int] = ()) -> list[str]:
    """THE status rule (module docstring) for one list of catalog ids in rank order (None = no catalog item)."""
    remaining = Counter(groundtruth)
    seen_set = seen if isinstance(seen, (set, frozenset)) else set(seen)
    listed: set[int] = set()
    status: list[str] = []
    append = status.append
    for iid in ids:
        if iid is None:
            append(OUT_OF_CATALOG)
            continue
        if iid in seen_set:
            append(SEEN)
        elif iid in listed:
            append(DUPLICATE)
        elif remaining[iid] > 0:
            remaining[iid] -= 1
            append(HIT)
        else:
            append(MISS)
        listed.add(iid)
    return status


def judge_items(
    items: list[ParsedItem],
    ids: list[int | None],
    groundtruth: Iterable[int],
    seen: Iterable[int] = (),
    n_items: int = 20,
) -> Judgement:
    """Statuses for already parsed and matched items (``ids[k]`` = catalog id of ``items[k]`` or None)."""
    groundtruth = list(groundtruth)
    status = judge_ids(ids, groundtruth, seen)
    return Judgement(list(items), list(ids), status, n_groundtruth=len(groundtruth), n_items=n_items)


_NOT_AN_ITEM = object()  # line_catalog_id's answer for a line that is no item at all
_DIGITS = re.compile(r"\d+")


def line_catalog_id(stripped: str, catalog: Catalog, require_year: bool = True):
    """The catalog id of one stripped line (None: an item that matched nothing), or ``_NOT_AN_ITEM``."""
    reading = read_line(stripped) if stripped else None
    return _NOT_AN_ITEM if reading is None else _reading_id(reading, catalog, require_year)[2]


def _catalog_id(title: str, year: int | None, catalog: Catalog, require_year: bool, exact: bool = False):
    """The matching step of a reading: with ``require_year`` a line without a year is an item only when it
    names an undated catalog entry (else ``_NOT_AN_ITEM``); every other item gets ``catalog.match``."""
    if year is not None or not require_year:
        return catalog.match(title, year, exact=exact)
    iid = catalog.match_undated(title, exact=exact)
    return _NOT_AN_ITEM if iid is None else iid


def _reading_id(reading: LineReading, catalog: Catalog, require_year: bool, memo: dict | None = None):
    """``(title, year, id)`` of a line's reading by the module docstring's rules (id ``_NOT_AN_ITEM``: no item).
    ``memo``: answers by what they depend on, shared by every line with the same title under other numbering."""
    if reading.number is not None and catalog.may_be_numbered_title(_DIGITS.search(reading.number).group(),
                                                                    reading.title):
        numbered = numbered_reading(reading)
        if numbered is not None:
            iid = _catalog_id(*numbered, catalog, require_year, exact=True)
            if iid is not None and iid is not _NOT_AN_ITEM:
                return *numbered, iid
    key = (reading.title, reading.year, reading.prose)
    got = memo.get(key) if memo is not None else None
    if got is None:
        got = _unnumbered_id(reading, catalog, require_year)
        if memo is not None:
            memo[key] = got
    return got


def _unnumbered_id(reading: LineReading, catalog: Catalog, require_year: bool):
    iid = _catalog_id(reading.title, reading.year, catalog, require_year, exact=reading.prose)
    if iid is None and reading.year is not None:  # a yearless entry whose title ends in "(2015)" (Amazon has some)
        whole = f"{reading.title} ({reading.year})"
        undated = catalog.match_undated(whole, exact=True)
        if undated is not None:
            return whole, None, undated
    if reading.prose and iid is None:
        iid = _NOT_AN_ITEM
    return reading.title, reading.year, iid


def _canonical_seen(catalog: Catalog, seen: Iterable) -> set:
    return {catalog.canonical_id(i) for i in (seen or ())}


def judge(
    text: str,
    catalog: Catalog,
    groundtruth: Iterable[int],
    seen: Iterable[int] = (),
    n_items: int = 20,
    require_year: bool = True,
) -> Judgement:
    """Read every line of ``text``, match the items against ``catalog`` and judge them against the ground-truth
    multiset ``groundtruth`` (catalog ids) and the ids in ``seen`` (both mapped to ``Catalog.canonical_id``)."""
    if not isinstance(text, str):
        raise TypeError(f"judge expects a str completion, got {type(text).__name__}")
    items: list[ParsedItem] = []
    ids: list[int | None] = []
    for idx, start, end, stripped in iter_lines(text):
        if not stripped:
            continue
        reading = read_line(stripped)
        if reading is None:
            continue
        title, year, iid = _reading_id(reading, catalog, require_year)
        if iid is not _NOT_AN_ITEM:
            items.append(ParsedItem(title, year, start, end, idx))
            ids.append(iid)
    return judge_items(items, ids, catalog.canonical_groundtruth(groundtruth), _canonical_seen(catalog, seen),
                       n_items=n_items)


# ------------------------------------------------------------------------------------------------ batches
def match_texts(
    texts: Sequence[str], catalog: Catalog, require_year: bool = True, memo: dict | None = None
) -> list[list[int | None]]:
    """Catalog ids of the items of each text, in list order (None = an item that matched nothing).

    Exactly ``[judge(t, ...).ids for t in texts]``, but each distinct line is parsed once and each distinct
    ``(title, year)`` matched once (``memo``: line -> answer and (title, year, prose) -> answer; pass the same dict to
    several calls with the SAME catalog and require_year to share it)."""
    memo = {} if memo is None else memo
    skip = _NOT_AN_ITEM
    out: list[list[int | None]] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"match_texts expects str completions, got {type(text).__name__}")
        ids: list[int | None] = []
        for line in split_lines(text):
            iid = memo.get(line, memo)  # the memo itself marks "not seen yet" (ids and None are answers)
            if iid is memo:
                stripped = line.strip()
                reading = read_line(stripped) if stripped else None
                if reading is None:
                    iid = skip
                else:  # the same title under other numbering/markdown is matched once ("3. X (1999)", "- X (1999)")
                    iid = _reading_id(reading, catalog, require_year, memo)[2]
                memo[line] = iid
            if iid is not skip:
                ids.append(iid)
        out.append(ids)
    return out


@dataclass
class BatchJudgement:
    """Columnar judgement of a batch: per sample its catalog ids and statuses in list order (no spans)."""

    ids: list[list[int | None]]
    status: list[list[str]]
    n_groundtruth: np.ndarray  # (B,) int64
    n_items: int = 20

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.status) == len(self.n_groundtruth):
            raise ValueError(f"BatchJudgement fields differ in length: {len(self.ids)} id lists, "
                             f"{len(self.status)} status lists, {len(self.n_groundtruth)} ground-truth sizes")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_judgements(cls, judgements: Sequence[Judgement], n_items: int | None = None) -> "BatchJudgement":
        n = judgements[0].n_items if n_items is None and judgements else (20 if n_items is None else n_items)
        return cls([list(j.ids) for j in judgements], [list(j.status) for j in judgements],
                   np.asarray([j.n_groundtruth for j in judgements], dtype=np.int64), n_items=int(n))


def judge_id_lists(
    id_lists: Sequence[Sequence[int | None]],
    groundtruths: Sequence[Iterable[int]],
    seens: Sequence[Iterable[int]] | None = None,
    n_items: int = 20,
) -> BatchJudgement:
    """:func:`judge_ids` on every list (``seens`` None = nothing seen)."""
    if len(id_lists) != len(groundtruths):
        raise ValueError(f"{len(id_lists)} id lists for {len(groundtruths)} ground truths")
    if seens is not None and len(seens) != len(id_lists):
        raise ValueError(f"{len(seens)} seen lists for {len(id_lists)} id lists")
    ids_out, status_out, n_gt = [], [], np.empty(len(id_lists), dtype=np.int64)
    for b, ids in enumerate(id_lists):
        gt = list(groundtruths[b] or ())
        ids = list(ids)
        ids_out.append(ids)
        status_out.append(judge_ids(ids, gt, (seens[b] or ()) if seens is not None else ()))
        n_gt[b] = len(gt)
    return BatchJudgement(ids_out, status_out, n_gt, n_items=int(n_items))


def judge_batch(
    texts: Sequence[str],
    catalog: Catalog,
    groundtruths: Sequence[Iterable[int]],
    seens: Sequence[Iterable[int]] | None = None,
    n_items: int = 20,
    require_year: bool = True,
) -> BatchJudgement:
    """``judge`` on every text, columnar: :func:`match_texts` then :func:`judge_id_lists` (the id-list path), with
    the ground truths and seen ids mapped to ``Catalog.canonical_id`` as :func:`judge` maps them."""
    groundtruths, seens = canonical_targets(catalog, groundtruths, seens)
    return judge_id_lists(match_texts(texts, catalog, require_year), groundtruths, seens, n_items=n_items)


def canonical_targets(catalog: Catalog, groundtruths: Sequence[Iterable], seens: Sequence[Iterable] | None):
    """``(ground truths, seens)`` mapped to ``Catalog.canonical_id`` (``Catalog.canonical_groundtruth`` for each
    ground truth), the mapping every scorer of text or ids against ``catalog`` applies."""
    gts = [catalog.canonical_groundtruth(gt) for gt in groundtruths]
    return gts, (None if seens is None else [_canonical_seen(catalog, s) for s in seens])
