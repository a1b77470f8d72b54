"""DeepRec's text protocol, prompt side (docs/methods.md §4): the tool and answer markers, the instructions, the
prompt in both styles and the injected item-list text. Pure (stdlib): the data builders, the prompt fitter, the tiny
CPU twin's special tokens and the method package (methods/deeprec) share it; the trajectory parser and the reward
terms are in ``methods.deeprec.rewards``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence


BEGIN_PREFERENCE = "<|begin_of_preference|>"
END_PREFERENCE = "<|end_of_preference|>"
BEGIN_ITEM_LIST = "<|begin_of_item_list|>"
END_ITEM_LIST = "<|end_of_item_list|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<recommendation_list>", "</recommendation_list>"
TOOL_MARKERS = (BEGIN_PREFERENCE, END_PREFERENCE, BEGIN_ITEM_LIST, END_ITEM_LIST)
# Generation stops at a completed preference (the TRM is called) and at the end of the answer (episode over).
STOP_STRINGS = (END_PREFERENCE, ANSWER_CLOSE)

N_ANSWER = 10  # items in the final list (the paper's R_out formula assumes 10)
MAX_CALLS = 8
RETRIEVE_K = 20

# The instructions' placeholders: a trajectory that contains one copied the template instead of filling it.
PREFERENCE_PLACEHOLDER = "[a description of the items this user wants next]"
ITEM_PLACEHOLDER = "[item title]"
TEMPLATE_PLACEHOLDERS = (PREFERENCE_PLACEHOLDER, ITEM_PLACEHOLDER)

PROMPT_STYLES = ("completion", "chat")



# ------------------------------------------------------------------------------------------------ prompt
def instructions(category: str = "items", max_calls: int = MAX_CALLS, n_answer: int = N_ANSWER,
                 k: int = RETRIEVE_K) -> str:
    """The task description shared by both prompt styles (names the markers and the placeholders)."""
    example = "\n".join(f"{i}. {ITEM_PLACEHOLDER}" for i in range(1, 3))
    return (
        f"You recommend {category}. Think step by step about the user's history. You can query a recommender "
        f"system up to {max_calls} times: write {BEGIN_PREFERENCE}{PREFERENCE_PLACEHOLDER}{END_PREFERENCE} and it "
        f"answers with its top {k} {category} between {BEGIN_ITEM_LIST} and {END_ITEM_LIST}. Query it at least "
        f"once, reflect on its answers, then close your thinking with {THINK_CLOSE} and give exactly {n_answer} "
        f"{category} as a numbered list, one title per line:\n{ANSWER_OPEN}\n{example}\n...\n{ANSWER_CLOSE}"
    )


#: The line that opens the history list in both prompt styles (the prompt fitter, ``preprocess.prompting``, finds
#: the list after it and cuts its oldest lines).
HISTORY_INTRO = "I have interacted with these {category}, oldest first:"


def history_block(history_lines: Sequence[str]) -> str:
    """The user's history as a numbered list (oldest first); each line is a title (+ categories)."""
    return "\n".join(f"{i}. {line}" for i, line in enumerate(history_lines, 1))


def build_prompt(history_lines: Sequence[str], style: str = "completion", category: str = "items",
                 max_calls: int = MAX_CALLS, n_answer: int = N_ANSWER, k: int = RETRIEVE_K):
    """The DeepRec prompt. ``completion`` (paper, base model): one string ending ``Assistant:\\n<think>\\n``;
    ``chat`` (warm-started instruct models): one user message, the completion opens ``<think>`` itself."""
    task = instructions(category, max_calls, n_answer, k)
    user = f"{HISTORY_INTRO.format(category=category)}\n{history_block(history_lines)}"
    if style == "completion":
        return f"{task}\nUser: {user}\nAssistant:\n{THINK_OPEN}\n"
    if style == "chat":
        return [{"role": "user", "content": f"{task}\n\n{user}"}]
    raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def item_list_text(titles: Sequence[str]) -> str:
    """The injected tool result: ``\\n<|begin_of_item_list|>\\n1. t\\n...\\n<|end_of_item_list|>\\n``. The
    surrounding newlines are part of it (environment tokens)."""
    body = "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1))
    return f"\n{BEGIN_ITEM_LIST}\n{body}\n{END_ITEM_LIST}\n"


_INJECTED_RE = re.compile(re.escape(f"\n{BEGIN_ITEM_LIST}\n") + ".*?" + re.escape(f"\n{END_ITEM_LIST}\n"), re.DOTALL)


def injected_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the ``item_list_text`` blocks in a SCRIPTED trajectory (the warm-start
    data, where every item list is a real TRM result the script inserted). Not for model output: there a typed
    list looks the same, and only the rollout's ``env_mask`` knows what it injected."""
    return [(m.start(), m.end()) for m in _INJECTED_RE.finditer(text)]


def answer_text(titles: Sequence[str]) -> str:
    body = "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1))
    return f"{ANSWER_OPEN}\n{body}\n{ANSWER_CLOSE}"


def last_preference(text: str) -> str:
    """The preference text of the call that ``text`` (a trajectory so far, ending at ``<|end_of_preference|>``)
    asks for: between the last ``<|begin_of_preference|>`` and that end marker; '' when it has no opener (the
    format check then fails; the TRM gets "no preference")."""
    end = text.rfind(END_PREFERENCE)
    body = text[:end] if end >= 0 else text
    start = body.rfind(BEGIN_PREFERENCE)
    if start < 0:
        return ""
    return body[start + len(BEGIN_PREFERENCE):].strip()


# ------------------------------------------------------------------------------------------------ data rows
def history_lines(history: Sequence[int], catalog, max_history: int = 20, with_categories: bool = True) -> list[str]:
    """The prompt's history lines: catalog display title (+ its genres / categories) of the last items."""
    lines = []
    for iid in list(history or [])[-max_history:]:
        if iid not in catalog:
            raise ValueError(f"history item {iid!r} is not in the catalog")
        line = catalog.display(iid)
        genres = catalog[iid].get("genres") or catalog[iid].get("categories")
        if with_categories and genres:
            line += f" (categories: {', '.join(str(g) for g in genres)})"
        lines.append(line)
    return lines


def render_prompt(row, catalog, style: str = "completion", category: str = "items", max_history: int = 20,
                  settings=None):
    """The DeepRec prompt of a data-contract row (its ``history``). ``settings``: the episode settings
    (``methods.deeprec.rollout.EpisodeSettings``: its ``max_calls`` and ``k`` are named in the instructions);
    None: the paper's (MAX_CALLS, RETRIEVE_K)."""
    max_calls, k = (MAX_CALLS, RETRIEVE_K) if settings is None else (settings.max_calls, settings.k)
    return build_prompt(history_lines(row.get("history") or [], catalog, max_history), style, category,
                        max_calls, N_ANSWER, k)
