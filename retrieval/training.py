"""Training pieces of the TRM: next-item samples, the proxy preference input, the loss, and evaluation.

Loss: next-item cross-entropy over the WHOLE catalog (every item a class, as SASRec-style models are trained),
logits = cos(u, e_i) / temperature. The sample's history items are removed from the softmax (logit -inf), except
the target itself when it repeats a history item: retrieval never returns history items, so the model should not
spend probability mass ranking them (SASRec-style training does the same with its negatives). Catalog aliases
(`duplicate_of`) are removed too.

Preference input (the paper does not say how it is trained). At inference the LLM writes a preference text; in
training we have no such text, so we use a PROXY: with probability `preference_prob` a sample's preference is a
text describing its own target, otherwise it has none (u = LayerNorm(h_last)). The proxy is one of
`preference_variants` texts per item, drawn uniformly: variant 0 is the item's full text (title, year, genres,
description), variants 1.. keep each word of it with probability `preference_word_keep` (a partial, noisy
description, closer to what an LLM writes than the exact title). All are encoded once (cached), never per step.
Why this works: the adaptor learns to move u towards items whose text resembles the preference, and because half
the samples have no preference (the dropout) the history path must predict on its own, which is what
`evaluation.recommenders.TRMRecommender` (history only) and the first DeepRec call rely on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.retriever import TRMRetriever
from retrieval.text import encode_texts, item_text


# ------------------------------------------------------------------------------------------------- samples
@dataclass
class NextItemSamples:
    """Rows of a split as tensors: history rows (n, max_history), left-padded, and target rows (n,)."""

    history_rows: torch.Tensor
    target_rows: torch.Tensor
    skipped: dict

    def __len__(self) -> int:
        return len(self.target_rows)


def next_item_samples(dataset, retriever: TRMRetriever, split: str = "train") -> NextItemSamples:
    """(history, target) pairs of a processed split. A row without a target, without history, or with a target
    outside the TRM's catalog is skipped (counted by reason); a history id outside the catalog is an error."""
    histories, targets = dataset["history"], dataset["target"]
    keep_h, keep_t = [], []
    skipped = {"no target": 0, "empty history": 0, "target not in catalog": 0}
    for i, (history, target) in enumerate(zip(histories, targets)):
        if target is None:
            skipped["no target"] += 1
        elif not history:
            skipped["empty history"] += 1
        elif int(target) not in retriever.row_of:
            skipped["target not in catalog"] += 1
        else:
            keep_h.append(history)
            keep_t.append(retriever.row_of[int(target)])
    if not keep_t:
        raise ValueError(f"{split}: no usable (history, target) rows (skipped: {skipped})")
    try:
        rows = retriever.rows_of(keep_h)
    except ValueError as err:
        raise ValueError(f"{split}: {err}") from None
    return NextItemSamples(rows.cpu(), torch.tensor(keep_t, dtype=torch.long), skipped)


# ------------------------------------------------------------------------------------------------ preference
def proxy_preference_text(item: Mapping, rng: np.random.Generator, keep: float) -> str:
    """A partial description of `item`: each word of its text kept with probability `keep` (at least one)."""
    words = item_text(item).split()
    kept = [w for w in words if rng.random() < keep]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


class PreferenceBank:
    """Proxy preference embeddings per catalog row: (num_items + 1, variants, text_dim); row 0 unused."""

    def __init__(self, embeddings: torch.Tensor):
        if embeddings.dim() != 3:
            raise ValueError(f"preference bank must be (rows, variants, dim), got {tuple(embeddings.shape)}")
        self.embeddings = embeddings

    @classmethod
    def build(cls, retriever: TRMRetriever, catalog_items: Sequence[Mapping], encoder, variants: int = 2,
              word_keep: float = 0.5, seed: int = 0, cache_dir=None) -> "PreferenceBank":
        if variants < 1:
            raise ValueError(f"preference_variants must be >= 1, got {variants}")
        if not 0 < word_keep <= 1:
            raise ValueError(f"preference_word_keep must be in (0, 1], got {word_keep}")
        by_id = {int(it["id"]): it for it in catalog_items}
        ordered = [by_id[int(i)] for i in retriever.catalog_ids]
        n, dim = len(ordered), retriever.config.text_dim
        bank = torch.zeros(n + 1, variants, dim)
        bank[:, 0] = retriever.model.item_text.cpu()  # variant 0: the item's own full text (already encoded)
        rng = np.random.default_rng(seed)
        for v in range(1, variants):
            texts = [proxy_preference_text(it, rng, word_keep) for it in ordered]
            bank[1:, v] = torch.from_numpy(encode_texts(encoder, texts, cache_dir))
        return cls(bank)

    def sample(self, target_rows: torch.Tensor, prob: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(preference embeddings (B, dim), has_preference (B,)): a random variant of each target's bank row
        with probability `prob`, else none (zeros, False)."""
        B, V = len(target_rows), self.embeddings.shape[1]
        has = torch.rand(B, generator=generator) < prob
        variant = torch.randint(V, (B,), generator=generator)
        emb = self.embeddings[target_rows.cpu(), variant] * has.unsqueeze(-1)
        return emb, has


# ------------------------------------------------------------------------------------------------------ loss
def next_item_loss(retriever: TRMRetriever, history_rows: torch.Tensor, target_rows: torch.Tensor,
                   preference: torch.Tensor | None = None, has_preference: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Mean cross-entropy of the targets over the catalog (module docstring: what is left out of the softmax)."""
    model = retriever.model
    items = model.item_vectors()  # (N + 1, d): every catalog item is a class
    users = model.user_vectors(history_rows, preference, has_preference, item_vectors=items)
    logits = model.cosine(users, items) / model.config.temperature
    B = len(target_rows)
    mask = retriever._base_mask.to(logits.device).expand(B, -1).clone()
    mask.scatter_(1, history_rows, True)  # history rows (and padding row 0)
    mask[torch.arange(B, device=logits.device), target_rows] = False  # a repeated target stays a class
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), target_rows)


# ------------------------------------------------------------------------------------------------ evaluation
def retrieve_split(retriever: TRMRetriever, dataset, k: int = 20, batch_size: int = 512,
                   preference_texts: Sequence[str | None] | None = None) -> list[list[int]]:
    """The top-k catalog ids of every row (history and `seen` excluded), in row order."""
    histories, seens = dataset["history"], dataset["seen"]
    out: list[list[int]] = []
    for start in range(0, len(histories), batch_size):
        stop = start + batch_size
        prefs = None if preference_texts is None else list(preference_texts[start:stop])
        ids, _ = retriever.retrieve(list(histories[start:stop]), prefs, k=k, exclude=list(seens[start:stop]))
        out.extend(ids.tolist())
    return out


def score_split(id_lists, dataset, ks: Sequence[int] = (5, 10, 20), protocol: str = "strict",
                n_items: int = 20) -> dict:
    """Mean Recall/NDCG/HR@K of ranked id lists against the split's `groundtruth` (minus `seen`): the project's
    metrics (`rewards.metrics.score_id_lists`)."""
    from rewards.metrics import score_id_lists

    scores = score_id_lists(id_lists, dataset["groundtruth"], dataset["seen"], ks=ks, protocol=protocol,
                            n_items=n_items)
    return {**scores.mean(), "protocol": protocol, "n_items": n_items, "ks": list(ks)}
