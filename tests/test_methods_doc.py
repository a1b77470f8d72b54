"""docs/methods.md is the one method reference: every citation of it names a section that exists, the old
out-of-repo reference is cited nowhere, every named released-code defect a comment mentions is defined there, and
every ``Config.field`` its option tables name is a real field of that dataclass with the stated default.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "methods.md"
SKIP_DIRS = {".venv", ".git", "__pycache__", "node_modules", "results", "processed_datasets", "models", "shared",
             "logs", "wandb"}
SUFFIXES = (".py", ".md", ".yaml", ".sh")
#: The old reference, outside the repository (spelled in two parts so this file does not cite it).
OLD_REFERENCE = "METHODS" + ".md"

#: The config dataclasses the doc's option tables may name, and their modules. A table naming another
#: ``...Config`` fails until it is added here (after issue 21's package move, update the module paths).
CONFIG_MODULES = {
    "RecRLConfig": "trainers.base",
    "RankGRPOConfig": "methods.rank_grpo.trainer",
    "RecPOConfig": "methods.recpo.trainer",
    "DeepRecConfig": "methods.deeprec.trainer",
    "TRMConfig": "retrieval.model",
}

_HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? \S", re.MULTILINE)  # "## 2. Title", "### 2.3 Title"
# "methods.md §2", "``docs/methods.md`` §2", "[methods.md](methods.md) §3, §4": the § list after the file name
_CITATION = re.compile(r"methods\.md(?:`+|\]\([^)]*\))?[ \t]*((?:§[ \t]*\d+(?:\.\d+)?(?:[ \t]*,[ \t]*)?)+)")
_SECTION = re.compile(r"§[ \t]*(\d+(?:\.\d+)?)")
_ANCHOR_BUG = re.compile(r"anchor bug ([a-z])\b", re.IGNORECASE)
_FIELD = re.compile(r"`([A-Z]\w*Config)\.(\w+)`")
_TABLE_ROW = re.compile(r"^\| `([A-Z]\w*Config)\.(\w+)` \| `([^`]*)` \|", re.MULTILINE)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def sections(text: str) -> set[str]:
    """The section numbers of the ``## N.`` / ``### N.M`` headings; ValueError on a repeated number, a
    subsection under the wrong level or one without its parent section."""
    found: set[str] = set()
    for hashes, number in _HEADING.findall(text):
        if number in found:
            raise ValueError(f"section {number} appears twice")
        if ("." in number) != (len(hashes) == 3):
            raise ValueError(f"section {number} has the wrong heading level {hashes}")
        if "." in number and number.split(".")[0] not in found:
            raise ValueError(f"section {number} comes before (or without) its section {number.split('.')[0]}")
        found.add(number)
    return found


def cited_sections(text: str) -> list[str]:
    """Every section number a ``methods.md §...`` citation in ``text`` names, in order."""
    return [s for group in _CITATION.findall(text) for s in _SECTION.findall(group)]


def _project_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        out += [Path(root) / f for f in files if f.endswith(SUFFIXES)]
    return sorted(out)


def _texts():
    """(repo-relative name, text) of every scanned file but this one (its checker tests cite on purpose)."""
    for path in _project_files():
        if path == Path(__file__).resolve():
            continue
        yield path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------------------------------ the checkers
def test_the_checkers_catch_what_they_guard():
    assert sections("## 1. A\n### 1.1 B\n## 2. C\n### 2.10 D\n") == {"1", "1.1", "2", "2.10"}
    for bad in ("## 1. A\n## 1. B\n", "### 3.1 A\n", "## 1. A\n## 1.2 B\n"):
        with pytest.raises(ValueError):
            sections(bad)
    text = ("see docs/methods.md §2.3 and ``docs/methods.md`` §4, §4.1; [methods.md](methods.md) §3, and\n"
            "docs/methods.md has them all; docs/methods.md §9.9")
    assert cited_sections(text) == ["2.3", "4", "4.1", "3", "9.9"]


def test_doc_sections_are_numbered_once_each():
    found = sections(_doc())
    # the top-level sections every citation in the code relies on
    assert {"0", "1", "2", "3", "4", "5"} <= found
    assert len(found) > 30


# ------------------------------------------------------------------------------------------ citations
def test_every_citation_names_an_existing_section():
    found = sections(_doc())
    cited, dangling = 0, []
    for name, text in _texts():
        for number in cited_sections(text):
            cited += 1
            if number not in found:
                dangling.append(f"{name}: §{number}")
    assert not dangling, f"citations of sections docs/methods.md does not have: {dangling}"
    assert cited >= 35  # the code's citations are found at all (the scan is not vacuous)


def test_the_old_reference_is_cited_nowhere():
    hits = [name for name, text in _texts() if OLD_REFERENCE in text and name != "docs/methods.md"]
    assert not hits, f"{OLD_REFERENCE} (outside the repository) is still cited in {hits}; cite docs/methods.md"


def test_every_named_anchor_bug_is_defined():
    doc = _doc()
    mentioned = {(name, letter.lower()) for name, text in _texts() if name != "docs/methods.md"
                 for letter in _ANCHOR_BUG.findall(text)}
    assert {letter for _, letter in mentioned} >= {"a", "b", "d"}  # methods/recpo/trainer.py names these
    undefined = sorted(f"{name}: anchor bug {letter}" for name, letter in mentioned
                       if f"**Anchor bug {letter}**" not in doc)
    assert not undefined, f"anchor bugs named in the code but not defined in docs/methods.md: {undefined}"


# ------------------------------------------------------------------------------------------ options
def _fields(class_name: str) -> dict[str, dataclasses.Field]:
    cls = getattr(importlib.import_module(CONFIG_MODULES[class_name]), class_name)
    return {f.name: f for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def test_every_named_option_is_a_field_of_its_config():
    doc = _doc()
    named = set(_FIELD.findall(doc))
    unknown = sorted({cls for cls, _ in named} - set(CONFIG_MODULES))
    assert not unknown, f"docs/methods.md names configs this test does not know: {unknown} (add to CONFIG_MODULES)"
    missing = sorted(f"{cls}.{name}" for cls, name in named if name not in _fields(cls))
    assert not missing, f"docs/methods.md names options that are not dataclass fields: {missing}"


def test_option_tables_state_the_code_defaults():
    rows = _TABLE_ROW.findall(_doc())
    assert {cls for cls, _, _ in rows} == set(CONFIG_MODULES)  # every config has an option table
    wrong = []
    for cls, name, cell in rows:
        field = _fields(cls).get(name)
        if field is None:
            wrong.append(f"{cls}.{name}: no such field")
            continue
        stated = ast.literal_eval(cell)
        actual = _default(field)
        if type(stated) is not type(actual) and not (isinstance(stated, (int, float)) and
                                                     isinstance(actual, (int, float)) and
                                                     not isinstance(actual, bool)):
            wrong.append(f"{cls}.{name}: doc {stated!r}, code {actual!r}")
        elif stated != actual:
            wrong.append(f"{cls}.{name}: doc {stated!r}, code {actual!r}")
    assert not wrong, f"docs/methods.md option tables disagree with the dataclasses: {wrong}"
