"""The one title matcher: ``Catalog.match`` and catalog loading (title normalisation: ``rewards.titles``).

Everything that turns a ``(title, year)`` string pair into a catalog id goes through this module, for
rewards, evaluation and preprocessing alike (docs/methods.md §2.10: one matching function everywhere).

Matching rules (docs/ARCHITECTURE.md):

* titles are compared after :func:`normalize_title` (an O(1) dict lookup); every name an entry carries is indexed
  (:func:`title_names`: the full title, then as alternative names the main name and each trailing parenthetical,
  ``a.k.a.`` dropped: ``Twelve Monkeys (a.k.a. 12 Monkeys)`` answers to ``Twelve Monkeys`` and ``12 Monkeys``);
* titles are stored in Unicode NFC, so an NFD spelling (``Ame\u0301lie``) is the same entry and spelling as its
  NFC twin;
* among the catalog entries with that title: the exact year first, then the nearest year within
  ``year_tolerance`` (ties -> the earlier year, then the entry whose title is written exactly as the query's,
  up to case and spacing: ``Adaptation. (2002)`` and ``Adaptation (2002)`` are two entries, each reachable);
  catalog entries without a year match any query year, but only when no dated entry does;
* a query without a year matches the title's undated entry when it has one (ReDial's yearless movies:
  ``The Mummy`` is the undated entry even though ``The Mummy (1999)`` exists too), otherwise only a title
  that has exactly one catalog entry; among several undated entries the exact spelling, then catalog order;
* an optional rapidfuzz fallback over the normalised keys when ``fuzzy_threshold`` is set;
* ``exact=True`` (a line that reads as prose: only a full catalog title makes it an item) uses full titles only, no
  alternative names and no fuzzy fallback.

Entries the matcher cannot tell apart (same key and year, same spelling: a product listed twice) are one item to it:
:meth:`Catalog.canonical_id` is the id it returns for an entry's own title, and scoring maps ground truth, seen and
listed ids through it (the rule the MovieLens builder applies when it merges such entries).

Ids are ints; a ``{"Title (Year)": "<id>"}`` map (Reddit-Movie's ``entity2id.json``) keeps its string ids.
"""
from __future__ import annotations

import csv
import io
import json
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from rewards.titles import (
    _normalize_cached,
    clean_title,
    display_title,
    normalize_title,
    split_title_year,
    title_keys,
    validate_year,
)

__all__ = [
    "Catalog",
    "CatalogError",
    "RestrictedUnpickler",
    "load_catalog",
    "resolve_require_year",
    "restricted_pickle_loads",
]


class CatalogError(ValueError):
    """A catalog could not be built; the message names the file and the row/field at fault."""


# --------------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------------


class Catalog:
    """An item catalog with the one title matcher.

    ``items``: dicts ``{"id": int, "title": str, "year": int | None, ...}`` (extra keys kept; a digit-string id
    becomes an int). ``string_ids=True`` keeps string ids as written (a title -> id map's ids, e.g. ``"Q42"`` or
    ``"00123"``) and accepts int ids beside them. Titles are stored whitespace-collapsed, in NFC.
    Invalid years (outside 1870..2100 or unparsable) become ``None`` and are counted in ``report``.
    """

    def __init__(
        self,
        items: Iterable[dict],
        year_tolerance: int = 2,
        fuzzy_threshold: float | None = None,
        source: str = "<memory>",
        report: dict | None = None,
        string_ids: bool = False,
    ) -> None:
        self.source = str(source)
        if year_tolerance is None or year_tolerance < 0:
            raise ValueError(f"year_tolerance must be >= 0, got {year_tolerance!r}")
        self.year_tolerance = int(year_tolerance)
        if fuzzy_threshold is not None and not 0 < float(fuzzy_threshold) <= 100:
            raise ValueError(f"fuzzy_threshold must be in (0, 100], got {fuzzy_threshold!r}")
        self.fuzzy_threshold = None if fuzzy_threshold is None else float(fuzzy_threshold)
        self._report: Counter = Counter(report or {})
        self._items: list[dict] = []
        self._by_id: dict[int | str, dict] = {}
        self._index: dict[str, list[tuple[int, int]]] = {}  # key -> [(id, priority)] in catalog order
        self._spelling: dict[int | str, str] = {}  # id -> casefolded title, the tie-break between equal keys
        self._canonical: dict | None = None  # id -> the id the matcher returns for its own title (lazily built)

        for row, raw in enumerate(items):
            if not isinstance(raw, dict):
                raise CatalogError(f"{self.source}: row {row}: expected a dict, got {type(raw).__name__}")
            item = dict(raw)
            iid = item.get("id")
            if isinstance(iid, bool) or not isinstance(iid, int):
                if string_ids and isinstance(iid, str) and iid.strip():
                    pass  # kept as written: predictions name this item by exactly this string
                elif isinstance(iid, str) and re.fullmatch(r"\s*[+-]?\d+\s*", iid):
                    iid = int(iid)
                else:
                    raise CatalogError(f"{self.source}: row {row}: field 'id' must be an int"
                                       f"{' or a non-empty string' if string_ids else ''}, got {iid!r}")
            item["id"] = iid
            title = item.get("title")
            if not isinstance(title, str) or not title.strip():
                raise CatalogError(f"{self.source}: row {row} (id {iid}): field 'title' is missing or empty")
            item["title"] = clean_title(title)
            year, problem = validate_year(item.get("year"))
            if problem:
                self._report[problem] += 1
            item["year"] = year
            if iid in self._by_id:
                raise CatalogError(f"{self.source}: row {row}: duplicate id {iid!r}")
            self._by_id[iid] = item
            self._spelling[iid] = item["title"].casefold()
            self._items.append(item)
            for key, prio in title_keys(item["title"]):
                self._index.setdefault(key, []).append((iid, prio))

        if not self._items:
            raise CatalogError(f"{self.source}: empty catalog (no items)")
        self._has_string_ids = any(isinstance(iid, str) for iid in self._by_id)
        # "<number> <word>" opening every full title that starts with a number ("10 solid" of "#10 Solid Rubber
        # Stopper"): a numbered line is looked up as a whole only when its number and first word open one
        self._number_heads = {" ".join(k.split(" ", 2)[:2]) for k, c in self._index.items()
                              if k[:1].isdigit() and any(prio == 0 for _, prio in c)}
        self._lead_numbers = {head.split(" ", 1)[0] for head in self._number_heads}
        self._keys: list[str] | None = None  # lazily built for the fuzzy fallback

    # ---- container protocol ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __getitem__(self, item_id: int) -> dict:
        try:
            return self._by_id[item_id]
        except KeyError:
            raise KeyError(f"id {item_id!r} not in catalog {self.source}") from None

    def __iter__(self) -> Iterator[dict]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items, source={self.source!r}, year_tolerance={self.year_tolerance})"

    @property
    def ids(self) -> list[int]:
        return [it["id"] for it in self._items]

    @property
    def items(self) -> list[dict]:
        return list(self._items)

    @property
    def has_string_ids(self) -> bool:
        """True when some id is a string (a title -> id map's ids, kept as written)."""
        return self._has_string_ids

    @property
    def has_years(self) -> bool:
        """True when any item has a year (movie catalogs); False for yearless catalogs (Amazon product titles)."""
        return any(it["year"] is not None for it in self._items)

    @property
    def report(self) -> dict:
        """Counts of rows fixed/skipped while loading, by reason (e.g. ``invalid_year_set_to_null``)."""
        return dict(self._report)

    def to_list(self) -> list[dict]:
        """JSON-ready list of item dicts (the ``catalog.json`` format)."""
        return [dict(it) for it in self._items]

    def display(self, item_id: int) -> str:
        """``"Title (Year)"``, or ``"Title"`` when the year is unknown."""
        it = self[item_id]
        return it["title"] if it["year"] is None else f"{it['title']} ({it['year']})"

    # ---- matching ----------------------------------------------------------------------------
    def ids_for_title(self, title: str) -> list[int]:
        """All ids whose (normalised) title equals ``title``'s, any year, in catalog order."""
        return [iid for iid, _ in self._index.get(normalize_title(title), ())]

    def _fuzzy_key(self, key: str) -> str | None:
        from rapidfuzz import fuzz, process  # optional dependency, only for the fallback

        if self._keys is None:
            self._keys = list(self._index)
        hit = process.extractOne(key, self._keys, scorer=fuzz.ratio, score_cutoff=self.fuzzy_threshold)
        return None if hit is None else hit[0]

    def _candidates(self, title: str, exact: bool = False) -> list[tuple[int, int]]:
        key = normalize_title(title)
        if not key:
            return []
        cands = self._index.get(key)
        if exact:  # full titles only, no fuzzy fallback
            return [c for c in cands if c[1] == 0] if cands else []
        if cands is None and self.fuzzy_threshold is not None:
            fk = self._fuzzy_key(key)
            cands = self._index.get(fk) if fk is not None else None
        return cands or []

    def match(self, title: str, year: int | str | None = None, exact: bool = False) -> int | None:
        """The catalog id of ``(title, year)``, or ``None`` (rules in the module docstring).

        ``year`` may be an int, a digit string or ``None``; with ``year=None`` a trailing ``(YYYY)`` in
        ``title`` is used as the year. ``exact=True``: full catalog titles only (no alternative names, no fuzzy).
        """
        if title is None:
            return None
        title = str(title)
        if year is None:
            title, year = split_title_year(title)
        elif not isinstance(year, int) or isinstance(year, bool):
            y, problem = validate_year(year)
            if problem:
                return None
            year = y
        cands = self._candidates(title, exact)
        if not cands:
            return None
        if year is None:
            undated = self._undated(cands, title)
            if undated is not None:
                return undated
            # only a title with a single entry (full titles first, alternate titles if there are none)
            primary = [iid for iid, prio in cands if prio == 0] or [iid for iid, _ in cands]
            return primary[0] if len(primary) == 1 else None
        spelled = clean_title(title).casefold() if len(cands) > 1 else None
        best: int | None = None
        best_key: tuple[int, int, int, bool] | None = None
        undated: int | None = None
        undated_prio = 2
        for iid, prio in cands:
            y = self._by_id[iid]["year"]
            if y is None:
                if prio < undated_prio:
                    undated, undated_prio = iid, prio
                continue
            d = abs(y - year)
            if d > self.year_tolerance:
                continue
            # nearest first, then the earlier year, then full title, then the exact spelling; then catalog order
            k = (d, y, prio, spelled is not None and self._spelling[iid] != spelled)
            if best_key is None or k < best_key:
                best, best_key = iid, k
        if best is not None:
            return best
        return undated

    def _undated(self, cands: list[tuple[int, int]], title: str) -> int | None:
        """The entry a yearless query names among ``cands``: an undated one (full titles before alternate
        titles, then the exact spelling, then catalog order), or None when every entry has a year."""
        undated = [(prio, iid) for iid, prio in cands if self._by_id[iid]["year"] is None]
        if not undated:
            return None
        if len(undated) > 1:
            spelled = clean_title(str(title)).casefold()
            undated.sort(key=lambda pi: (pi[0], self._spelling[pi[1]] != spelled))  # stable: catalog order
        return undated[0][1]

    def match_undated(self, title: str, exact: bool = False) -> int | None:
        """The catalog id of a line written WITHOUT a year when years are required: the title's undated
        entry (as :meth:`match` picks it), or None when the title has none (a dated title must carry its year)."""
        if title is None:
            return None
        cands = self._candidates(str(title), exact)
        return self._undated(cands, str(title)) if cands else None

    def may_be_numbered_title(self, number: str, title: str) -> bool:
        """False when no full title starts with ``number`` followed by ``title``'s first word: then the line
        ``<number>. <title>`` is surely no catalog title as a whole (a fast pre-check; True means "look it up")."""
        if number not in self._lead_numbers:
            return False
        first = _normalize_cached(title).split(" ", 1)[0]
        return f"{number} {first}" in self._number_heads

    # ---- entries the matcher cannot tell apart ------------------------------------------------
    def _canonical_map(self) -> dict:
        if self._canonical is None:
            canonical = {}
            for it in self._items:
                iid, title, year = it["id"], it["title"], it["year"]
                cid = self.match(title, year) if year is not None else self._undated(self._candidates(title), title)
                if cid is not None and cid != iid:
                    canonical[iid] = cid
            self._canonical = canonical
        return self._canonical

    def canonical_id(self, item_id):
        """The id the matcher returns for this entry's own title and year: ``item_id`` itself unless an earlier
        entry has the same key, year and spelling (then no line can name ``item_id``, so scoring counts the two as
        one item). An id the catalog does not hold is returned unchanged."""
        return self._canonical_map().get(item_id, item_id)

    @property
    def merged_ids(self) -> dict:
        """``{id: canonical id}`` of every entry the matcher cannot tell apart from an earlier one."""
        return dict(self._canonical_map())

    def canonical_groundtruth(self, ids: Iterable) -> list:
        """Ground-truth ids mapped to :meth:`canonical_id`, in order; an item that the mapping named twice (both
        entries of a duplicate pair in one ground truth) is kept once, so the ideal list stays reachable (other
        repeats are kept: the ground truth is a multiset)."""
        mapped = [(iid, self.canonical_id(iid)) for iid in ids or ()]
        merged = {cid for iid, cid in mapped if cid != iid}
        out: list = []
        for _, cid in mapped:
            if cid in merged and cid in out:
                continue
            out.append(cid)
        return out


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def resolve_require_year(catalog: "Catalog", require_year: bool | None = None) -> bool:
    """THE rule for whether only ``Title (Year)`` lines are items, used by training and evaluation alike:
    an explicit ``require_year`` wins; ``None`` means "from the catalog" (years required iff it has any)."""
    if require_year is not None:
        return bool(require_year)
    return catalog.has_years


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses EVERY global: only plain containers/str/int/float/bytes load."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden (restricted unpickler)")


def restricted_pickle_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CatalogError(f"{path}: not valid UTF-8 (byte offset {e.start}, line {line}): {e.reason}") from None


def _items_from_rows(rows: list, path: Path) -> list[dict]:
    """A JSON/pickle list of dicts, or of ``[title, year]`` pairs (ids = list index)."""
    if not isinstance(rows, list):
        raise CatalogError(f"{path}: expected a list of items at the top level, got {type(rows).__name__}")
    items: list[dict] = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            items.append(row)
        elif isinstance(row, (list, tuple)) and len(row) == 2:
            items.append({"id": i, "title": row[0], "year": row[1]})
        else:
            raise CatalogError(f"{path}: row {i}: expected a dict or a [title, year] pair, got {row!r:.80}")
    return items


def _items_from_title_map(mapping: dict, path: Path) -> list[dict]:
    """A ``{"Title (Year)": id}`` map (Reddit-Movie's ``entity2id.json``): ids are strings (kept as written) or ints;
    a key without a trailing ``(YYYY)`` is a yearless title."""
    if not mapping:
        raise CatalogError(f"{path}: empty JSON object (expected a title -> id map or a list of items)")
    items: list[dict] = []
    owner: dict = {}
    for key, iid in mapping.items():
        if isinstance(iid, bool) or not isinstance(iid, (str, int)) or (isinstance(iid, str) and not iid.strip()):
            raise CatalogError(f"{path}: key {key!r:.80}: the id must be a non-empty string or an int, got {iid!r:.80}"
                               " (a title -> id map is expected)")
        if not key.strip():
            raise CatalogError(f"{path}: an empty title maps to id {iid!r}")
        if iid in owner:
            raise CatalogError(f"{path}: key {key!r:.80}: id {iid!r} is also the id of {owner[iid]!r:.80}")
        owner[iid] = key
        title, year = split_title_year(key)
        items.append({"id": iid, "title": title, "year": year})
    if all(re.fullmatch(r"\s*\d+\s*", k) for k in mapping) and not all(isinstance(v, int) for v in mapping.values()):
        raise CatalogError(f"{path}: every key is a number: this looks like an id -> title map; a title -> id map "
                           '({"Title (Year)": "<id>"}) or a list of items is expected')
    return items


def _int_field(value: str, path: Path, line: int, field: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise CatalogError(f"{path}: line {line}: field '{field}' must be an int, got {value!r}") from None


def _load_csv(text: str, path: Path, report: Counter) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = set(reader.fieldnames or [])
    items: list[dict] = []
    if {"movieId", "movieName"} <= fields:  # ReDial movies_with_mentions.csv
        for row in reader:
            line = reader.line_num
            name = row.get("movieName")
            if name is None or not name.strip():
                raise CatalogError(f"{path}: line {line}: field 'movieName' is empty")
            title, year = split_title_year(name)
            if year is None:
                report["no_year_in_name"] += 1
            item = {"id": _int_field(row["movieId"], path, line, "movieId"), "title": title, "year": year}
            if row.get("nbMentions") not in (None, ""):
                item["popularity"] = _int_field(row["nbMentions"], path, line, "nbMentions")
            items.append(item)
    elif {"id", "title"} <= fields:
        for row in reader:
            line = reader.line_num
            item: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
            item["id"] = _int_field(row["id"], path, line, "id")
            if not (row.get("title") or "").strip():
                raise CatalogError(f"{path}: line {line}: field 'title' is empty")
            item["year"] = row.get("year") or None
            if "popularity" in item and item["popularity"] not in (None, ""):
                item["popularity"] = _int_field(item["popularity"], path, line, "popularity")
            items.append(item)
    else:
        raise CatalogError(
            f"{path}: unrecognised CSV header {reader.fieldnames!r}; expected id,title[,year] "
            "or ReDial's movieId,movieName,nbMentions"
        )
    return items


def _load_atomic_item(text: str, path: Path) -> list[dict]:
    """RecBole atomic ``.item`` file (ML-100k): tab-separated, header ``name:type``."""
    lines = text.splitlines()
    if not lines:
        raise CatalogError(f"{path}: empty file")
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    col = {h: i for i, h in enumerate(header)}
    id_col = col.get("item_id")
    title_col = col.get("movie_title", col.get("title"))
    if id_col is None or title_col is None:
        raise CatalogError(f"{path}: header {lines[0]!r} lacks item_id and movie_title/title")
    year_col = col.get("release_year", col.get("year"))
    genre_col = col.get("class", col.get("genre"))
    items = []
    for ln, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) <= max(id_col, title_col):
            raise CatalogError(f"{path}: line {ln}: expected {len(header)} tab-separated fields, got {len(parts)}")
        raw = parts[title_col].strip()
        year: Any = parts[year_col].strip() if year_col is not None and year_col < len(parts) else None
        title = raw
        name, name_year = split_title_year(raw)
        if name_year is not None and validate_year(year)[0] is None:  # "Title (1995)" with a bad year field
            title, year = name, name_year
        item: dict[str, Any] = {
            "id": _int_field(parts[id_col], path, ln, "item_id"),
            "title": display_title(title),
            "raw_title": raw,
            "year": year,
        }
        if genre_col is not None and genre_col < len(parts) and parts[genre_col].strip():
            item["genres"] = parts[genre_col].split()
        items.append(item)
    return items


def load_catalog(path: str | Path, **kw: Any) -> Catalog:
    """Load a catalog by file suffix.

    * ``.json``: our list of item dicts, or a list of ``[title, year]`` pairs (ids = list index), or a
      ``{"Title (Year)": "<id>"}`` map (Reddit-Movie's ``entity2id.json``; string ids kept as written);
    * ``.csv``: columns ``id,title[,year,...]`` or ReDial's ``movieId,movieName,nbMentions``
      (``movieName`` = ``"Title  (Year)"``; ``popularity`` = ``nbMentions``);
    * ``.pkl``/``.pickle``: Rank-GRPO's ``gt_catalog.pkl`` (a list of ``(title, year)`` tuples, ids = list
      index), read with a restricted unpickler that refuses every global;
    * ``.item``: a RecBole atomic item file (ML-100k), titles turned into display form.

    Keyword arguments go to :class:`Catalog` (``year_tolerance``, ``fuzzy_threshold``).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    data = path.read_bytes()
    suffix = path.suffix.lower()
    report: Counter = Counter()
    if suffix == ".json":
        text = _decode(data, path)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise CatalogError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if isinstance(rows, dict) and isinstance(rows.get("items"), list):
            rows = rows["items"]
        if isinstance(rows, dict):
            return Catalog(_items_from_title_map(rows, path), source=str(path), report=report, string_ids=True, **kw)
        items = _items_from_rows(rows, path)
    elif suffix == ".csv":
        items = _load_csv(_decode(data, path), path, report)
    elif suffix in (".pkl", ".pickle"):
        try:
            rows = restricted_pickle_loads(data)
        except pickle.UnpicklingError as e:
            raise CatalogError(f"{path}: refused to unpickle: {e}") from None
        except Exception as e:  # truncated / corrupt pickles raise all sorts of errors
            raise CatalogError(f"{path}: could not unpickle ({type(e).__name__}: {e})") from None
        items = _items_from_rows(rows, path)
    elif suffix == ".item":
        items = _load_atomic_item(_decode(data, path), path)
    else:
        raise CatalogError(f"{path}: unsupported catalog suffix {suffix!r} (use .json, .csv, .pkl, .item)")
    return Catalog(items, source=str(path), report=report, **kw)
