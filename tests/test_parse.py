"""rewards.parse: which lines are items, what their titles/years are, and exact character spans."""
from __future__ import annotations

import json

import pytest

from conftest import REDDIT_DIR, require
from rewards.parse import ParsedItem, clean_line, is_prose, iter_lines, parse_items
from references import ref_parse_line


def _check_spans(text: str, items: list[ParsedItem]) -> None:
    """Every span is the item's whole line, stripped, and ``line`` is its 0-based index."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for it in items:
        assert text[it.start:it.end] == lines[it.line].strip()
        assert "\n" not in text[it.start:it.end] and "\r" not in text[it.start:it.end]


@pytest.mark.parametrize(
    "line, title, year",
    [
        ("The Matrix (1999)", "The Matrix", 1999),
        ("1. The Matrix (1999)", "The Matrix", 1999),
        ("1.The Matrix (1999)", "The Matrix", 1999),
        ("12) The Matrix (1999)", "The Matrix", 1999),
        ("#1 The Matrix (1999)", "The Matrix", 1999),
        ("#1: The Matrix (1999)", "The Matrix", 1999),
        ("1 - The Matrix (1999)", "The Matrix", 1999),
        ("3 \u2013 The Matrix (1999)", "The Matrix", 1999),
        ("- The Matrix (1999)", "The Matrix", 1999),
        ("* The Matrix (1999)", "The Matrix", 1999),
        ("\u2022 The Matrix (1999)", "The Matrix", 1999),
        ("\u2022The Matrix (1999)", "The Matrix", 1999),
        ("- 1. The Matrix (1999)", "The Matrix", 1999),
        ("**The Matrix** (1999)", "The Matrix", 1999),
        ("**The Matrix (1999)**", "The Matrix", 1999),
        ("1. **The Matrix (1999)**", "The Matrix", 1999),
        ("__The Matrix__ (1999)", "The Matrix", 1999),
        ("`The Matrix (1999)`", "The Matrix", 1999),
        ("## The Matrix (1999)", "The Matrix", 1999),
        ('"The Matrix" (1999)', "The Matrix", 1999),
        ('"The Matrix (1999)"', "The Matrix", 1999),
        ("\u201cThe Matrix\u201d (1999)", "The Matrix", 1999),
        ("*The Matrix* (1999)", "The Matrix", 1999),
        ("The Matrix (1999).", "The Matrix", 1999),
        ("The Matrix (1999),", "The Matrix", 1999),
        ("The Matrix ( 1999 )", "The Matrix", 1999),
        ("The Matrix(1999)", "The Matrix", 1999),
        # titles that start with digits or punctuation survive the numbering strip
        ("12 Angry Men (1957)", "12 Angry Men", 1957),
        ("2. 12 Angry Men (1957)", "12 Angry Men", 1957),
        ("300: Rise of an Empire (2014)", "300: Rise of an Empire", 2014),
        ("1. 300: Rise of an Empire (2014)", "300: Rise of an Empire", 2014),
        ("2001: A Space Odyssey (1968)", "2001: A Space Odyssey", 1968),
        ("(500) Days of Summer (2009)", "(500) Days of Summer", 2009),
        ("1917 (2019)", "1917", 2019),
        ("9 (2009)", "9", 2009),
        ("300 (2006)", "300", 2006),
        ("'71 (2014)", "'71", 2014),
        # a leading '*' glued to the word is read as markdown emphasis; the matcher drops it anyway
        ("*batteries not included (1987)", "batteries not included", 1987),
        ("Kill Bill: Vol. 1 (2003)", "Kill Bill: Vol. 1", 2003),
        ("Seven (Se7en) (1995)", "Seven (Se7en)", 1995),
        ("Mr. & Mrs. Smith (2005)", "Mr. & Mrs. Smith", 2005),
        ("The Following (2013)", "The Following", 2013),
        ("Here Comes the Boom (2012)", "Here Comes the Boom", 2012),
    ],
)
def test_item_lines(line, title, year):
    items = parse_items(line)
    assert len(items) == 1
    assert (items[0].title, items[0].year) == (title, year)
    assert (items[0].start, items[0].end, items[0].line) == (0, len(line), 0)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "Here are 20 recommendations:",
        "Here are some movies like Heat (1995):",
        "Sure! Here you go.",
        "The Matrix",  # no year
        "The Wall (201)",  # 3-digit year (Reddit catalog's bad row leaks into completions)
        "The Matrix (1999) is a great film because of its action",
        "The Matrix [1999]",
        "The Matrix (19999)",
        "(1999)",
        "1. (1999)",
        "---",
        "**",
    ],
)
def test_non_item_lines(line):
    assert parse_items(line) == []


def test_full_completion_with_preamble_blank_lines_and_outro():
    text = (
        "Here are 5 recommendations:\n"  # line 0
        "\n"  # line 1
        "1. The Matrix (1999)\n"  # line 2
        "2. **Heat** (1995)\n"  # line 3
        "   3) \"Se7en\" (1995)   \n"  # line 4 (indented, trailing spaces)
        "4. Alien\n"  # line 5 (no year)
        "\n"  # line 6
        "- Blade Runner (1982)\n"  # line 7
        "Enjoy these picks!"  # line 8 (no trailing newline)
    )
    items = parse_items(text)
    assert [(i.title, i.year, i.line) for i in items] == [
        ("The Matrix", 1999, 2),
        ("Heat", 1995, 3),
        ("Se7en", 1995, 4),
        ("Blade Runner", 1982, 7),
    ]
    _check_spans(text, items)
    # hand-computed offsets: line 0 is 27 chars + "\n", line 1 is "\n" -> line 2 starts at 29,
    # and "1. The Matrix (1999)" is 20 chars -> ends at 49
    assert (items[0].start, items[0].end) == (29, 49)
    assert text[items[2].start:items[2].end] == '3) "Se7en" (1995)'
    assert items[2].start == text.index("3)")


def test_crlf_and_lone_cr():
    text = "Here you go:\r\n1. The Matrix (1999)\r\n\r\n2. Heat (1995)\r\n"
    items = parse_items(text)
    assert [(i.title, i.line) for i in items] == [("The Matrix", 1), ("Heat", 3)]
    assert text[items[0].start:items[0].end] == "1. The Matrix (1999)"
    assert text[items[1].start:items[1].end] == "2. Heat (1995)"
    _check_spans(text, items)
    mac = "The Matrix (1999)\rHeat (1995)"
    items = parse_items(mac)
    assert [(i.title, i.line, i.start, i.end) for i in items] == [("The Matrix", 0, 0, 17), ("Heat", 1, 18, 29)]


def test_require_year_false():
    text = (
        "Here are my picks:\n"
        "1. The Matrix\n"
        "2. Heat (1995)\n"
        "- \"Alien\"\n"
        "I hope you enjoy these movies and let me know what you think.\n"
        "Recommendations:\n"
        "The Following\n"
        "\n"
        "Enjoy!"
    )
    items = parse_items(text, require_year=False)
    assert [(i.title, i.year, i.line) for i in items] == [
        ("The Matrix", None, 1),
        ("Heat", 1995, 2),
        ("Alien", None, 3),
        ("The Following", None, 6),
    ]
    _check_spans(text, items)
    assert [i.title for i in parse_items(text)] == ["Heat"]


def test_is_prose_and_clean_line():
    assert is_prose("Here are 20 recommendations:")
    assert is_prose("Based on your taste, try these")
    assert is_prose("These films share a dark tone and strong visuals.")
    assert is_prose("Enjoy!")
    assert not is_prose("The Matrix")
    assert not is_prose("Airplane!")
    assert not is_prose("Who Framed Roger Rabbit?")
    assert clean_line("1. **The Matrix** (1999)") == "The Matrix (1999)"
    assert clean_line("#2 - `Heat (1995)`") == "Heat (1995)"
    assert clean_line("> - 3. Alien (1979)") == "Alien (1979)"


def test_iter_lines_offsets():
    text = "a\r\n  b  \n\nc"
    assert list(iter_lines(text)) == [(0, 0, 1, "a"), (1, 5, 6, "b"), (2, 9, 9, ""), (3, 10, 11, "c")]
    assert list(iter_lines("")) == [(0, 0, 0, "")]


def test_parsed_item_is_frozen():
    it = parse_items("Heat (1995)")[0]
    with pytest.raises(Exception):
        it.title = "x"  # type: ignore[misc]
    assert it.display() == "Heat (1995)"
    assert it == ParsedItem("Heat", 1995, 0, 11, 0)


def test_non_str_rejected():
    with pytest.raises(TypeError):
        parse_items(None)  # type: ignore[arg-type]


def test_real_reddit_completions():
    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text(encoding="utf-8"))[
        "samples"
    ]
    short = []
    for s in samples:
        text = s["completion"][0]["content"]
        items = parse_items(text)
        lines = text.split("\n")
        _check_spans(text, items)
        # every item line, re-parsed alone, gives the same title/year
        for it in items:
            alone = parse_items(text[it.start:it.end])
            assert [(a.title, a.year) for a in alone] == [(it.title, it.year)]
        if len(items) != 20:
            short.append([line for line in lines if not parse_items(line)])
        # the same completion numbered, bolded and with a preamble keeps its titles in order
        decorated = "Here are my 20 picks:\r\n\r\n" + "\r\n".join(
            f"{k}. **{line}**" for k, line in enumerate(lines, start=1)
        )
        again = parse_items(decorated)
        assert [(a.title, a.year) for a in again] == [(it.title, it.year) for it in items]
        assert [a.line for a in again] == [it.line + 2 for it in items]
        _check_spans(decorated, again)
    # only the completion that copied the catalog's bad row ("The Wall (201)") is short
    assert short == [["The Wall (201)"]]


@pytest.mark.parametrize(
    "line, title, year",
    [
        # a period directly followed by a digit is part of the title, not list numbering
        ("9.99 (2012)", "9.99", 2012),
        ("2.0 (2017)", "2.0", 2017),
        ("11.22.63 (2016)", "11.22.63", 2016),
        ("1. 2.0 (2017)", "2.0", 2017),
        ("3) 11.22.63 (2016)", "11.22.63", 2016),
        ("- **2.0 (2017)**", "2.0", 2017),
        ("1.The Matrix (1999)", "The Matrix", 1999),  # numbering without a space still goes
        # "**" between two letters is a censored word, not emphasis
        ("Don't F**k with Cats: Hunting an Internet Killer (2019)",
         "Don't F**k with Cats: Hunting an Internet Killer", 2019),
        ("1. **Don't F**k with Cats: Hunting an Internet Killer (2019)**",
         "Don't F**k with Cats: Hunting an Internet Killer", 2019),
        ("**M*A*S*H (1970)**", "M*A*S*H", 1970),
        ("***The Matrix (1999)***", "The Matrix", 1999),
        ("**The Matrix**(1999)", "The Matrix", 1999),
    ],
)
def test_titles_that_look_like_markup_keep_their_characters(line, title, year):
    (item,) = parse_items(line)
    assert (item.title, item.year) == (title, year)


def test_censored_and_decimal_titles_match_their_catalog_entry():
    from rewards.catalog import Catalog

    cat = Catalog([
        {"id": 1, "title": "Don't F**k with Cats: Hunting an Internet Killer", "year": 2019},
        {"id": 2, "title": "11.22.63", "year": 2016},
        {"id": 3, "title": "2.0", "year": 2017},
        {"id": 4, "title": "Fk with Cats", "year": 2019},
    ])
    text = "1. **Don't F**k with Cats: Hunting an Internet Killer (2019)**\n2. 11.22.63 (2016)\n3. 2.0 (2017)"
    assert [cat.match(it.title, it.year) for it in parse_items(text)] == [1, 2, 3]


def test_parse_line_is_the_per_line_rule_of_parse_items():
    from rewards.parse import parse_line, split_lines

    text = "Here you go:\r\n1. The Matrix (1999)\r\rHeat\n- **Alien (1979)**\n\nEnjoy!"
    for require_year in (True, False):
        expect = [(it.title, it.year) for it in parse_items(text, require_year=require_year)]
        got = [p for p in (parse_line(line.strip(), require_year) for line in split_lines(text) if line.strip()) if p]
        assert got == expect
    assert split_lines("a\r\nb\rc\nd") == ["a", "b", "c", "d"]
    assert split_lines("a\x0bb\n") == ["a\x0bb", ""]  # only \r and \n end a line


def test_parse_line_fast_paths_equal_the_slow_reference_on_random_lines():
    import random

    from rewards.parse import parse_line

    rng = random.Random(7)
    pieces = ["1.", "2)", "#3", "12 -", "-", "*", "**", "__", "`", ">", "#", "•", " ", "  ", "(", ")", "(1999)",
              "( 2001 )", "(201)", "The", "Matrix", "F**k", "9.99", "11.22.63", "'", '"', "\u201c", "\u2019", ":",
              ",", ".", "!", "Here are", "Enjoy!", "\u00e9", "2.0", "(Se7en)", "_x_", "\t", "\u00a0", "\u2003", "A.I."]
    for _ in range(20000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 7))).strip()
        if not line:
            continue
        for require_year in (True, False):
            assert parse_line(line, require_year) == ref_parse_line(line, require_year), (line, require_year)
