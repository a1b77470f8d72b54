"""Parse a recommendation completion into ordered items with character spans.

A completion is split into lines (``\\n``, ``\\r\\n`` and ``\\r`` all end a line). On each line, list
numbering (``1.``, ``1)``, ``#1``, ``1 -``), bullets (``-``, ``*``, ``•``, ...), markdown (``**bold**``,
``__``, backticks, a leading ``#`` heading, ``>`` quote) and surrounding quotes are stripped. A line is an
item iff what remains is ``Title (YYYY)`` (four-digit year, then only spaces/closing punctuation).
With ``require_year=False`` any other non-empty line that is not prose (a preamble/outro: ends with ``:``,
starts like "Here are ...", or is a sentence) is an item with ``year=None``.

Two rules keep titles that look like markup intact:

* numbering is ``N.`` / ``N)`` NOT directly followed by a digit: in ``9.99 (2012)``, ``2.0 (2017)`` or
  ``11.22.63 (2016)`` the period is part of the title (``1. 2.0 (2017)`` still loses its ``1.``);
* ``**`` / ``__`` is markdown only where it opens or closes a word (not between two letters/digits), so a
  censored word keeps its asterisks: ``Don't F**k with Cats (2019)``, ``**M*A*S*H (1970)**``.

Yearless catalog items (ReDial has 616: users named them without a year). Such an item is recommended by its
catalog display form, the bare ``Title`` (``preprocess.common.item_line``, the oracle and popularity
baselines all write it that way). ``parse_items`` stays catalog-free: under ``require_year=True`` it returns
only ``Title (YYYY)`` lines. The catalog-aware rule lives in ``rewards.judge``: with years required, a bare
title line (not prose) ALSO counts as an item when it names a catalog entry that has no year
(``Catalog.match_undated``); any other line without a year is not an item, exactly as before. So the paper's
``Title (Year)`` behaviour holds for every dated title, and a yearless one is reachable in the only form
it has.

``ParsedItem.start``/``end`` is the span of the item's WHOLE line in the original text: from its first
non-whitespace character (numbering and markdown included) to its last non-whitespace character + 1
(the newline excluded), so ``text[item.start:item.end] == line.strip()``. ``line`` is the 0-based line
index. Token-to-item assignment (Rank-GRPO) uses exactly these spans.

Every line is parsed on its own (:func:`parse_line`), so batch scoring (``rewards.judge.match_texts``)
parses each distinct line once.

The prose rules and the numbering strip are guesses about text, so a catalog overrules them: :func:`read_line`
gives a line's reading WITH its prose flag and, when numbering was stripped, the reading with it kept; the judge
(``rewards.judge``) counts a prose line that is exactly a catalog title as that item (a 20-word product title is
not a sentence to the user), and prefers the numbered form when it is a catalog title itself (``#10 Solid Rubber
Stopper``, ``#1 Cheerleader Camp (2010)``). ``parse_line`` / ``parse_items`` are the catalog-free rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple

__all__ = ["LineReading", "ParsedItem", "iter_lines", "numbered_reading", "parse_items", "parse_line", "read_line",
           "split_lines", "clean_line", "is_prose"]


@dataclass(frozen=True)
class ParsedItem:
    title: str
    year: int | None
    start: int
    end: int
    line: int

    def display(self) -> str:
        return self.title if self.year is None else f"{self.title} ({self.year})"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Applied repeatedly (at most a few times) at the start of the line.
_BULLET = re.compile(r"^(?:[-*+\u2013\u2014]\s+|[\u2022\u00b7\u2023\u25aa\u25cf\u25e6\u2043\u2219]\s*|>\s*)")
_HEADING = re.compile(r"^#{1,6}\s+")
# Numbering is stripped once per line (a title may itself start with digits: "300: Rise of an Empire").
# "N." / "N)" directly followed by a digit is a decimal point inside a title ("2.0 (2017)"), not numbering.
_NUMBERING = re.compile(r"^(?:\#\s?\d{1,3}\s*[.):]?\s*|\d{1,3}\s*[.)](?!\d)\s*|\d{1,3}\s*[-\u2013\u2014]\s+)")
# "**" / "__" between two letters/digits is a censored word ("F**k"), not emphasis: only strip it at a word edge.
_INLINE_MARKDOWN = re.compile(r"(?<![^\W_])(?:\*\*|__)|(?:\*\*|__)(?![^\W_])|`+")
_SURROUND = " \t\"'*_\u201c\u201d\u2018\u2019"
_ITEM = re.compile(
    r"^(?P<title>.*?\S)\s*\(\s*(?P<year>\d{4})\s*\)(?P<tail>[\s.,;!*_\"'`\u201d\u2019]*)$"
)
# _ITEM from its "(": the year and the closing punctuation (parse_line's fast form of _ITEM, tested equal)
_ITEM_SUFFIX = re.compile(r"\(\s*(?P<year>\d{4})\s*\)(?P<tail>[\s.,;!*_\"'`\u201d\u2019]*)$")
_HAS_WORD = re.compile(r"[^\W_]")
_PROSE_START = re.compile(
    r"^(?:here\s+(?:are|is)\b|here'?s\b|below\s+(?:are|is)\b|based\s+on\b|"
    r"i\s+(?:would\s+|'d\s+|can\s+|will\s+)?(?:recommend|suggest)\b|i\s+hope\s+(?:you|this|these|that)\b|"
    r"hope\s+(?:you|this)\b|"
    r"these\s+(?:are|movies|films|recommendations)\b|the\s+following\s+(?:are|is|movies|films|titles|list)\b|"
    r"(?:sure|certainly|of\s+course|absolutely|okay|ok|great)\s*[,!.]|enjoy\s*[,!.]|let\s+me\s+know\b|"
    r"if\s+you\s+(?:like|liked|enjoy|enjoyed|want)\b|note\s*:|recommendations?\s*:)",
    re.I,
)


def iter_lines(text: str) -> Iterator[tuple[int, int, int, str]]:
    """Yield ``(line_index, start, end, stripped_line)`` for every line of ``text``.

    ``start``/``end`` delimit the line without its surrounding whitespace (``start == end`` for a
    blank line); line breaks are ``\\r\\n``, ``\\r`` or ``\\n``.
    """
    pos = 0
    idx = 0
    n = len(text)
    while True:
        m = _LINE_BREAK.search(text, pos)
        stop = m.start() if m else n
        raw = text[pos:stop]
        lead = len(raw) - len(raw.lstrip())
        stripped = raw.strip()
        s = pos + lead
        yield idx, s, s + len(stripped), stripped
        if m is None:
            return
        pos = m.end()
        idx += 1


_BULLET_FIRST = frozenset("-*+\u2013\u2014\u2022\u00b7\u2023\u25aa\u25cf\u25e6\u2043\u2219>")  # what _BULLET can start with


def clean_line(line: str, strip_numbering: bool = True) -> str:
    """Strip list numbering (unless ``strip_numbering=False``), bullets, markdown and surrounding quotes from one
    (stripped) line."""
    return _clean(line, strip_numbering)[0]


def _clean(line: str, strip_numbering: bool = True) -> tuple[str, str | None]:
    """``clean_line`` and the list numbering it stripped (``"#10 "``, ``"3. "``), or None."""
    if "*" in line or "_" in line or "`" in line:  # (a cheap test: most lines hold no markdown at all)
        line = _INLINE_MARKDOWN.sub("", line)
    s = line.strip()
    numbered = not strip_numbering
    number = None
    for _ in range(8):
        # Each pattern is tried only where its first character is (same result, far fewer regex calls).
        if not s or s[0].isalpha():  # no bullet, heading or numbering starts with a letter: nothing to strip
            break
        before = s
        if s[0] in _BULLET_FIRST:
            s = _BULLET.sub("", s, count=1)
        if s[:1] == "#":
            s = _HEADING.sub("", s, count=1)
        if not numbered and (s[:1] == "#" or s[:1].isdigit()):
            m = _NUMBERING.match(s)
            if m and m.end():
                numbered = True
                number = m.group()
                s = s[m.end():]
        s = s.strip()
        if s == before:
            break
    return s, number


def is_prose(line: str) -> bool:
    """A preamble/outro rather than an item: ends with ':', starts like a sentence to the user
    ("Here are ...", "I recommend ...", "Enjoy!"), or is a long sentence."""
    s = line.strip()
    if not s:
        return True
    if s.endswith(":"):
        return True
    if _PROSE_START.match(s):
        return True
    words = s.split()
    if len(words) >= 6 and s[-1] in ".!?" and not s.endswith(("..", ".)")):
        return True
    return len(words) > 15


def _clean_title(title: str) -> str:
    t = title.strip()
    if t and t[0] not in _SURROUND and t[-1] not in _SURROUND:  # nothing to strip (the common case)
        return t
    for _ in range(3):
        new = t.strip(_SURROUND)
        # Strip a lone leading apostrophe only when it pairs with a trailing one ("'71" keeps it).
        if t.startswith("'") and not t.endswith("'"):
            new = t.rstrip(_SURROUND).lstrip(_SURROUND.replace("'", ""))
        if new == t:
            break
        t = new
    return t


class LineReading(NamedTuple):
    """What one line says, before any catalog is asked: ``(title, year)``; ``prose``: a line without a year that
    reads as a sentence (only an exact catalog title makes it an item); ``number``: the list numbering stripped
    from it (``"#10 "``, ``"3. "``; None: none was); ``line``: the stripped line (for :func:`numbered_reading`)."""

    title: str
    year: int | None
    prose: bool
    number: str | None
    line: str


def _title_year(content: str, prose: bool = True) -> tuple[str, int | None, bool] | None:
    """``(title, year, is_prose)`` of a cleaned line, or None when it holds no title at all (``prose=False``: the
    prose test is skipped, ``is_prose`` False)."""
    if not content:
        return None
    # A "Title (YYYY)" line is an item whatever its first words. _ITEM's suffix holds exactly one "(", so it can
    # only start at the LAST "(": match the suffix there, and the title is what precedes it (same as _ITEM).
    paren = content.rfind("(")
    m = _ITEM_SUFFIX.match(content, paren) if paren > 0 else None
    if m:
        title = content[:paren].rstrip()
        if title:
            title = _clean_title(title)
            if title and _HAS_WORD.search(title):
                return title, int(m.group("year")), False
            return None
    title = _clean_title(content.rstrip(",;:"))
    if title and _HAS_WORD.search(title):
        return title, None, prose and is_prose(content)
    return None


def read_line(stripped: str) -> LineReading | None:
    """The :class:`LineReading` of one stripped line (years optional, prose flagged), or None: no title at all."""
    content, number = _clean(stripped)
    got = _title_year(content)
    if got is None:
        return None
    return LineReading(got[0], got[1], got[2], number, stripped)


def numbered_reading(reading: LineReading) -> tuple[str, int | None] | None:
    """``(title, year)`` of the line with its list numbering kept (``#10 Solid Rubber Stopper``), or None when no
    numbering was stripped or the line reads the same with it."""
    if reading.number is None:
        return None
    kept = _title_year(clean_line(reading.line, strip_numbering=False), prose=False)
    return kept[:2] if kept is not None and kept[:2] != (reading.title, reading.year) else None


def parse_line(stripped: str, require_year: bool = True) -> tuple[str, int | None] | None:
    """``(title, year)`` of one stripped line, or None when the line is not an item (module docstring).

    The catalog-free per-line rule (:func:`parse_items` applies it to every line); scoring uses :func:`read_line`.
    """
    got = _title_year(clean_line(stripped), prose=not require_year)
    if got is None or got[2] or (require_year and got[1] is None):
        return None
    return got[0], got[1]


def split_lines(text: str) -> list[str]:
    """The lines of ``text``, as :func:`iter_lines` splits them (``\\r\\n``, ``\\r``, ``\\n``), not stripped."""
    if "\r" not in text:
        return text.split("\n")
    return _LINE_BREAK.split(text)


def parse_items(text: str, require_year: bool = True) -> list[ParsedItem]:
    """Ordered items of a completion (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"parse_items expects a str, got {type(text).__name__}")
    items: list[ParsedItem] = []
    for idx, start, end, stripped in iter_lines(text):
        if not stripped:
            continue
        parsed = parse_line(stripped, require_year)
        if parsed is not None:
            items.append(ParsedItem(parsed[0], parsed[1], start, end, idx))
    return items
