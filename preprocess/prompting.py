"""Prompt-side truncation shared by SFT and RL.

Right-truncating a prompt+completion at the maximum length can cut the target list (an anchor bug of the
released Rank-GRPO SFT code). Here only the prompt is shortened, and from the *start of the conversation*: the
instruction stays, the most recent turns stay, the completion is never touched.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from preprocess.common import CONVERSATION_MARKER


def prompt_token_count(messages: Sequence[dict], tokenizer: Any) -> int:
    """Tokens of the chat-templated prompt with the generation prompt appended (what the model conditions on)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _last_user_index(messages: Sequence[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    raise ValueError("truncate_prompt: the prompt has no user message")


def truncate_prompt(messages: list[dict], tokenizer: Any, max_tokens: int) -> list[dict]:
    """Return ``messages`` whose chat-templated prompt has at most ``max_tokens`` tokens.

    Characters are cut from the start of the conversation part of the last user message (the text after
    ``"Here is the conversation: "`` when present, else the whole content); the cut is moved forward to the next
    word boundary when that still fits. Returns the input object unchanged when it already fits; otherwise a new
    list (the input is not modified). Raises ValueError when even an empty conversation does not fit.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if prompt_token_count(messages, tokenizer) <= max_tokens:
        return messages

    idx = _last_user_index(messages)
    content = messages[idx]["content"]
    pos = content.find(CONVERSATION_MARKER)
    head, conv = (content[: pos + len(CONVERSATION_MARKER)], content[pos + len(CONVERSATION_MARKER):]) \
        if pos >= 0 else ("", content)

    def with_conv(text: str) -> list[dict]:
        out = copy.deepcopy(list(messages))
        out[idx]["content"] = head + text
        return out

    def fits(cut: int) -> bool:
        return prompt_token_count(with_conv(conv[cut:]), tokenizer) <= max_tokens

    n = len(conv)
    if not fits(n):
        raise ValueError(f"truncate_prompt: the prompt needs more than max_tokens={max_tokens} tokens even with an "
                         f"empty conversation ({prompt_token_count(with_conv(''), tokenizer)} tokens); raise "
                         "max_tokens or shorten the instruction/system messages")
    # Smallest cut that fits (token count is non-increasing in the cut up to tokenizer merge effects; the final
    # check below guards against those).
    lo, hi = 0, n  # fits(hi) is True, fits(0) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    cut = hi
    # Prefer starting at a word: skip the partial word and the whitespace after it.
    if 0 < cut < n and not conv[cut - 1].isspace():
        j = cut
        while j < n and not conv[j].isspace():
            j += 1
        while j < n and conv[j].isspace():
            j += 1
        if j < n and j - cut <= 64 and fits(j):
            cut = j
    result = with_conv(conv[cut:])
    assert prompt_token_count(result, tokenizer) <= max_tokens
    return result
