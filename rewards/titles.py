"""Title normalisation and years: the keys the one title matcher (``rewards.catalog.Catalog``) compares.

``normalize_title`` is the comparison key (case-folded, whitespace/quote/``&``-normalised NFC, articles moved back
to the front: ``Matrix, The`` == ``The Matrix``); ``title_names`` the names an entry answers to; ``split_title_year``
/ ``display_title`` read and show ``Title (Year)``; ``validate_year`` the accepted years.
"""
from __future__ import annotations

import math
import re
import unicodedata
from functools import lru_cache
from typing import Any

MIN_YEAR = 1870
MAX_YEAR = 2100


# --------------------------------------------------------------------------------------------------
# Title normalisation
# --------------------------------------------------------------------------------------------------

# Curly / typographic quotes -> straight ones (before anything else looks at quotes).
_QUOTE_MAP = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'", "`": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    }
)
_SURROUND_CHARS = " \t\"*_"  # apostrophes are dropped later anyway
# Articles that catalogs (MovieLens) move to the end: "Matrix, The" -> "The Matrix". These are the ones
# ML-100k inverts; rarer ones (", I", ", En", ", Det") are too ambiguous to undo blindly.
_NORMALIZE_ARTICLES = ("the", "a", "an", "la", "le", "les", "l'", "il", "das", "der", "die", "el")
_ART_ALT = "|".join(re.escape(a) for a in sorted(_NORMALIZE_ARTICLES, key=len, reverse=True))
# "<rest>, <article>" optionally followed by one trailing parenthetical ("Blue Angel, The (Blaue Engel, Der)").
_TRAILING_ARTICLE = re.compile(rf"^(?P<rest>.*\S)\s*,\s*(?P<art>{_ART_ALT})(?P<paren>\s*\([^()]*\))?\s*$", re.I)
# Acronyms with dots ("A.I.", "L.A.", "E.T.") lose their dots so "AI" and "A.I." agree.
_ACRONYM = re.compile(r"(?<![^\W\d_])((?:[^\W\d_]\.){2,})")
_NON_WORD = re.compile(r"[\W_]+")
_SPACES = re.compile(r"\s+")


def _fold(text: str) -> str:
    """NFKC + casefold, dropping Latin combining accents (``Amélie`` == ``Amelie``)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not ("\u0300" <= ch <= "\u036f"))
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _invert_article(title: str, pattern: re.Pattern = _TRAILING_ARTICLE) -> str:
    m = pattern.match(title)
    if not m:
        return title
    art, rest, paren = m.group("art"), m.group("rest"), m.group("paren") or ""
    sep = "" if art.endswith("'") else " "
    return f"{art}{sep}{rest}{paren}"


def normalize_title(title: str) -> str:
    """Canonical matching key of a title.

    NFKC + casefold (Latin accents dropped), typographic quotes straightened, surrounding quotes and
    asterisks removed, apostrophes dropped, ``&`` -> ``and``, a trailing article moved to the front
    (``Matrix, The`` -> ``the matrix``; also ``, A``/``, An`` and ML-100k's ``, La``/``, Le``/``, Les``/
    ``, L'``/``, Il``/``, Das``/``, Der``/``, Die``/``, El``), dotted acronyms joined (``A.I.`` -> ``ai``),
    every other non letter/digit run collapsed to one space, stripped. Idempotent.
    """
    if not isinstance(title, str):
        raise TypeError(f"normalize_title expects a str, got {type(title).__name__}")
    return _normalize_cached(title)


@lru_cache(maxsize=1 << 16)
def _normalize_cached(title: str) -> str:
    # quotes first: NFKD would turn an acute-accent apostrophe (U+00B4) into a space + combining mark
    t = _fold(title.translate(_QUOTE_MAP)).translate(_QUOTE_MAP)
    t = _SPACES.sub(" ", t).strip(_SURROUND_CHARS)
    if len(t) > 1 and t[0] == t[-1] == "'" and not _TRAILING_ARTICLE.match(t):
        t = t[1:-1].strip(_SURROUND_CHARS)  # 'single-quoted' title (a trailing L' is an article)
    t = _invert_article(t)
    t = t.replace("&", " and ")
    t = t.replace("'", "")
    t = _ACRONYM.sub(lambda m: m.group(1).replace(".", ""), t)
    t = _NON_WORD.sub(" ", t)
    return t.strip()


_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\(\s*(?P<year>\d{4})\s*\)\s*$", re.S)


def split_title_year(text: str) -> tuple[str, int | None]:
    """``"Title (1999)"`` -> ``("Title", 1999)``; no trailing ``(YYYY)`` -> ``(title, None)``.

    Whitespace is normalised (``"Police Academy  (1984)"`` -> ``("Police Academy", 1984)``).
    """
    text = _SPACES.sub(" ", str(text)).strip()
    m = _TITLE_YEAR.match(text)
    if m and m.group("title").strip():
        return m.group("title").strip(), int(m.group("year"))
    return text, None


def display_title(raw: str) -> str:
    """Catalog display form: ``"Usual Suspects, The"`` -> ``"The Usual Suspects"``.

    A trailing parenthetical is kept (``"Blue Angel, The (Blaue Engel, Der)"`` ->
    ``"The Blue Angel (Blaue Engel, Der)"``); ``"Femme, L'"`` -> ``"L'Femme"``.
    """
    raw = _SPACES.sub(" ", str(raw)).strip()
    m = _TRAILING_ARTICLE.match(raw)
    if not m:
        return raw
    art, rest, paren = m.group("art"), m.group("rest"), m.group("paren") or ""
    art = art[0].upper() + art[1:]
    sep = "" if art.endswith("'") else " "
    return f"{art}{sep}{rest}{paren}"


_PAREN_SUFFIX = re.compile(r"^(?P<main>.*\S)\s*\((?P<alt>[^()]*)\)\s*$")
_AKA = re.compile(r"^(?:a\.?\s?k\.?\s?a\.?|also\s+known\s+as)\s*[:,]?\s+", re.I)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def clean_title(title: str) -> str:
    """A title as a catalog stores it: whitespace collapsed and stripped, in NFC."""
    return _nfc(_SPACES.sub(" ", title).strip())


def title_names(title: str) -> tuple[str, list[str]]:
    """``(full title, alternative names)`` of a catalog title: trailing parentheticals are peeled off one by one;
    each one's text (``a.k.a.`` / ``aka`` / ``also known as`` dropped) and each name left in front of one is an
    alternative name. ``Léon: The Professional (a.k.a. The Professional) (Léon)`` -> alternatives ``Léon: The
    Professional (a.k.a. The Professional)``, ``Léon``, ``Léon: The Professional``, ``The Professional``. A
    parenthetical of digits only ends the peeling (it is part of the title, not a name)."""
    alternatives: list[str] = []
    rest = title
    while True:
        m = _PAREN_SUFFIX.match(rest)
        if not m:
            break
        alt = m.group("alt").strip()
        if not alt or alt.isdigit():
            break
        rest = m.group("main")
        alternatives += [rest, _AKA.sub("", alt).strip()]
    return title, alternatives


def title_keys(title: str) -> list[tuple[str, int]]:
    """Index keys of a catalog title with a priority: the full title (0), each alternative name of
    :func:`title_names` (1). On equal years a full-title entry beats an alternate-title one."""
    full, alternatives = title_names(title)
    keys = [(normalize_title(full), 0)] + [(normalize_title(a), 1) for a in alternatives]
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for k, prio in keys:
        if k and k not in seen:
            seen.add(k)
            out.append((k, prio))
    return out


# --------------------------------------------------------------------------------------------------
# Years
# --------------------------------------------------------------------------------------------------


def validate_year(value: Any) -> tuple[int | None, str | None]:
    """Coerce a raw year to ``int`` within [MIN_YEAR, MAX_YEAR].

    Returns ``(year, problem)``: ``problem`` is ``None`` when the value was fine (or absent/None),
    otherwise a reason key for a catalog's ``report`` and the year is ``None``.
    """
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, "invalid_year_set_to_null"
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None, "invalid_year_set_to_null"
        value = int(value)
    if isinstance(value, str):
        s = value.strip()
        if not s or s.lower() in {"none", "null", "nan", "n/a", "na"}:
            return None, None
        if not re.fullmatch(r"[+-]?\d+", s):
            return None, "invalid_year_set_to_null"
        value = int(s)
    if not isinstance(value, int):
        return None, "invalid_year_set_to_null"
    if not MIN_YEAR <= value <= MAX_YEAR:
        return None, "invalid_year_set_to_null"
    return value, None
