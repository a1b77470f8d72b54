"""DeepRec's trajectories (docs/methods.md §4): parsing a trajectory, its format checks and the five reward terms.
Pure (stdlib + numpy); the prompt and the markers are in ``preprocess.deeprec_prompts``.

A trajectory is the COMPLETION text (everything after the prompt), tool results included:

    reasoning ... <|begin_of_preference|> text <|end_of_preference|>
    <|begin_of_item_list|>\\n1. title\\n...\\n20. title\\n<|end_of_item_list|>       (injected by the rollout)
    ... more reasoning and calls (at most 8) ...
    reasoning after the last tool result
    </think>
    <recommendation_list>\\n1. title\\n...\\n10. title\\n</recommendation_list>

The opening ``<think>`` is the last line of the completion-style prompt (``Assistant:\\n<think>\\n``); with the chat
prompt style (warm-started instruct models) the completion itself starts with ``<think>``, which is allowed.

Format checks (``FORMAT_CHECKS``; any failure -> R_fmt = -1): ``tags`` (tool markers in order
begin_pref, end_pref, begin_list, end_list, repeated; nothing but the answer list after ``</think>``; no second
``<think>``), ``no_call`` (>= 1 TRM call), ``think`` (exactly one ``</think>``), ``answer`` (exactly one
recommendation list, after ``</think>``), ``reasoning`` (non-empty text between the last tool result and
``</think>``), ``lines`` (exactly 10 non-empty answer lines), ``template`` (a placeholder of the prompt's
instructions copied).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from preprocess.deeprec_prompts import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    BEGIN_ITEM_LIST,
    BEGIN_PREFERENCE,
    END_ITEM_LIST,
    END_PREFERENCE,
    N_ANSWER,
    TEMPLATE_PLACEHOLDERS,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_MARKERS,
)

FORMAT_CHECKS = ("tags", "no_call", "think", "answer", "reasoning", "lines", "template")
_MARKER_RE = re.compile("|".join(re.escape(m) for m in (*TOOL_MARKERS, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN,
                                                         ANSWER_CLOSE)))


# ------------------------------------------------------------------------------------------------ parsing
_NUMBER = re.compile(r"^\s*(?:\d+\s*[.)]\s+|\d+\s*[.)]$)")


@dataclass
class Trajectory:
    """What the rewards need from a trajectory's text."""

    preferences: list[str]  # the preference texts of the calls, in order
    n_calls: int  # the rollout's real TRM calls when parse_trajectory got them, else the item lists in the text
    answer_lines: list[str] | None  # the final list's non-empty lines, numbering removed (None: no list)
    failures: list[str] = field(default_factory=list)  # failed FORMAT_CHECKS, in that order

    @property
    def valid(self) -> bool:
        return not self.failures


def strip_numbering(line: str) -> str:
    """``"3. Fargo (1996)"`` -> ``"Fargo (1996)"`` (one leading ``N.`` / ``N)``)."""
    return _NUMBER.sub("", line, count=1).strip()


def parse_trajectory(text: str, n_answer: int = N_ANSWER, real_calls: int | None = None) -> Trajectory:
    """Parse a completion (module docstring) and run every format check.

    ``real_calls``: the TRM calls the rollout made (``Episode.n_calls``). With it, ``n_calls`` is that count, not the
    item-list blocks in the text, and a text with more item lists than real calls fails ``tags``: the model typed a
    fake tool result of its own (without it, two typed lists scored R_inv 1.0 like two real calls)."""
    if not isinstance(text, str):
        raise TypeError(f"parse_trajectory expects a str, got {type(text).__name__}")
    if real_calls is not None and (isinstance(real_calls, bool) or not isinstance(real_calls, int) or real_calls < 0):
        raise ValueError(f"real_calls must be an int >= 0 or None, got {real_calls!r}")
    body = text
    if body.lstrip().startswith(THINK_OPEN):  # chat style: the completion opens <think> itself
        body = body.lstrip()[len(THINK_OPEN):]
    failures: list[str] = []
    markers = [(m.group(0), m.start(), m.end()) for m in _MARKER_RE.finditer(body)]
    close_at = [i for i, (m, _, _) in enumerate(markers) if m == THINK_CLOSE]
    tool_part = markers[:close_at[0]] if close_at else markers
    after = markers[close_at[0] + 1:] if close_at else []

    # tags: the tool part is (BP EP BL EL)*, nothing after </think> but the answer markers, no second <think>
    names = [m for m, _, _ in tool_part]
    cycle_ok = len(names) % 4 == 0 and all(name == TOOL_MARKERS[i % 4] for i, name in enumerate(names))
    stray_after = any(m not in (ANSWER_OPEN, ANSWER_CLOSE, THINK_CLOSE) for m, _, _ in after)
    if not cycle_ok or stray_after or any(m == THINK_OPEN for m, _, _ in markers):
        failures.append("tags")

    preferences, n_calls, last_list_end = [], 0, None
    for i, (m, start, end) in enumerate(tool_part):
        # a preference counts when the TRM answered it (end marker, then an item list)
        if (m == BEGIN_PREFERENCE and i + 2 < len(tool_part) and tool_part[i + 1][0] == END_PREFERENCE
                and tool_part[i + 2][0] == BEGIN_ITEM_LIST):
            preferences.append(body[end:tool_part[i + 1][1]].strip())
        if m == END_ITEM_LIST:
            n_calls += 1
            last_list_end = end
    if real_calls is not None:
        if n_calls != real_calls and "tags" not in failures:
            failures.append("tags")  # item lists the rollout did not inject: typed by the model
        n_calls = real_calls
        preferences = preferences[:real_calls]
    if n_calls == 0:
        failures.append("no_call")
    if body.count(THINK_CLOSE) != 1:
        failures.append("think")

    answer_lines = None
    opens = [s for m, s, _ in markers if m == ANSWER_OPEN]
    closes = [s for m, s, _ in markers if m == ANSWER_CLOSE]
    think_pos = markers[close_at[0]][1] if close_at else None
    if len(opens) == 1 and len(closes) == 1 and think_pos is not None and think_pos < opens[0] < closes[0]:
        inner = body[opens[0] + len(ANSWER_OPEN):closes[0]]
        answer_lines = [strip_numbering(line) for line in inner.splitlines() if line.strip()]
    else:
        failures.append("answer")
    if n_calls and think_pos is not None and last_list_end is not None:
        if last_list_end > think_pos or not body[last_list_end:think_pos].strip():
            failures.append("reasoning")
    if answer_lines is not None and len(answer_lines) != n_answer:
        failures.append("lines")
    if any(p in text for p in TEMPLATE_PLACEHOLDERS):
        failures.append("template")
    return Trajectory(preferences, n_calls, answer_lines, failures)


def format_check_shares(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Share of valid trajectories (``valid``) and of those failing each format check (``fail_<check>``; one
    trajectory can fail several). Empty input: all 0."""
    n = len(trajectories)
    out = {"valid": sum(t.valid for t in trajectories) / n if n else 0.0}
    for check in FORMAT_CHECKS:
        out[f"fail_{check}"] = sum(check in t.failures for t in trajectories) / n if n else 0.0
    return out


# ------------------------------------------------------------------------------------------------ rewards
def format_reward(trajectory: Trajectory) -> float:
    """R_fmt = -1 if any format check fails, else 0."""
    return 0.0 if trajectory.valid else -1.0


def invocation_reward(n_calls: int) -> float:
    """R_inv = 0.5 (min(n, 3) - 1) for n >= 2 calls, else 0."""
    return 0.5 * (min(n_calls, 3) - 1) if n_calls >= 2 else 0.0


def diversity_reward(preference_embeddings) -> float:
    """R_div = 0.2 (1 - mean pairwise cosine of the preference texts' embeddings), 0 for n <= 1. (n, d) -> float;
    rows need not be normalised (the cosine normalises them)."""
    emb = np.asarray(preference_embeddings, dtype=np.float64)
    n = 0 if emb.size == 0 else emb.shape[0]
    if n <= 1:
        return 0.0
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    pairs = cos[np.triu_indices(n, k=1)]
    return float(0.2 * (1.0 - pairs.mean()))


def target_position(predicted_ids: Sequence[int | None], target: int) -> int | None:
    """0-based position of the first line that names ``target``, or None."""
    for i, iid in enumerate(predicted_ids):
        if iid is not None and iid == target:
            return i
    return None


def outcome_reward(predicted_ids: Sequence[int | None], target: int, valid: bool, n_answer: int = N_ANSWER) -> float:
    """R_out = 1 + 0.2 (10 - i), i the target's 0-based position in the final list; 0 on a miss or an invalid
    format."""
    if not valid:
        return 0.0
    i = target_position(list(predicted_ids)[:n_answer], target)
    return 0.0 if i is None else 1.0 + 0.2 * (n_answer - i)


def similarity_weights(n: int) -> np.ndarray:
    """w_i = (1 - i/n)^2, i = 0..n-1."""
    return (1.0 - np.arange(n, dtype=np.float64) / max(n, 1)) ** 2


def similarity_reward(text_cosines: Sequence[float | None], trm_cosines: Sequence[float | None],
                      valid: bool) -> float:
    """R_sim = 10 sum_i w_i s_i / sum_i w_i, s_i = mean(text cosine, TRM cosine) of predicted item i and the target
    (None = an item outside the catalog: s_i = 0); 0 for an invalid format or an empty list."""
    if len(text_cosines) != len(trm_cosines):
        raise ValueError(f"{len(text_cosines)} text cosines for {len(trm_cosines)} TRM cosines")
    n = len(text_cosines)
    if not valid or n == 0:
        return 0.0
    s = np.array([0.0 if a is None or b is None else 0.5 * (float(a) + float(b))
                  for a, b in zip(text_cosines, trm_cosines)])
    w = similarity_weights(n)
    return float(10.0 * (w * s).sum() / w.sum())
