"""RecPO (R²ec) prompt templates, docs/methods.md §3.1: the one renderer of the user prompt the policy reasons on and of
the item prompt that encodes a catalog item. Builders (``preprocess.amazon``), the trainer (``methods.recpo.trainer``) and
the evaluator (``methods.recpo.recommender``) all render through this module, so a model is trained and evaluated on the
text a data set stores.

Wording: docs/methods.md §3.1; where it leaves the layout open, R²ec's released prompts (line breaks, ``Title`` /
``User Rating`` / ``Number of Buyers`` / ``Description`` keys, ``3d 4.5h`` time deltas, ``...`` after a cut
description). Both prompts end where the ``<answer>`` marker is read: the user prompt asks the model to reason and
then write ``<answer>``; the item prompt's assistant turn is pre-filled with ``<answer>`` (``ITEM_PREFILL``).

    messages = user_prompt(["Halo 5", "Tetris Effect"], "video games", ratings=[5, 4], time_deltas=[86400 * 3, 3600])
    messages = record_user_prompt(record, catalog, category_name("Video_Games"))
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

ANSWER_MARKER = "<answer>"
ANSWER_END = "</answer>"
ITEM_PREFILL = ANSWER_MARKER
MAX_HISTORY = 20
MAX_DESCRIPTION_WORDS = 100
#: How the history header of the user prompt starts; its line ends with ``:`` and one item line per purchase follows
#: (the prompt fitter, ``preprocess.prompting``, cuts the oldest lines).
HISTORY_INTRO = "Below is my historical {category} purchases"

#: How a file-name category is worded in the prompts (R²ec's released names); others: underscores -> spaces,
#: lower case.
CATEGORY_NAMES = {
    "Games": "video games",
    "Video_Games": "video games",
    "Musical_Instruments": "musical instruments",
    "CDs_and_Vinyl": "CDs and vinyl",
}


def category_name(category: str) -> str:
    """The prompt wording of a file-name category (``Video_Games`` -> ``video games``)."""
    if category in CATEGORY_NAMES:
        return CATEGORY_NAMES[category]
    return category.replace("_", " ").strip().lower()


def format_time_delta(seconds: float) -> str:
    """``3d 4.5h`` / ``2h 30.0min`` / ``12.0min``: whole days then fractional hours, else whole hours then
    fractional minutes (the released prompt's wording). A negative delta (a history item after the target) is an
    error: it would mean the prompt leaks the future."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a time delta must be a finite number of seconds >= 0, got {seconds}")
    days, rest = divmod(seconds, 86400.0)
    if days >= 1:
        return f"{int(days)}d {rest / 3600.0:.1f}h"
    hours, rest = divmod(rest, 3600.0)
    if hours >= 1:
        return f"{int(hours)}h {rest / 60.0:.1f}min"
    return f"{rest / 60.0:.1f}min"


def format_rating(value: float) -> str:
    """A rating as the released prompts print the float (``5.0``, ``4.5``, ``4.25``)."""
    return str(float(value))


def user_prompt(history_titles: Sequence[str], category: str, ratings: Sequence[float] | None = None,
                time_deltas: Sequence[float] | None = None, max_history: int = MAX_HISTORY) -> list[dict]:
    """The R²ec user prompt over the last ``max_history`` items (oldest first), one chat message.

    A line per item: ``<time_delta> ago: [<title>] (<rating>)``. ``ratings`` (out of 5) and ``time_deltas``
    (seconds before the target's time) are optional, all items or none: without ratings the ``(x)`` and the
    header's "and ratings (out of 5)" go; without times the deltas go and the header says "oldest first".
    """
    n = len(history_titles)
    for name, values in (("ratings", ratings), ("time_deltas", time_deltas)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} history items")
    lines = []
    for i in range(max(0, n - max_history), n):
        line = f"[{history_titles[i]}]"
        if ratings is not None:
            line += f" ({format_rating(ratings[i])})"
        if time_deltas is not None:
            line = f"{format_time_delta(time_deltas[i])} ago: {line}"
        lines.append(line)
    header = (f"Analyze in depth and finally recommend next {category} I might purchase inside {ANSWER_MARKER} and "
              f"{ANSWER_END}.\nFor example, {ANSWER_MARKER} a product {ANSWER_END}.\n\n"
              + HISTORY_INTRO.format(category=category)
              + (" and ratings (out of 5)" if ratings is not None else "")
              + ("" if time_deltas is not None else ", oldest first") + ":")
    return [{"role": "user", "content": "\n".join([header, *lines])}]


def _cut_words(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words]) + ("..." if len(words) > max_words else "")


def item_attributes(item: Mapping) -> str:
    """The key: value lines of the item prompt: ``Title``, ``Year``, ``Genres``, ``User Rating`` (the average
    rating), ``Number of Buyers`` (the rating count) and ``Description`` (cut to 100 words), each where the catalog
    item has it (the paper's fields; ``Year`` / ``Genres`` are how a movie catalog carries what Amazon's title and
    category carry; the count keeps the paper's key for every catalog).

    Reads ``title``, ``year``, ``genres`` (list of str), ``average_rating``, ``rating_number`` and ``description``
    (str or list of str). An item without a ``description`` key (a non-Amazon catalog) uses its ``text`` as the
    description; Amazon items always carry the key (null when unknown), because their ``text`` holds these lines.
    """
    lines = [f"Title: {item['title']}"]
    if item.get("year") is not None:
        lines.append(f"Year: {int(item['year'])}")
    if item.get("genres"):
        lines.append("Genres: " + ", ".join(str(g) for g in item["genres"]))
    if item.get("average_rating") is not None:
        lines.append(f"User Rating: {format_rating(item['average_rating'])}")
    if item.get("rating_number") is not None:
        lines.append(f"Number of Buyers: {int(item['rating_number'])}")
    description = item["description"] if "description" in item else item.get("text")
    if isinstance(description, (list, tuple)):
        description = " ".join(str(d) for d in description)
    if description:
        description = re.sub(r"\s+", " ", str(description)).strip()
    if description:
        lines.append(f"Description: {_cut_words(description, MAX_DESCRIPTION_WORDS)}")
    return "\n".join(lines)


def item_prompt(item: Mapping, category: str) -> list[dict]:
    """The R²ec item prompt of a catalog item, one chat message; the caller pre-fills the assistant turn with
    ``ITEM_PREFILL`` and reads the hidden state there."""
    text = (f"Summarize key attributes of the following {category} inside {ANSWER_MARKER} and {ANSWER_END}:\n"
            + item_attributes(item))
    return [{"role": "user", "content": text}]


def record_user_prompt(record: Mapping, catalog, category: str, max_history: int = MAX_HISTORY) -> list[dict]:
    """The user prompt of a data-contract record: ``history`` ids (oldest first) titled from ``catalog`` (a
    ``Catalog`` or ``{id: item}``), with the optional per-item ``history_ratings`` and ``history_time_deltas``
    (null or absent: not shown). Builders store exactly this as the record's ``prompt``; training and evaluation
    re-render it, so all three see the same text."""
    history = list(record.get("history") or [])
    optional = {}
    for name in ("history_ratings", "history_time_deltas"):
        values = record.get(name)
        if values is not None and len(values) != len(history):
            raise ValueError(f"sample {record.get('sample_id')!r}: field {name!r} has {len(values)} values for "
                             f"{len(history)} history items")
        optional[name] = None if values is None else list(values)
    return user_prompt([catalog[i]["title"] for i in history], category, ratings=optional["history_ratings"],
                       time_deltas=optional["history_time_deltas"], max_history=max_history)
