"""MovieLens sources for ``preprocess.movielens``, the layout detected from the file names in ``--raw_dir``:

* none: ML-100k shipped inside the ``recbole`` wheel (``recbole/dataset_example/ml-100k/ml-100k.{inter,item}``,
  RecBole atomic files: tab-separated, typed headers such as ``user_id:token``);
* RecBole atomic files (``*.inter`` + ``*.item``) in a folder;
* official ML-100k (``u.data`` tab-separated, ``u.item`` pipe-separated latin-1, optional ``u.genre``);
* ML-1M (``ratings.dat``, ``movies.dat``, ``::``-separated, latin-1);
* ml-latest(-small) (``ratings.csv``, ``movies.csv``, UTF-8 CSV with a header).

Each reader returns the items and the ratings, with every bad field refused as a DataError naming file and line.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path

from preprocess.common import iter_lines_utf8, require_file
from preprocess.contract import DataError
from rewards.titles import display_title, split_title_year, validate_year

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


def recbole_ml100k_dir() -> Path:
    """The ML-100k atomic files shipped in the recbole wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.origin:
        raise FileNotFoundError("the recbole package is not installed; pass --raw_dir with MovieLens files")
    path = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise FileNotFoundError(f"{path}/ml-100k.inter not found in the recbole wheel; pass --raw_dir")
    return path


# --------------------------------------------------------------------------------------------------------------
# Readers: each returns (items: dict[id -> {"raw_title", "title", "year", "genres"}], ratings: list of
# (user: str, item: int, rating: float, timestamp: int), name)
# --------------------------------------------------------------------------------------------------------------


_INT64_MAX = 2**63 - 1
#: 9999-12-31T23:59:59Z: the last second a datetime (and a summary's time range) can show.
_MAX_TIMESTAMP = 253_402_300_799


def _int(value: str, path, line: int, field: str) -> int:
    """An integer field (ids, timestamps): DataError naming file, line and field unless it is an integer that fits
    the int64 columns of the processed data (1e30 used to crash inside pyarrow, far from the line)."""
    try:
        number = int(value.strip())
    except (ValueError, AttributeError):
        number = None
        try:
            f = float(value)
            if f.is_integer():
                number = int(f)
        except (ValueError, TypeError, OverflowError):
            pass
        if number is None:
            raise DataError(path, line=line, field=field, reason=f"must be an integer, got {value!r}") from None
    if not -_INT64_MAX - 1 <= number <= _INT64_MAX:
        raise DataError(path, line=line, field=field, reason=f"{value.strip()!r} does not fit a 64-bit integer")
    return number


def _timestamp(value: str, path, line: int, field: str) -> int:
    """Unix seconds in [0, 9999-12-31]: a later (or negative) time is a broken export, not a rating time."""
    ts = _int(value, path, line, field)
    if not 0 <= ts <= _MAX_TIMESTAMP:
        raise DataError(path, line=line, field=field,
                        reason=f"timestamp {value.strip()!r} is outside [0, {_MAX_TIMESTAMP}] (unix seconds up to "
                               "the year 9999)")
    return ts


def _float(value: str, path, line: int, field: str) -> float:
    try:
        number = float(value)
    except (ValueError, TypeError):
        raise DataError(path, line=line, field=field, reason=f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DataError(path, line=line, field=field, reason=f"must be a finite number, got {value!r}")
    return number


def _rating(value: str, path, line: int, field: str) -> float:
    """A MovieLens rating: 0.5-5 stars (ml-latest), 1-5 (ML-100k / ML-1M); outside [0, 5] is a broken file."""
    rating = _float(value, path, line, field)
    if not 0 <= rating <= 5:
        raise DataError(path, line=line, field=field, reason=f"a rating must be in [0, 5], got {rating}")
    return rating


def _item(raw_title: str, title: str, year, genres: list[str]) -> dict:
    year, _ = validate_year(year)
    return {"title": display_title(title) if title.strip() else raw_title.strip(), "year": year,
            "raw_title": raw_title, "genres": genres}


def _split_fields(line: str, sep: str, n: int, path, number: int, names: list[str]) -> list[str]:
    parts = line.rstrip("\r\n").split(sep)
    if len(parts) < n:
        missing = names[len(parts)] if len(parts) < len(names) else f"column {len(parts) + 1}"
        raise DataError(path, line=number, field=missing,
                        reason=f"expected {n} {sep!r}-separated fields, got {len(parts)}")
    return parts


def _read_atomic(path: Path, required: list[str]) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    lines = iter_lines_utf8(require_file(path, "a RecBole atomic file"))
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(path, line=1, reason="empty file (expected a typed header such as user_id:token)") from None
    cols = {h.split(":", 1)[0].strip(): i for i, h in enumerate(header.rstrip("\r\n").split("\t"))}
    for name in required:
        if name not in cols:
            raise DataError(path, line=1, field=name, reason=f"missing column in header {sorted(cols)}")
    rows = []
    for number, line in lines:
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < len(cols):
            missing = [n for n, i in cols.items() if i >= len(parts)][0]
            raise DataError(path, line=number, field=missing,
                            reason=f"expected {len(cols)} tab-separated fields, got {len(parts)}")
        rows.append((number, parts))
    return cols, rows


def read_recbole(folder: Path):
    inter = sorted(folder.glob("*.inter"))
    item = sorted(folder.glob("*.item"))
    if len(inter) != 1 or len(item) != 1:
        raise DataError(folder, reason=f"expected one *.inter and one *.item file, found {len(inter)} and {len(item)}")
    cols, rows = _read_atomic(item[0], ["item_id"])
    title_col = "movie_title" if "movie_title" in cols else "title"
    if title_col not in cols:
        raise DataError(item[0], line=1, field="movie_title", reason="missing column (movie_title or title)")
    year_col = next((c for c in ("release_year", "year") if c in cols), None)
    genre_col = next((c for c in ("class", "genre", "genres") if c in cols), None)
    items = {}
    for number, parts in rows:
        iid = _int(parts[cols["item_id"]], item[0], number, "item_id")
        if iid in items:
            raise DataError(item[0], line=number, field="item_id", reason=f"duplicate item id {iid}")
        raw = parts[cols[title_col]].strip()
        title, year = split_title_year(raw)
        if year_col is not None and validate_year(parts[cols[year_col]])[0] is not None:
            year = parts[cols[year_col]]
        genres = parts[cols[genre_col]].split() if genre_col else []
        items[iid] = _item(raw, title, year, genres)
    cols, rows = _read_atomic(inter[0], ["user_id", "item_id", "timestamp"])
    ratings = []
    for number, parts in rows:
        ratings.append((parts[cols["user_id"]].strip(), _int(parts[cols["item_id"]], inter[0], number, "item_id"),
                        _rating(parts[cols["rating"]], inter[0], number, "rating") if "rating" in cols else 1.0,
                        _timestamp(parts[cols["timestamp"]], inter[0], number, "timestamp")))
    name = inter[0].stem
    return items, ratings, name


def _latin1_lines(path: Path):
    with open(require_file(path, "a MovieLens file"), "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw.decode("latin-1")


def read_ml100k(folder: Path):
    genres = list(ML100K_GENRES)
    if (folder / "u.genre").exists():
        pairs = [ln.strip().split("|") for _, ln in _latin1_lines(folder / "u.genre") if ln.strip()]
        genres = [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))]
    items = {}
    path = folder / "u.item"
    names = ["movie id", "movie title", "release date", "video release date", "IMDb URL"]
    for number, line in _latin1_lines(path):
        if not line.strip():
            continue
        parts = _split_fields(line, "|", 5, path, number, names)
        iid = _int(parts[0], path, number, "movie id")
        if iid in items:
            raise DataError(path, line=number, field="movie id", reason=f"duplicate item id {iid}")
        raw = parts[1].strip()
        title, year = split_title_year(raw)
        if year is None and parts[2].strip():
            year = parts[2].strip()[-4:]
        flags = parts[5:5 + len(genres)]
        items[iid] = _item(raw, title, year, [g for g, f in zip(genres, flags) if f.strip() == "1"])
    ratings = []
    path = folder / "u.data"
    names = ["user id", "item id", "rating", "timestamp"]
    for number, line in _latin1_lines(path):
        if not line.strip():
            continue
        u, i, r, t = _split_fields(line, "\t", 4, path, number, names)[:4]
        ratings.append((u.strip(), _int(i, path, number, "item id"), _rating(r, path, number, "rating"),
                        _timestamp(t, path, number, "timestamp")))
    return items, ratings, "ml-100k"


def read_ml1m(folder: Path):
    items = {}
    path = folder / "movies.dat"
    for number, line in _latin1_lines(path):
        if not line.strip():
            continue
        parts = _split_fields(line, "::", 3, path, number, ["MovieID", "Title", "Genres"])
        iid = _int(parts[0], path, number, "MovieID")
        if iid in items:
            raise DataError(path, line=number, field="MovieID", reason=f"duplicate item id {iid}")
        raw = parts[1].strip()
        title, year = split_title_year(raw)
        items[iid] = _item(raw, title, year, [g for g in parts[2].strip().split("|") if g])
    ratings = []
    path = folder / "ratings.dat"
    for number, line in _latin1_lines(path):
        if not line.strip():
            continue
        u, i, r, t = _split_fields(line, "::", 4, path, number, ["UserID", "MovieID", "Rating", "Timestamp"])[:4]
        ratings.append((u.strip(), _int(i, path, number, "MovieID"), _rating(r, path, number, "Rating"),
                        _timestamp(t, path, number, "Timestamp")))
    return items, ratings, "ml-1m"


def _csv_rows(path: Path, required: list[str]):
    text = "".join(line for _, line in iter_lines_utf8(require_file(path, "a MovieLens file")))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for name in required:
        if name not in (reader.fieldnames or []):
            raise DataError(path, line=1, field=name, reason=f"missing column in header {reader.fieldnames}")
    for row in reader:
        missing = [k for k in required if row.get(k) is None]
        if missing:
            raise DataError(path, line=reader.line_num, field=missing[0], reason="missing value")
        yield reader.line_num, row


def read_ml_latest(folder: Path):
    items = {}
    path = folder / "movies.csv"
    for number, row in _csv_rows(path, ["movieId", "title", "genres"]):
        iid = _int(row["movieId"], path, number, "movieId")
        if iid in items:
            raise DataError(path, line=number, field="movieId", reason=f"duplicate item id {iid}")
        raw = row["title"].strip()
        title, year = split_title_year(raw)
        genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
        items[iid] = _item(raw, title, year, genres)
    ratings = []
    path = folder / "ratings.csv"
    for number, row in _csv_rows(path, ["userId", "movieId", "rating", "timestamp"]):
        ratings.append((row["userId"].strip(), _int(row["movieId"], path, number, "movieId"),
                        _rating(row["rating"], path, number, "rating"),
                        _timestamp(row["timestamp"], path, number, "timestamp")))
    return items, ratings, folder.name if folder.name.startswith("ml-") else "ml-latest"


LAYOUTS = {
    "ml-100k": (("u.data", "u.item"), read_ml100k),
    "ml-1m": (("ratings.dat", "movies.dat"), read_ml1m),
    "ml-latest": (("ratings.csv", "movies.csv"), read_ml_latest),
}


def detect_layout(folder: Path) -> str:
    """``recbole`` / ``ml-100k`` / ``ml-1m`` / ``ml-latest`` from the files present in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--raw_dir {folder} is not a directory")
    found = [name for name, (files, _) in LAYOUTS.items() if all((folder / f).exists() for f in files)]
    if any(folder.glob("*.inter")) and any(folder.glob("*.item")):
        found.append("recbole")
    if len(found) != 1:
        expected = "; ".join(" + ".join(f) for f, _ in LAYOUTS.values()) + "; *.inter + *.item"
        raise DataError(folder, reason=(f"ambiguous MovieLens layout {found}" if found else
                                        f"no MovieLens files found (expected one of: {expected})"))
    return found[0]


def read_movielens(raw_dir: str | Path | None):
    """``(items, ratings, default name, layout, folder)`` of ``raw_dir`` (default: ML-100k in the recbole wheel)."""
    folder = recbole_ml100k_dir() if raw_dir is None else Path(raw_dir)
    layout = detect_layout(folder)
    reader = read_recbole if layout == "recbole" else LAYOUTS[layout][1]
    items, ratings, name = reader(folder)
    return items, ratings, name, layout, folder
