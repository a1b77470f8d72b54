"""Completion tokens -> recommendation items, from byte offsets (vectorised; no per-token decode).

Rank-GRPO gives each item of the recommendation list its own reward, advantage and importance ratio (paper
Eq. 6-7), so every completion token must be assigned to the item it spells. The released code counted raw
newlines token by token in Python while its rewards came from a regex-filtered list, so one preamble or blank line
shifted every later reward onto the wrong tokens (docs/methods.md §2.10, anchor bug). Here both sides come from the same
bytes:

1. A byte-level BPE token always decodes to the same byte string. ``build_byte_table`` maps the vocabulary once
   (``convert_ids_to_tokens``, the decoder's plain-string ``Replace`` steps if any -- ``modeling.tiny``'s unit
   tokens use them -- then the inverse GPT-2 ``bytes_to_unicode`` table) to per-token bytes and byte lengths. Special tokens decode to nothing (TRL decodes completions with ``skip_special_tokens=True``).
2. ``decode_bytes`` concatenates the token bytes of a completion and decodes them with ``surrogateescape``, so
   the text has exactly one character per invalid byte and character offsets convert to byte offsets exactly.
3. The reward side parses THAT text (``rewards.parse.parse_items``) and ``item_byte_spans`` turns each item's
   character span into a byte span.
4. ``assign_tokens_to_items`` places token t on bytes [cum[t] - len[t], cum[t]) and gives it to the first item
   whose byte span it overlaps (one batched ``torch.searchsorted``), or -1.

Tokenizers whose decoder is not ByteLevel (SentencePiece/Metaspace, WordPiece, ...) raise ``NotImplementedError``
in ``build_byte_table``; ``sequence_byte_lengths_slow`` is the slow-but-correct fallback for them (prefix decoding,
O(T^2) per sequence) and ``assign_tokens_slow`` is the per-token reference used by tests and the benchmark.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "ByteTable",
    "bytes_to_unicode",
    "build_byte_table",
    "token_byte_lengths",
    "decode_bytes",
    "char_to_byte_offsets",
    "item_byte_spans",
    "assign_tokens_to_items",
    "sequence_byte_lengths_slow",
    "assign_tokens_slow",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode-character table (used by every byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1))
        + list(range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def _token_string_to_bytes(token: str) -> bytes:
    """Bytes of one token string as the HF `tokenizers` ByteLevel decoder produces them: every character through the
    inverse byte table, or -- when a character is outside the byte alphabet (an added token written in plain text)
    -- the token's own UTF-8 bytes."""
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


@dataclass(frozen=True)
class ByteTable:
    """Per-vocabulary-id decoded bytes and their lengths (0 for special tokens and unknown/padding ids)."""

    token_bytes: tuple[bytes, ...]
    lengths: torch.Tensor  # LongTensor [vocab]
    name: str = ""

    def __len__(self) -> int:
        return len(self.token_bytes)


def _backend(tokenizer: Any):
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise NotImplementedError(
            f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has no fast `tokenizers` backend; "
            "byte offsets need a byte-level BPE fast tokenizer. Use sequence_byte_lengths_slow() (slow fallback)."
        )
    return backend


def _byte_level_replacements(backend) -> list[tuple[str, str]] | None:
    """The decoder's plain-string ``Replace`` steps in front of its ``ByteLevel`` step (``modeling.tiny``'s unit
    tokens use them), ``[]`` for a plain ByteLevel decoder, or None when the decoder is not byte-level."""
    spec = json.loads(backend.to_str()).get("decoder") or {}
    steps = spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]
    if not steps or steps[-1].get("type") != "ByteLevel":
        return None
    replacements = []
    for step in steps[:-1]:
        if step.get("type") != "Replace" or "String" not in (step.get("pattern") or {}):
            return None
        replacements.append((step["pattern"]["String"], step["content"]))
    return replacements


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids that `decode(..., skip_special_tokens=True)` drops: added tokens flagged special, plus named specials."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for idx, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(idx))
    return ids


_TABLE_CACHE: dict[tuple[int, int], tuple[Any, ByteTable]] = {}  # (id(tokenizer), size) -> (weakref, table)


def build_byte_table(tokenizer: Any, vocab_size: int | None = None) -> ByteTable:
    """Decoded bytes of every token id of a byte-level BPE tokenizer (cached per tokenizer object and size).

    ``vocab_size`` pads the table (with empty byte strings) up to the model's embedding size, which can exceed
    ``len(tokenizer)`` (Qwen2.5 pads 151,665 tokens to 151,936 rows); ids nobody can decode get 0 bytes.
    Raises NotImplementedError, naming the tokenizer, when the decoder is not ByteLevel.
    """
    n = max(len(tokenizer), vocab_size or 0)
    key = (id(tokenizer), n)
    cached = _TABLE_CACHE.get(key)
    if cached is not None and cached[0]() is tokenizer:  # same live object (ids of dead objects get reused)
        return cached[1]
    backend = _backend(tokenizer)
    name = f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '') or '?'})"
    replacements = _byte_level_replacements(backend)
    if replacements is None:
        decoder = json.loads(backend.to_str()).get("decoder")
        raise NotImplementedError(
            f"token_map needs a byte-level BPE tokenizer (ByteLevel decoder); {name} has decoder "
            f"{(decoder or {}).get('type')!r}. Use the slow fallback sequence_byte_lengths_slow() / assign_tokens_slow()."
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = _special_ids(tokenizer)
    table: list[bytes] = []
    for idx, tok in enumerate(tokens):  # once per vocabulary, not per step
        if tok is not None:
            for pattern, content in replacements:  # what the decoder does to each token before ByteLevel
                tok = tok.replace(pattern, content)
        table.append(b"" if (tok is None or idx in special) else _token_string_to_bytes(tok))
    table.extend([b""] * (n - len(table)))
    lengths = torch.tensor([len(b) for b in table], dtype=torch.long)
    result = ByteTable(tuple(table), lengths, name)
    if len(_TABLE_CACHE) > 8:
        _TABLE_CACHE.clear()
    try:
        _TABLE_CACHE[key] = (weakref.ref(tokenizer), result)
    except TypeError:  # not weak-referenceable: do not cache
        pass
    return result


def token_byte_lengths(tokenizer: Any, vocab_size: int | None = None) -> torch.Tensor:
    """LongTensor[vocab]: decoded byte length of each token id (0 for special tokens). See ``build_byte_table``."""
    return build_byte_table(tokenizer, vocab_size).lengths


def decode_bytes(ids: Sequence[int] | torch.Tensor, table: ByteTable | Any) -> str:
    """The completion text exactly as the concatenated token bytes, decoded with ``surrogateescape``.

    ``table`` is a ``ByteTable`` or a tokenizer (its table is built/cached). Valid UTF-8 decodes as usual (equal to
    ``tokenizer.decode(ids, skip_special_tokens=True)``); each invalid byte becomes one surrogate character, so
    character offsets map back to byte offsets exactly (``char_to_byte_offsets``).
    """
    if not isinstance(table, ByteTable):
        table = build_byte_table(table)
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = list(ids)
    if not ids:
        return ""
    n = len(table.token_bytes)
    if max(ids) >= n or min(ids) < 0:
        ids = [i for i in ids if 0 <= i < n]
        if not ids:
            return ""
    parts = itemgetter(*ids)(table.token_bytes)
    data = parts if isinstance(parts, bytes) else b"".join(parts)
    return data.decode("utf-8", errors="surrogateescape")


def char_to_byte_offsets(text: str) -> np.ndarray:
    """int64 array of len(text)+1: byte offset of each character position in ``text.encode('utf-8',
    'surrogateescape')`` (vectorised over code points)."""
    if not text:
        return np.zeros(1, dtype=np.int64)
    cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    escaped = (cps >= 0xDC80) & (cps <= 0xDCFF)  # one raw invalid byte each (surrogateescape)
    nbytes = np.where(cps < 0x80, 1, np.where(cps < 0x800, 2, np.where(cps < 0x10000, 3, 4)))
    nbytes = np.where(escaped, 1, nbytes).astype(np.int64)
    out = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(nbytes, out=out[1:])
    return out


def item_byte_spans(text: str, items: Sequence[Any]) -> list[tuple[int, int]]:
    """Byte spans [start, end) of parsed items (objects with character ``start``/``end``, or (start, end) pairs)."""
    if not items:
        return []
    pairs = [(item.start, item.end) if hasattr(item, "start") else (item[0], item[1]) for item in items]
    if text.isascii():  # one byte per character: the common case needs no offset table
        return [(int(s), int(e)) for s, e in pairs]
    offsets = char_to_byte_offsets(text)
    return [(int(offsets[s]), int(offsets[e])) for s, e in pairs]


def assign_tokens_to_items(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor | None,
    spans: Sequence[Sequence[tuple[int, int]]],
    byte_len_table: torch.Tensor | ByteTable | None = None,
    token_byte_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """LongTensor (B, T): index k (0-based) of the item each completion token belongs to, -1 for none.

    Token t of a row covers bytes [cum[t] - len[t], cum[t]) where len comes from ``byte_len_table[ids]`` (or the
    explicit per-position ``token_byte_lens`` (B, T) of the slow fallback) and padding (mask 0) has length 0. It
    belongs to the FIRST item whose byte span [s, e) it overlaps (s < cum[t] and e > cum[t] - len[t]); zero-length
    tokens (EOS, specials, padding) belong to no item. ``spans[b]`` must be sorted and non-overlapping (item lines).
    """
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be (B, T), got {tuple(completion_ids.shape)}")
    B, T = completion_ids.shape
    device = completion_ids.device
    if len(spans) != B:
        raise ValueError(f"got {len(spans)} span lists for {B} rows")
    if token_byte_lens is None:
        if byte_len_table is None:
            raise ValueError("give byte_len_table (vocabulary table) or token_byte_lens (per position)")
        lengths = byte_len_table.lengths if isinstance(byte_len_table, ByteTable) else byte_len_table
        lengths = lengths.to(device)
        ids = completion_ids.clamp(0, lengths.numel() - 1)
        lens = torch.where(completion_ids < lengths.numel(), lengths[ids], torch.zeros_like(ids))
    else:
        lens = token_byte_lens.to(device=device, dtype=torch.long)
    if completion_mask is not None:
        lens = lens * (completion_mask.to(device) != 0).long()
    end = lens.cumsum(dim=1)
    start = end - lens

    K = max((len(s) for s in spans), default=0)
    if K == 0:
        return torch.full((B, T), -1, dtype=torch.long, device=device)
    big = torch.iinfo(torch.long).max // 4
    # pad the ragged span lists into (B, K) with one tensor build (a Python pass over rows, never over tokens)
    flat = torch.tensor([pair for row in spans for pair in row], dtype=torch.long).view(-1, 2)
    rows = torch.repeat_interleave(torch.arange(B), torch.tensor([len(row) for row in spans]))
    cols = torch.cat([torch.arange(len(row)) for row in spans])
    span_start = torch.full((B, K), big, dtype=torch.long)
    span_end = torch.full((B, K), big, dtype=torch.long)
    span_start[rows, cols] = flat[:, 0]
    span_end[rows, cols] = flat[:, 1]
    span_start, span_end = span_start.to(device), span_end.to(device)
    if K > 1 and ((span_start[:, 1:] < span_end[:, :-1]) & (span_start[:, 1:] < big)).any():
        raise ValueError("item spans must be sorted and non-overlapping within a row")
    # first span whose end is > token start: number of spans with end <= start (ends are sorted)
    j = torch.searchsorted(span_end, start, right=True)  # (B, T) in [0, K]
    jc = j.clamp(max=K - 1)
    cand_start = span_start.gather(1, jc)
    hit = (j < K) & (cand_start < end) & (lens > 0)
    return torch.where(hit, jc, torch.full_like(jc, -1))


# ------------------------------------------------------------------------------------- slow, for fallback/tests
def sequence_byte_lengths_slow(ids: Sequence[int], tokenizer: Any) -> list[int]:
    """SLOW FALLBACK (any tokenizer): byte length of each position by prefix decoding, O(T^2).

    len(decode(ids[:t+1]).encode()) - len(decode(ids[:t]).encode()) with ``skip_special_tokens=True``. Correct for
    decoders whose output on a prefix is a prefix of the output on the whole sequence; a token that completes a
    multi-byte character only partially present in the prefix gets the bytes the decoder emits at that step.
    """
    out, prev = [], 0
    ids = list(ids)
    for t in range(len(ids)):
        cur = len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True).encode("utf-8", "surrogateescape"))
        out.append(max(cur - prev, 0))
        prev = max(cur, prev)
    return out


def assign_tokens_slow(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor | None,
    spans: Sequence[Sequence[tuple[int, int]]],
    tokenizer: Any,
) -> torch.Tensor:
    """Reference implementation (tests and benchmark only): a per-token decode loop with a byte cursor, comparing
    each token with every span in Python. O(B * T * K).

    Each token is decoded on its own with ``tokenizer.decode([id], skip_special_tokens=True)``; when that text holds
    a replacement character (the token is part of a multi-byte character), its bytes come from transformers' own
    ``bytes_to_unicode`` table instead (an implementation independent of ``build_byte_table``).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

    inverse = {c: b for b, c in hf_bytes_to_unicode().items()}
    B, T = completion_ids.shape
    out = torch.full((B, T), -1, dtype=torch.long)
    for b in range(B):
        cursor = 0
        for t in range(T):
            if completion_mask is not None and int(completion_mask[b, t]) == 0:
                continue
            tid = int(completion_ids[b, t])
            if tid >= len(tokenizer):
                continue
            text = tokenizer.decode([tid], skip_special_tokens=True)
            if "\ufffd" in text:
                token = tokenizer.convert_ids_to_tokens(tid)
                nbytes = len(token.encode("utf-8")) if any(c not in inverse for c in token) else len(token)
            else:
                nbytes = len(text.encode("utf-8"))
            s, e = cursor, cursor + nbytes
            cursor = e
            if nbytes == 0:
                continue
            for k, (bs, be) in enumerate(spans[b]):
                if s < be and e > bs:
                    out[b, t] = k
                    break
    return out
