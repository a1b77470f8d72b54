"""Prompt fitting shared by SFT, RL and evaluation: cut the user's HISTORY, oldest first, never the instruction.

Right-truncating a prompt+completion at the maximum length can cut the target list (docs/methods.md §1.3, a bug of the
released Rank-GRPO SFT code); cutting the prompt from its very start cuts the instruction and the format example
(what the DeepRec warm-start did before: its prompt has no conversation marker). Here only the history part of
the prompt is shortened. Every prompt builder's history has a known layout (``HISTORY_LAYOUTS``, built from the
builders' own constants):

* ``movielens``: ``... Here is the conversation: USER: I have watched these movies, oldest first: A; B; C. Which
  movies should I watch next?`` -- whole titles are dropped from the front of the list;
* ``deeprec`` (``preprocess.deeprec_prompts.build_prompt``, both styles): the numbered lines after ``I have interacted
  with these <category>, oldest first:`` -- whole lines dropped, the rest renumbered from 1, the completion-style
  tail ``Assistant:\\n<think>\\n`` kept;
* ``recpo`` (``preprocess.recpo_prompts.user_prompt``): the item lines after the ``Below is my historical ...:``
  header -- whole lines dropped;
* ``conversation`` (Rank-GRPO's ``Here is the conversation: ``, ReDial / Reddit-v2): free text, cut from its start
  at a word boundary (the most recent turns stay).

A prompt without any of these layouts cannot be shortened without cutting its instruction: ``fit_prompt`` raises
``PromptFitError`` for it, as for a prompt that does not fit even with an empty history. ``fit_prompts`` fits a
list, keeps such rows whole and counts them (``FitReport``); training callers stop on them
(``FitReport.raise_if_unfit``), evaluation reports them.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from preprocess import deeprec_prompts, movielens, recpo_prompts
from preprocess.common import CONVERSATION_MARKER


class PromptFitError(ValueError):
    """A prompt that cannot fit its token budget without cutting its instruction."""


@dataclass(frozen=True)
class HistoryLayout:
    """Where a builder's prompt keeps its history: after ``opener`` (a regex), items separated by ``separator``
    (None: free text), up to ``closer`` (a regex; None: the end of the text). ``numbered``: items are ``N. ...``
    lines, renumbered from 1 after a cut."""

    name: str
    opener: re.Pattern
    separator: str | None = None
    closer: re.Pattern | None = None
    numbered: bool = False


def _template_regex(template: str) -> str:
    """A builder's ``{category}`` template as a regex (the category: any text on one line)."""
    return re.escape(template).replace(re.escape("{category}"), r"[^\n]*?")


#: Tried in this order; the first whose opener occurs in the text is the prompt's layout.
HISTORY_LAYOUTS = (
    HistoryLayout("movielens", re.compile(re.escape(CONVERSATION_MARKER + movielens.HISTORY_OPENER)),
                  movielens.HISTORY_SEPARATOR, re.compile(re.escape(movielens.HISTORY_CLOSER))),
    HistoryLayout("deeprec", re.compile(_template_regex(deeprec_prompts.HISTORY_INTRO) + "\n"), "\n",
                  re.compile(re.escape("\nAssistant:\n")), numbered=True),
    HistoryLayout("recpo", re.compile(_template_regex(recpo_prompts.HISTORY_INTRO) + r"[^\n]*:\n"), "\n"),
    HistoryLayout("conversation", re.compile(re.escape(CONVERSATION_MARKER))),
)
_NUMBER = re.compile(r"^\d+\.\s")


def find_history(text: str) -> tuple[HistoryLayout, int, int] | None:
    """``(layout, start, end)`` of the history part of a prompt text, or None (no known layout)."""
    for layout in HISTORY_LAYOUTS:
        m = layout.opener.search(text)
        if m is None:
            continue
        end = len(text)
        if layout.closer is not None:
            c = layout.closer.search(text, m.end())
            if c is not None:
                end = c.start()
        return layout, m.end(), end
    return None


def prompt_token_count(messages, tokenizer: Any) -> int:
    """Tokens of the prompt the model conditions on: a chat list templated with the generation prompt, or a
    completion-style string (DeepRec's base-model prompt) encoded as the DeepRec recommender encodes it."""
    if isinstance(messages, str):
        return len(tokenizer(messages)["input_ids"])
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _last_user_index(messages: Sequence[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    raise ValueError("fit_prompt: the prompt has no user message")


@dataclass
class FitResult:
    prompt: Any  # the fitted prompt (the input object itself when it already fitted)
    layout: str | None  # the history layout found (None: the prompt fitted without looking)
    removed: int = 0  # history items (lines / titles) or characters (conversation) removed


def fit_prompt(prompt, tokenizer: Any, max_tokens: int) -> FitResult:
    """Fit ``prompt`` (a chat list or a completion-style string) into ``max_tokens`` tokens by cutting its history,
    oldest first (module docstring); the instruction, the format example and every other message stay. Raises
    ``PromptFitError`` when there is no known history part or when even an empty history does not fit."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if prompt_token_count(prompt, tokenizer) <= max_tokens:
        return FitResult(prompt, None)
    if isinstance(prompt, str):
        content, idx = prompt, None
    else:
        idx = _last_user_index(prompt)
        content = prompt[idx]["content"]
    found = find_history(content)
    if found is None:
        raise PromptFitError(
            f"the prompt has {prompt_token_count(prompt, tokenizer)} tokens > {max_tokens} and no known history part "
            f"(layouts: {', '.join(lay.name for lay in HISTORY_LAYOUTS)}); shortening it would cut its instruction")
    layout, start, end = found
    head, history, tail = content[:start], content[start:end], content[end:]

    def rebuild(text: str):
        if idx is None:
            return head + text + tail
        out = copy.deepcopy(list(prompt))
        out[idx]["content"] = head + text + tail
        return out

    if layout.separator is None:
        rendered, removed = _cut_free_text(history, lambda t: prompt_token_count(rebuild(t), tokenizer) <= max_tokens)
    else:
        items = history.split(layout.separator) if history else []

        def keep_from(k: int) -> str:
            kept = items[k:]
            if layout.numbered:
                kept = [f"{i}. {_NUMBER.sub('', line, count=1)}" for i, line in enumerate(kept, 1)]
            return layout.separator.join(kept)

        removed = _smallest_fitting(len(items), lambda k: prompt_token_count(rebuild(keep_from(k)), tokenizer)
                                    <= max_tokens)
        rendered = None if removed is None else keep_from(removed)
    if rendered is None:
        raise PromptFitError(
            f"the prompt needs more than max_tokens={max_tokens} tokens even with an empty history "
            f"({prompt_token_count(rebuild(''), tokenizer)} tokens, layout {layout.name}); raise the limit or shorten "
            "the instruction / system messages")
    result = rebuild(rendered)
    assert prompt_token_count(result, tokenizer) <= max_tokens
    return FitResult(result, layout.name, removed)


def _smallest_fitting(n: int, fits) -> int | None:
    """The smallest cut in 0..n with ``fits(cut)`` (token counts shrink as the cut grows), None if not even n."""
    if not fits(n):
        return None
    lo, hi = 0, n  # fits(hi) is True; fits(0) is False (the prompt did not fit whole)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi if n else 0


def _cut_free_text(conv: str, fits_text) -> tuple[str | None, int]:
    """Cut the start of a free-text conversation: the smallest character cut that fits, moved forward to the next
    word when that still fits."""
    n = len(conv)
    cut = _smallest_fitting(n, lambda c: fits_text(conv[c:]))
    if cut is None:
        return None, 0
    if 0 < cut < n and not conv[cut - 1].isspace():  # start at a word: skip the partial word and its whitespace
        j = cut
        while j < n and not conv[j].isspace():
            j += 1
        while j < n and conv[j].isspace():
            j += 1
        if j < n and j - cut <= 64 and fits_text(conv[j:]):
            cut = j
    return conv[cut:], cut


def truncate_prompt(messages, tokenizer: Any, max_tokens: int):
    """``fit_prompt(...).prompt``: the input object itself when it fits; raises ``PromptFitError``."""
    return fit_prompt(messages, tokenizer, max_tokens).prompt


@dataclass
class FitReport:
    """Counts of one ``fit_prompts`` pass: rows, rows whose history was cut, history items removed (list layouts),
    rows that cannot fit without cutting their instruction (kept whole) and the first few of them."""

    rows: int = 0
    cut: int = 0
    items_removed: int = 0
    unfit: int = 0
    unfit_examples: list = field(default_factory=list)

    def add(self, name, result: FitResult | None, error: Exception | None = None) -> None:
        self.rows += 1
        if error is not None:
            self.unfit += 1
            if len(self.unfit_examples) < 5:
                self.unfit_examples.append(f"{name}: {error}")
        elif result.layout is not None:
            self.cut += 1
            if result.layout != "conversation":
                self.items_removed += result.removed

    def as_dict(self) -> dict:
        return {"rows": self.rows, "history_cut": self.cut, "history_items_removed": self.items_removed,
                "unfit": self.unfit, "unfit_examples": list(self.unfit_examples)}

    def raise_if_unfit(self, what: str) -> None:
        """Stop a training run whose prompts would lose their instruction."""
        if self.unfit:
            raise PromptFitError(
                f"{what}: {self.unfit} of {self.rows} prompts cannot fit without cutting their instruction, so "
                "training stops rather than train on prompts that lost it. First: "
                + " | ".join(self.unfit_examples))


def fit_prompts(prompts: Sequence, tokenizer: Any, max_tokens: int, names: Sequence | None = None):
    """``(fitted prompts, FitReport)``; a prompt that cannot fit is kept whole and counted."""
    report, out = FitReport(), []
    for i, p in enumerate(prompts):
        name = names[i] if names is not None else f"#{i}"
        try:
            r = fit_prompt(p, tokenizer, max_tokens)
        except PromptFitError as err:
            report.add(name, None, err)
            out.append(p)
        else:
            report.add(name, r)
            out.append(r.prompt)
    return out, report
