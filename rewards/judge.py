"""Relevance judgement of one completion (METHODS.md §2, docs/ARCHITECTURE.md).

Every parsed item gets one status, checked in this order:

``out_of_catalog`` (no catalog id) -> ``seen`` (id in ``seen``) -> ``duplicate`` (id listed earlier in the
same completion) -> ``hit`` (id still in the ground-truth multiset; consumes one copy) -> ``miss``.

``rel_k = 1`` iff status is ``hit``. ALL parsed items are judged; callers cut to N.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .catalog import Catalog
from .parse import ParsedItem, parse_items

__all__ = [
    "DUPLICATE",
    "HIT",
    "MISS",
    "OUT_OF_CATALOG",
    "SEEN",
    "STATUSES",
    "Judgement",
    "judge",
    "judge_items",
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


def judge_items(
    items: list[ParsedItem],
    ids: list[int | None],
    groundtruth: Iterable[int],
    seen: Iterable[int] = (),
    n_items: int = 20,
) -> Judgement:
    """Statuses for already parsed and matched items (``ids[k]`` = catalog id of ``items[k]`` or None)."""
    remaining = Counter(groundtruth)
    n_gt = sum(remaining.values())
    seen_set = set(seen)
    listed: set[int] = set()
    status: list[str] = []
    for iid in ids:
        if iid is None:
            st = OUT_OF_CATALOG
        elif iid in seen_set:
            st = SEEN
        elif iid in listed:
            st = DUPLICATE
        elif remaining[iid] > 0:
            remaining[iid] -= 1
            st = HIT
        else:
            st = MISS
        if iid is not None:
            listed.add(iid)
        status.append(st)
    return Judgement(list(items), list(ids), status, n_groundtruth=n_gt, n_items=n_items)


def judge(
    text: str,
    catalog: Catalog,
    groundtruth: Iterable[int],
    seen: Iterable[int] = (),
    n_items: int = 20,
    require_year: bool = True,
) -> Judgement:
    """Parse ``text``, match every item against ``catalog`` and judge it against the ground-truth
    multiset ``groundtruth`` (catalog ids) and the ids in ``seen``."""
    items = parse_items(text, require_year=require_year)
    ids = [catalog.match(it.title, it.year) for it in items]
    return judge_items(items, ids, groundtruth, seen, n_items=n_items)
