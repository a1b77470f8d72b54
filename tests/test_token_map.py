"""trainers/token_map.py: byte table, byte-exact decoding, and the vectorised token -> item map against the
per-token reference, on the real Qwen2.5 vocabulary and on a tiny BPE that merges newlines with text."""
from __future__ import annotations

import random

import pytest
import torch

from rewards.parse import parse_items
from trainers.token_map import (
    assign_tokens_slow,
    assign_tokens_to_items,
    build_byte_table,
    char_to_byte_offsets,
    decode_bytes,
    item_byte_spans,
    sequence_byte_lengths_slow,
    token_byte_lengths,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def qwen_tok():
    from modeling.qwen_vocab import load_qwen_tokenizer

    return load_qwen_tokenizer()


@pytest.fixture(scope="module")
def newline_bpe():
    """A byte-level BPE with NO pre-tokenisation split, trained on item lists: it learns tokens that straddle the
    newline between two items (e.g. ')\\nThe'), the hardest case for a line-based assignment."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    titles = ["The Matrix (1999)", "The Thing (1982)", "Heat (1995)", "Alien (1979)", "The Fly (1986)",
              "Fargo (1996)", "Se7en (1995)", "The Birds (1963)", "Amélie (2001)", "Brazil (1985)"]
    rng = random.Random(0)
    corpus = []
    for _ in range(300):
        lines = rng.sample(titles, 6)
        corpus.append("\n".join(lines))
        corpus.append("\n".join(f"{i + 1}. {t}" for i, t in enumerate(lines)))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _spans_for(ids, tok, n_items=20, require_year=True):
    text = decode_bytes(ids, build_byte_table(tok))
    items = parse_items(text, require_year=require_year)[:n_items]
    return text, items, item_byte_spans(text, items)


def _batch(rows, pad_id):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


TEXTS = [
    # preamble + blank line + numbering
    "Sure! Here are 20 movies you might like:\n\n1. The Matrix (1999)\n2. Heat (1995)\n3. Alien (1979)",
    # bullets, markdown, blank lines, a line without a year (not an item), trailing newline
    "\n\n- **Alien (1979)**\n\n* Fargo (1996)\nSome movie without a year\n3) Se7en (1995)\n",
    # multi-byte characters (2-, 3- and 4-byte UTF-8) and quotes
    "\"Amélie\" (2001)\n千と千尋の神隠し (2001)\nLéon: The Professional (1994)\n🎬 Cinema Paradiso (1988)",
    # outro text after the list
    "The Thing (1982)\nThe Fly (1986)\n\nI hope you enjoy these!",
    # CRLF line ends and indentation
    "  1. Brazil (1985)\r\n  2. Heat (1995)\r\n",
]


def _many_items(n):
    titles = ["The Matrix (1999)", "Heat (1995)", "Alien (1979)", "Fargo (1996)", "Se7en (1995)"]
    return "\n".join(f"{i + 1}. {titles[i % len(titles)][:-7]} {i} {titles[i % len(titles)][-6:]}" for i in range(n))


def test_byte_table_matches_tokenizer_decode(qwen_tok):
    table = build_byte_table(qwen_tok, vocab_size=151936)
    assert len(table) == 151936 and table.lengths.dtype == torch.long
    assert torch.equal(token_byte_lengths(qwen_tok, vocab_size=151936), table.lengths)
    # specials are skipped by TRL's decode(skip_special_tokens=True) -> 0 bytes; padding rows -> 0 bytes
    for tok in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"):
        assert table.lengths[qwen_tok.convert_tokens_to_ids(tok)] == 0
    assert table.lengths[151700] == 0
    # non-special added tokens are kept by decode -> their text
    assert table.token_bytes[qwen_tok.convert_tokens_to_ids("<tool_call>")] == b"<tool_call>"
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(qwen_tok)) for _ in range(rng.randrange(1, 30))]
        exact = decode_bytes(ids, table)
        lossy = exact.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        assert lossy == qwen_tok.decode(ids, skip_special_tokens=True)
        assert len(exact.encode("utf-8", "surrogateescape")) == int(table.lengths[ids].sum())
    for text in TEXTS:
        ids = qwen_tok.encode(text)
        assert decode_bytes(ids, table) == text


def test_char_to_byte_offsets_with_invalid_bytes(qwen_tok):
    table = build_byte_table(qwen_tok)
    ids = qwen_tok.encode("千と千尋の神隠し (2001)")
    # drop tokens until the concatenation is invalid UTF-8 (a partial multi-byte character)
    for cut in range(1, len(ids)):
        text = decode_bytes(ids[cut:], table)
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
            break
    else:  # pragma: no cover - depends on the vocabulary
        pytest.skip("no token boundary inside a multi-byte character")
    offsets = char_to_byte_offsets(text)
    for i in range(len(text) + 1):
        assert offsets[i] == len(text[:i].encode("utf-8", "surrogateescape"))
    # parse still works on surrogate-escaped text and spans map to the right bytes
    _, items, spans = _spans_for(ids[cut:], qwen_tok)
    raw = text.encode("utf-8", "surrogateescape")
    for it, (s, e) in zip(items, spans):
        assert raw[s:e].decode("utf-8", "surrogateescape") == text[it.start:it.end]


@pytest.mark.parametrize("n_items", [20, 3])
def test_assignment_matches_slow_reference_qwen(qwen_tok, n_items):
    eos = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    rows, spans, texts = [], [], []
    for i, text in enumerate(TEXTS + [_many_items(23)]):
        ids = qwen_tok.encode(text)
        if i % 2 == 0:
            ids = ids + [eos]  # EOS right after the last item
        _, items, sp = _spans_for(ids, qwen_tok, n_items=n_items)
        rows.append(ids), spans.append(sp), texts.append(text)
    ids, mask = _batch(rows, qwen_tok.pad_token_id)
    fast = assign_tokens_to_items(ids, mask, spans, build_byte_table(qwen_tok, 151936))
    slow = assign_tokens_slow(ids, mask, spans, qwen_tok)
    assert torch.equal(fast, slow)
    # padding, EOS and specials never belong to an item
    assert (fast[mask == 0] == -1).all()
    assert (fast[ids == eos] == -1).all()
    # every counted item has tokens, and its tokens' bytes contain exactly the item's line
    table = build_byte_table(qwen_tok)
    for b, sp in enumerate(spans):
        assert set(fast[b][fast[b] >= 0].tolist()) == set(range(len(sp)))
        assert fast[b].max().item() < n_items
        for k, (s, e) in enumerate(sp):
            toks = [int(t) for t, a in zip(ids[b], fast[b]) if a == k]
            covered = b"".join(table.token_bytes[t] for t in toks).decode("utf-8", "surrogateescape")
            line = texts[b].encode()[s:e].decode()
            assert line in covered


def test_qwen_merges_close_paren_newline_into_the_item(qwen_tok):
    ids = qwen_tok.encode("The Matrix (1999)\nHeat (1995)")
    toks = qwen_tok.convert_ids_to_tokens(ids)
    assert ")Ċ" in toks  # the real vocabulary merges ")\n"
    _, _, sp = _spans_for(ids, qwen_tok)
    idx = assign_tokens_to_items(torch.tensor([ids]), None, [sp], build_byte_table(qwen_tok))[0]
    assert idx[toks.index(")Ċ")] == 0
    assert idx.tolist() == assign_tokens_slow(torch.tensor([ids]), None, [sp], qwen_tok)[0].tolist()


def test_assignment_with_tokens_straddling_lines(newline_bpe):
    tok = newline_bpe
    texts = ["The Matrix (1999)\nThe Thing (1982)\nHeat (1995)\nThe Fly (1986)",
             "Here you go:\n\n1. Alien (1979)\n2. Fargo (1996)\n3. The Birds (1963)\n4. Amélie (2001)\n5. Brazil (1985)",
             "Heat (1995)\nnot an item\nSe7en (1995)\nThe Thing (1982)"]
    rows, spans = [], []
    straddle = 0
    for text in texts:
        ids = tok.encode(text) + [tok.convert_tokens_to_ids("<|im_end|>")]
        for t in tok.convert_ids_to_tokens(ids):
            inner = t.strip("Ċ")
            if "Ċ" in inner and inner.split("Ċ")[0] and inner.split("Ċ")[-1]:
                straddle += 1
        _, _, sp = _spans_for(ids, tok, n_items=4)
        rows.append(ids), spans.append(sp)
    assert straddle > 0, "the tiny BPE should learn tokens that straddle a newline"
    ids, mask = _batch(rows, tok.pad_token_id)
    fast = assign_tokens_to_items(ids, mask, spans, build_byte_table(tok))
    assert torch.equal(fast, assign_tokens_slow(ids, mask, spans, tok))
    # a token spanning the end of item k and the start of item k+1 goes to item k (the first it overlaps)
    table = build_byte_table(tok)
    for b in range(len(rows)):
        lens = table.lengths[ids[b]] * mask[b]
        end = lens.cumsum(0)
        start = end - lens
        for t in range(ids.size(1)):
            overl = [k for k, (s, e) in enumerate(spans[b]) if start[t] < e and end[t] > s and lens[t] > 0]
            assert fast[b, t].item() == (overl[0] if overl else -1)


def test_non_byte_level_tokenizer_raises_and_slow_fallback_works():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    corpus = ["The Matrix (1999)\nHeat (1995)\nAlien (1979)"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"],
                                                            show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                  name_or_path="tiny-metaspace")
    with pytest.raises(NotImplementedError, match="tiny-metaspace"):
        build_byte_table(tok)
    text = "The Matrix (1999)\nHeat (1995)"
    ids = tok.encode(text)
    decoded = tok.decode(ids, skip_special_tokens=True)
    lens = sequence_byte_lengths_slow(ids, tok)
    assert sum(lens) == len(decoded.encode())
    items = parse_items(decoded)
    sp = item_byte_spans(decoded, items)
    idx = assign_tokens_to_items(torch.tensor([ids]), None, [sp], token_byte_lens=torch.tensor([lens]))[0]
    assert set(idx.tolist()) <= {-1, 0, 1} and {0, 1} <= set(idx.tolist())
    first_item_tokens = tok.decode([i for i, a in zip(ids, idx.tolist()) if a == 0])
    assert "The Matrix (1999)" in first_item_tokens  # (this BPE merges across the newline: first item wins)
    end = 0
    for t, n in enumerate(lens):  # the overlap rule by hand on the fallback's per-position lengths
        start, end = end, end + n
        overl = [k for k, (s, e) in enumerate(sp) if start < e and end > s and n > 0]
        assert idx[t].item() == (overl[0] if overl else -1)


def test_assignment_edge_cases():
    lengths = torch.tensor([0, 1, 2, 3, 4, 5])  # token id -> bytes
    ids = torch.tensor([[1, 2, 0, 3, 1, 0], [4, 4, 4, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    # row 0 bytes: t0 [0,1) t1 [1,3) t2 (0 bytes) t3 [3,6) t4 [6,7) t5 (0 bytes)
    spans = [[(1, 2), (4, 7)], []]
    idx = assign_tokens_to_items(ids, mask, spans, lengths)
    assert idx.tolist() == [[-1, 0, -1, 1, 1, -1], [-1] * 6]
    with pytest.raises(ValueError):
        assign_tokens_to_items(ids, mask, [[(4, 7), (1, 2)], []], lengths)
