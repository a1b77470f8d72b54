"""RecPO (R²ec) prompt templates, METHODS.md §3 -- the user prompt the policy reasons on and the item prompt that
encodes a catalog item. Both end where the ``<answer>`` marker is read: the user prompt asks the model to reason and
then write ``<answer>``; the item prompt's assistant turn is pre-filled with ``<answer>`` (``ITEM_PREFILL``).

    messages = user_prompt(["Halo 5", "Tetris Effect"], "video games", ratings=[5, 4], time_deltas=[86400 * 3, 3600])
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

ANSWER_MARKER = "<answer>"
ITEM_PREFILL = ANSWER_MARKER
MAX_HISTORY = 20
MAX_DESCRIPTION_WORDS = 100


def format_time_delta(seconds: float) -> str:
    """A coarse human time delta: '5 minutes', '3 hours', '2 days', '4 months', '1 year'."""
    s = max(0.0, float(seconds))
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600),
                       ("minute", 60)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "just now"


def _rating(value) -> str:
    r = float(value)
    return f"{int(r)}" if r.is_integer() else f"{r:.1f}"


def user_prompt(history_titles: Sequence[str], category: str, ratings: Sequence[float] | None = None,
                time_deltas: Sequence[float] | None = None, max_history: int = MAX_HISTORY) -> list[dict]:
    """The R²ec user prompt over the last ``max_history`` items (oldest first). ``ratings`` (out of 5) and
    ``time_deltas`` (seconds before the prediction time) are optional per-item annotations."""
    n = len(history_titles)
    for name, values in (("ratings", ratings), ("time_deltas", time_deltas)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} history items")
    start = max(0, n - max_history)
    lines = []
    for i in range(start, n):
        when = f"{format_time_delta(time_deltas[i])} ago: " if time_deltas is not None else ""
        rating = f" ({_rating(ratings[i])})" if ratings is not None and ratings[i] is not None else ""
        lines.append(f"{when}[{history_titles[i]}]{rating}")
    scale = " and ratings (out of 5)" if ratings is not None else ""
    text = (f"Analyze in depth and finally recommend next {category} I might purchase inside {ANSWER_MARKER} and "
            f"</answer>. For example, {ANSWER_MARKER} a product </answer>. Below is my historical {category} "
            f"purchases{scale}:\n" + "\n".join(lines))
    return [{"role": "user", "content": text}]


def _truncate_words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def item_prompt(item: Mapping, category: str) -> list[dict]:
    """The R²ec item prompt: title, rating, number of buyers and a description of at most 100 words, where the
    catalog item has them (``title``; optional ``rating`` / ``average_rating``, ``rating_number`` /
    ``num_buyers``, ``description`` or ``text``)."""
    lines = [f"title: {item['title']}"]
    rating = item.get("average_rating", item.get("rating"))
    if rating is not None:
        lines.append(f"rating: {_rating(rating)}")
    buyers = item.get("rating_number", item.get("num_buyers"))
    if buyers is not None:
        lines.append(f"number of buyers: {int(buyers)}")
    description = item.get("description") or item.get("text")
    if isinstance(description, (list, tuple)):
        description = " ".join(str(d) for d in description)
    if description:
        description = re.sub(r"\s+", " ", str(description)).strip()
        lines.append(f"description: {_truncate_words(description, MAX_DESCRIPTION_WORDS)}")
    text = f"Summarize key attributes of the following {category} inside {ANSWER_MARKER} and </answer>:\n" + \
        "\n".join(lines)
    return [{"role": "user", "content": text}]


def record_user_prompt(record: Mapping, catalog, category: str, max_history: int = MAX_HISTORY) -> list[dict]:
    """The user prompt of a data-contract record (``history`` ids, oldest first; optional per-item
    ``history_ratings`` and ``history_time_deltas``), titles from ``catalog``. Training and evaluation both call
    this, so a RecPO model is evaluated on the prompt it was trained on."""
    history = list(record.get("history") or [])[-max_history:]
    n = len(history)

    def last_n(name):
        values = record.get(name)
        return None if values is None else list(values)[len(values) - n:]

    return user_prompt([catalog[i]["title"] for i in history], category, ratings=last_n("history_ratings"),
                       time_deltas=last_n("history_time_deltas"), max_history=max_history)
