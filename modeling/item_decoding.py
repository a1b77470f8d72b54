"""Item-aware decoding: never emit a catalog item already in the list or in the user's history.

A named decoding option (``item_aware``), applied the same way in RL rollouts (``RecRLConfig.item_aware_decoding``)
and in evaluation (``eval_test.py / eval_val.py --decoding item_aware``), and always reported beside plain greedy.
It needs a tokenizer in which every catalog title is ONE token (``python -m modeling.tiny --catalog_tokens``): the
ban is then a mask over item tokens. For row b at each step::

    banned[b] = item_token(seen[b])  |  {t in generated[b] : t is an item token}
    scores[b, v] = -inf  for v in banned[b]

``seen[b]`` is the row's whole ``seen`` list (every item the user interacted with, not only what the prompt shows).

A line of the list is an item, so at the start of a line (first completion token, or after a token ending in a
newline) whitespace-only tokens are banned too: otherwise the mass of a banned item flows to the newline token and
the list fills its token budget with blank lines (measured on the ML-100k twin after 200 SFT steps: 5-12 items in
64 tokens, the rest blank lines, where 20 lines take 40 tokens).
A real tokenizer spells a title with several tokens; banning a title there needs a prefix trie and is not built.
vLLM rollouts / evaluation: not built either (the option refuses vLLM with that message).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["ItemTokens", "ItemAwareLogitsProcessor", "item_aware_processor"]


class ItemTokens:
    """Catalog id -> its title's single token id, and the set of item token ids.

    ``from_catalog`` renders each item as the prompts and completions do (``Title (Year)``) and requires that the
    tokenizer encodes it as one added token; it raises ValueError, naming a few titles, when some do not."""

    def __init__(self, token_of: Mapping[int, int], vocab_size: int, blank_tokens: Iterable[int] = (),
                 line_end_tokens: Iterable[int] = ()):
        self.token_of = dict(token_of)
        self.vocab_size = int(vocab_size)
        self.is_item = self._mask(self.token_of.values())
        # whitespace-only tokens, banned at a line start; tokens whose text ends a line
        self.is_blank = self._mask(blank_tokens)
        self.ends_line = self._mask(line_end_tokens)

    def _mask(self, token_ids: Iterable[int]) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        ids = sorted(set(int(t) for t in token_ids))
        if ids:
            mask[torch.tensor(ids)] = True
        return mask

    @classmethod
    def from_catalog(cls, tokenizer, catalog_items: Iterable[Mapping], vocab_size: int | None = None) -> "ItemTokens":
        from preprocess.common import item_line  # the one renderer of an item line

        token_of, several = {}, []
        for it in catalog_items:
            text = item_line(it["title"], it.get("year"))
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                token_of[int(it["id"])] = ids[0]
            else:
                several.append(text)
        if several:
            raise ValueError(
                f"item-aware decoding needs one token per catalog title; {len(several)} of "
                f"{len(several) + len(token_of)} titles are several tokens (e.g. {several[:3]}). Build the model with "
                "`python -m modeling.tiny --catalog_tokens`, or decode with plain greedy.")
        blank, line_end = [], []
        for t in range(len(tokenizer)):
            piece = tokenizer.decode([t])
            if piece and not piece.strip():
                blank.append(t)
            if piece.endswith("\n"):
                line_end.append(t)
        return cls(token_of, max(vocab_size or 0, len(tokenizer)), blank, line_end)

    def tokens(self, item_ids: Iterable[int]) -> list[int]:
        """The item tokens of ``item_ids`` (ids outside the catalog have none and are skipped)."""
        return [self.token_of[i] for i in item_ids if i in self.token_of]


class ItemAwareLogitsProcessor(LogitsProcessor):
    """A ``transformers`` logits processor: ``scores[b, v] = -inf`` for every item token v in row b's seen items or
    already generated in row b (see the module docstring). Rows are the rows of ``input_ids`` (one per prompt; no
    beams). The prompt length is the width of ``input_ids`` at the first call (left-padded prompts).

    input_ids: (B, L) LongTensor; scores: (B, V) FloatTensor, V >= the item table's size."""

    def __init__(self, item_tokens: ItemTokens, banned_rows: Sequence[Sequence[int]]):
        self.item_tokens = item_tokens
        self.banned_rows = [list(r) for r in banned_rows]
        self.prompt_length: int | None = None
        self._static: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, V = scores.shape
        if len(self.banned_rows) != B:
            raise ValueError(f"item-aware decoding got {B} rows but banned items for {len(self.banned_rows)}")
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
            static = torch.zeros(B, V, dtype=torch.bool)
            for b, toks in enumerate(self.banned_rows):
                if toks:
                    static[b, torch.tensor(toks)] = True
            self._static = static.to(scores.device)
        banned = self._static.clone()
        generated = input_ids[:, self.prompt_length:]
        if generated.numel():
            is_item = self.item_tokens.is_item.to(scores.device)
            padded = torch.zeros(V, dtype=torch.bool, device=scores.device)
            padded[: is_item.numel()] = is_item[:V]
            hit = padded[generated].to(scores.dtype)  # (B, T): 1 where the generated token is an item
            banned |= torch.zeros(B, V, dtype=scores.dtype, device=scores.device).scatter_add_(1, generated, hit) > 0
        if bool(self.item_tokens.is_blank.any()):
            if generated.numel():
                ends = torch.zeros(V, dtype=torch.bool, device=scores.device)
                ends[: self.item_tokens.ends_line.numel()] = self.item_tokens.ends_line[:V].to(scores.device)
                line_start = ends[generated[:, -1]]
            else:
                line_start = torch.ones(B, dtype=torch.bool, device=scores.device)
            blank = torch.zeros(V, dtype=torch.bool, device=scores.device)
            blank[: self.item_tokens.is_blank.numel()] = self.item_tokens.is_blank[:V].to(scores.device)
            banned |= line_start[:, None] & blank[None, :]
        return scores.masked_fill(banned, float("-inf"))


def item_aware_processor(item_tokens: ItemTokens, seen_rows: Sequence[Iterable[int]]) -> ItemAwareLogitsProcessor:
    """The processor for rows whose users have seen ``seen_rows`` (catalog ids per row)."""
    return ItemAwareLogitsProcessor(item_tokens, [item_tokens.tokens(seen) for seen in seen_rows])
