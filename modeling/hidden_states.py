"""Last-layer hidden states of a causal LM, read from the forward pass that is running anyway.

RecPO (R²ec) ranks items with the model's own final hidden state: h_T at the end of the ``<answer>`` marker on the
user side, h_v at the same marker after an item prompt. ``capture_last_hidden_state`` hooks the backbone (the
decoder stack, whose ``last_hidden_state`` is what the LM head reads: after the final norm) so the hidden states come
out of the SAME forward that computes the policy log-probs -- TRL's fused LM head returns log-probs only, and a
second pass would double the cost. The hook works through PEFT, DDP and DeepSpeed wrappers.

Positions are taken per row from the attention mask (``last_positions``), so left padding, right padding and the
longest sequence of a batch are all read at their own last real token (the released code's off-by-one for the
longest sequence cannot happen).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def backbone_of(model):
    """The decoder stack of a (possibly wrapped) HF causal LM: unwraps DDP / DeepSpeed (``.module``) and PEFT."""
    m = model
    while hasattr(m, "module") and not hasattr(m, "base_model_prefix"):
        m = m.module
    if hasattr(m, "get_base_model"):  # PEFT
        m = m.get_base_model()
    backbone = getattr(m, getattr(m, "base_model_prefix", "model"), None)
    if backbone is None or backbone is m:
        raise TypeError(f"cannot find the decoder stack of {type(m).__name__} (no base_model_prefix attribute)")
    return backbone


@contextmanager
def capture_last_hidden_state(model):
    """Inside the block, every forward of ``model`` appends its backbone's ``last_hidden_state`` (B, S, d) to the
    yielded list (with grad when the forward has grad). Chunked forwards append one tensor per chunk."""
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        captured.append(hidden)

    handle = backbone_of(model).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B,) index of each row's last real token (left or right padding)."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, S), got {tuple(attention_mask.shape)}")
    S = attention_mask.size(1)
    pos = torch.arange(S, device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask != 0, pos, torch.full_like(pos, -1)).amax(dim=1)
    if (last < 0).any():
        raise ValueError("a row of the attention mask has no real token")
    return last


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, S, d) hidden states, (B,) positions -> (B, d) (differentiable)."""
    index = positions.view(-1, 1, 1).expand(-1, 1, hidden.size(-1))
    return hidden.gather(1, index).squeeze(1)


def encode_last_token(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token, from one forward that keeps the logits of one position only.
    (B, S) -> (B, d); grad follows the caller's context (wrap in ``torch.no_grad()`` for tables)."""
    with capture_last_hidden_state(model) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    return gather_positions(torch.cat(captured, dim=0), last_positions(attention_mask))


def chat_ids(tokenizer, messages: list[dict], prefill: str = "") -> list[int]:
    """Token ids of ``messages`` rendered with the model's chat template, the assistant turn opened
    (``add_generation_prompt``) and pre-filled with ``prefill`` (e.g. the ``<answer>`` marker of an item prompt)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text + prefill, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to one (B, S) tensor + its attention mask (the layout generation and TRL prompts use)."""
    S = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), S), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, S - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, S - len(r):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def encode_id_rows(model, rows: list[list[int]], pad_id: int, batch_size: int = 16, desc: str | None = None,
                   progress: bool = True) -> torch.Tensor:
    """Last-token hidden states of many id rows, batched, no grad, with a progress bar -> (n, d) float32 on the
    model's device. Rows are sorted by length so batches carry little padding; the output is in input order."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress or desc is None,
                          leave=False):
            chunk = order[start:start + batch_size]
            ids, mask = left_pad([rows[i] for i in chunk], pad_id, device)
            h = encode_last_token(model, ids, mask).float()
            if out is None:
                out = h.new_empty(len(rows), h.size(-1))
            out[torch.tensor(chunk, device=device)] = h
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("no rows to encode")
    return out


def marker_cut(ids: list[int], decode, marker: str) -> int | None:
    """The shortest prefix of ``ids`` whose text (``decode(prefix)``) contains ``marker``, as a token count, or None
    when the whole sequence does not. Containment only grows with the prefix, so a binary search needs
    O(log T) decodes; the marker's last token is then the prefix's last token (where h_T is read)."""
    if marker not in decode(ids):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if marker in decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def end_with_marker(ids: list[int], decode, marker: str, marker_ids: list[int], stop_ids) -> tuple[list[int], int]:
    """``ids`` cut right after the first ``marker``, or -- when it never appears -- with trailing ``stop_ids``
    (EOS / pad) dropped and ``marker_ids`` appended. Returns (ids, number of appended tokens)."""
    keep = marker_cut(list(ids), decode, marker)
    if keep is not None:
        return list(ids[:keep]), 0
    ids = list(ids)
    while ids and ids[-1] in stop_ids:
        ids.pop()
    return ids + list(marker_ids), len(marker_ids)
