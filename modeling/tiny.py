"""Random-init tiny causal LMs (Qwen3 or Llama architecture) for CPU runs of every training script.

Two tokenizers:
  * "bpe": a byte-level BPE trained in seconds on the processed data set's train text (or a built-in corpus),
    with Qwen's pre-tokenisation regex except that up to 4 digits make one pre-token (a year is one token, so a
    20-line title list is ~125 tokens instead of ~205 at vocabulary 4096), ChatML special tokens and a ChatML chat
    template (no default system message). Small vocabulary (default 2048) -> small embedding matrix -> fast.
  * "qwen": the real Qwen2.5 vocabulary (modeling.qwen_vocab), to exercise the real token boundaries.

Both are byte-level BPE (ByteLevel pre-tokenizer + decoder), so each token maps to a fixed byte string and byte
offsets add up token by token (trainers/token_map.py relies on that).

Unit tokens (bpe only, both off by default). A pretrained LLM already knows its catalog's titles; a random-init
twin spends its training budget learning to spell them from BPE pieces. ``--catalog_tokens`` adds every catalog
entry's rendered ``Title (Year)`` (the text the prompts and the scorer use) as ONE atomic added token, and
``--marker_tokens`` does the same for every method marker (``<answer>``, ``<think>``, DeepRec's tags). They are
added tokens, not flagged special: ``decode(..., skip_special_tokens=True)`` (what TRL does) keeps them, so text in
and out is unchanged and every reward and metric still goes decode -> parse -> the one matcher. What this gives that
a real model would not: a title can never be misspelt, only chosen; a list is always one token per line.

    python -m modeling.tiny --output_dir models/tiny-ml100k --dataset_path processed_datasets/ml100k
    python -m modeling.tiny --output_dir models/tiny-qwen --tokenizer qwen --family llama

The saved folder reloads with `AutoModelForCausalLM` / `AutoTokenizer` (trust_remote_code=False).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
BPE_SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 in the trained BPE

# ChatML without a default system message: every turn is `<|im_start|>{role}\n{content}<|im_end|>\n`.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Used when no data set is given: ChatML-ish recommendation text, so the vocabulary covers the task's format.
_BUILTIN_TITLES = [
    "The Matrix (1999)", "Toy Story (1995)", "Star Wars (1977)", "Pulp Fiction (1994)", "Fargo (1996)",
    "The Godfather (1972)", "Casablanca (1942)", "Alien (1979)", "Amélie (2001)", "Heat (1995)",
    "Se7en (1995)", "Twelve Monkeys (1995)", "Schindler's List (1993)", "The Silence of the Lambs (1991)",
    "Raiders of the Lost Ark (1981)", "Back to the Future (1985)", "Jurassic Park (1993)", "Titanic (1997)",
    "Spirited Away (2001)", "The Shawshank Redemption (1994)", "Blade Runner (1982)", "Clueless (1995)",
]
_BUILTIN_TEXT = [
    "Pretend you are a movie recommender system. I will give you a conversation between a user and you "
    "(a recommender system). Based on the conversation, you need to reply with 20 recommendations. List the "
    "standardized English title of each movie in each line in the form of \"movie name\" (release_year) with "
    "NO extra words or sentences. Here is the conversation: ",
    "User: I loved sci-fi thrillers with a twist, anything like that? Something dark but not too violent.",
    "Here is my watch history, oldest first: ",
    "You are a helpful assistant. Recommend the next 20 movies the user will watch, one per line.",
]


@dataclass
class TinyArgs:
    output_dir: str
    tokenizer: str = "bpe"  # "bpe" (trained on the data set) or "qwen" (real Qwen2.5 vocabulary)
    dataset_path: str | None = None
    family: str = "qwen3"  # "qwen3" or "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 2048  # bpe only (target size incl. the 256 byte tokens and 3 special tokens)
    max_position_embeddings: int = 2048
    seed: int = 0
    max_corpus_samples: int = 20000  # bpe: train on at most this many train records (random, seeded)
    catalog_tokens: bool = False  # bpe: every catalog entry's `Title (Year)` is one token (needs dataset_path)
    marker_tokens: bool = False  # bpe: every method marker is one token


# ----------------------------------------------------------------------------------------------- tokenizer
def _bpe_split_pattern() -> str:
    """Qwen2.5's split regex with digit runs of up to 4 kept together (Qwen splits every digit): titles end in a
    year, and one token per year shortens every list the tiny model generates by ~40% (see the module docstring)."""
    from modeling.qwen_vocab import QWEN25_PAT_STR

    assert r"|\p{N}|" in QWEN25_PAT_STR
    return QWEN25_PAT_STR.replace(r"|\p{N}|", r"|\p{N}{1,4}|")


def _corpus_from_dataset(dataset_path: str, max_samples: int, seed: int) -> list[str]:
    """Message contents of the train split (`prompt` + `completion`) of a processed data set."""
    from datasets import load_from_disk

    split_dir = Path(dataset_path) / "train"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} not found: --dataset_path must be a processed_datasets/<name> folder")
    ds = load_from_disk(str(split_dir))
    columns = [c for c in ("prompt", "completion") if c in ds.column_names]
    if not columns:
        raise ValueError(f"{split_dir} has neither `prompt` nor `completion` (columns: {ds.column_names})")
    if len(ds) > max_samples:
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    texts: list[str] = []
    for row in ds.select_columns(columns):
        for col in columns:
            for message in row[col] or []:
                content = message.get("content")
                if content:
                    texts.append(content)
    if not texts:
        raise ValueError(f"{split_dir} holds no message text to train a tokenizer on")
    return texts


def _builtin_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = list(_BUILTIN_TEXT)
    for _ in range(200):
        titles = rng.sample(_BUILTIN_TITLES, k=10)
        texts.append("\n".join(titles))
        texts.append("\n".join(f"{i + 1}. {t}" for i, t in enumerate(titles)))
    return texts


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Byte-level BPE (Qwen's split regex, 4-digit groups; ByteLevel), ChatML specials; a PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_bpe_split_pattern()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes, no unk
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=1_000_000,  # no limit from the tokenizer; training configs set max_length
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )


def catalog_units(dataset_path: str | os.PathLike) -> list[str]:
    """Every distinct rendered ``Title (Year)`` of ``<dataset_path>/catalog.json``, in catalog order (merged
    duplicates render like their canonical entry and are listed once)."""
    from preprocess.common import item_line

    path = Path(dataset_path) / "catalog.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --catalog_tokens needs a processed_datasets/<name> folder")
    items = json.loads(path.read_text(encoding="utf-8"))
    return list(dict.fromkeys(item_line(it["title"], it.get("year")) for it in items))


def method_markers() -> list[str]:
    """Every marker a method's prompts or parsers look for (RecPO's answer tags, DeepRec's tool and answer tags)."""
    from preprocess.recpo_prompts import ANSWER_END, ANSWER_MARKER
    from preprocess import deeprec_prompts as d

    return list(dict.fromkeys([ANSWER_MARKER, ANSWER_END, d.THINK_OPEN, d.THINK_CLOSE, *d.TOOL_MARKERS,
                               d.ANSWER_OPEN, d.ANSWER_CLOSE]))


def _byte_level_form(text: str) -> str:
    """``text`` in the byte alphabet (each UTF-8 byte one character), as the ByteLevel pre-tokenizer writes it."""
    from tokenizers import pre_tokenizers

    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                   .pre_tokenize_str(text))


def add_unit_tokens(tokenizer, units: list[str]) -> int:
    """Add each string of ``units`` as one atomic added token (not special, matched in raw text, longest match
    first); returns how many were new. ``decode`` must give the unit back byte for byte: the ByteLevel decoder maps
    an added token character by character through the byte table when every character is in that table, which
    garbles a space-free non-ASCII unit (``Amélie`` -> b"Am\\xe9lie"). For those units a ``Replace`` step in front
    of the decoder rewrites the token into its byte-level spelling first (a valid-UTF-8 BPE token can never
    contain such a unit, so nothing else is rewritten)."""
    from tokenizers import AddedToken, decoders, pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    units = [u for u in dict.fromkeys(units) if u and u not in tokenizer.get_vocab()]
    added = tokenizer.add_tokens([AddedToken(u, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                             special=False) for u in units])
    garbled = [u for u in units if not u.isascii() and set(u) <= alphabet]
    if garbled:
        backend = tokenizer.backend_tokenizer
        backend.decoder = decoders.Sequence([*(decoders.Replace(u, _byte_level_form(u)) for u in garbled),
                                             decoders.ByteLevel()])
    return added


def save_tokenizer(tokenizer, output_dir: str | os.PathLike) -> None:
    """save_pretrained with `tokenizer_class: PreTrainedTokenizerFast` (see qwen_vocab.save_fast_tokenizer)."""
    from modeling.qwen_vocab import save_fast_tokenizer

    save_fast_tokenizer(tokenizer, output_dir)


def build_tokenizer(kind: str = "bpe", dataset_path: str | None = None, vocab_size: int = 2048, seed: int = 0,
                    max_corpus_samples: int = 20000, catalog_tokens: bool = False, marker_tokens: bool = False):
    if kind == "qwen":
        if catalog_tokens or marker_tokens:
            raise ValueError("--catalog_tokens / --marker_tokens are for the bpe tokenizer; the qwen tokenizer is "
                             "kept as is for the tests that need the real token boundaries")
        from modeling.qwen_vocab import load_qwen_tokenizer

        return load_qwen_tokenizer()
    if kind != "bpe":
        raise ValueError(f"tokenizer must be 'bpe' or 'qwen', got {kind!r}")
    if catalog_tokens and not dataset_path:
        raise ValueError("--catalog_tokens needs --dataset_path (the processed data set whose catalog.json to add)")
    texts = _corpus_from_dataset(dataset_path, max_corpus_samples, seed) if dataset_path else _builtin_corpus(seed)
    tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    if marker_tokens:
        add_unit_tokens(tok, method_markers())
    if catalog_tokens:
        add_unit_tokens(tok, catalog_units(dataset_path))
    return tok


# ----------------------------------------------------------------------------------------------- model
def make_config(family: str, tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=128, max_position_embeddings=2048):
    from transformers import LlamaConfig, Qwen3Config

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not divisible by num_kv_heads {num_kv_heads}")
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=pad_id,  # as Qwen2.5: <|endoftext|> is the nominal bos; nothing prepends it
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if family == "qwen3":
        return Qwen3Config(**common)
    if family == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"family must be 'qwen3' or 'llama', got {family!r}")


def build_tiny_model(output_dir, tokenizer="bpe", dataset_path=None, family="qwen3", hidden_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=2048,
                     max_position_embeddings=2048, seed=0, max_corpus_samples=20000, catalog_tokens=False,
                     marker_tokens=False):
    """Build, save and return (model, tokenizer). See the module docstring."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    args = TinyArgs(output_dir=str(output_dir), tokenizer=tokenizer, dataset_path=dataset_path, family=family,
                    hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                    intermediate_size=intermediate_size, vocab_size=vocab_size,
                    max_position_embeddings=max_position_embeddings, seed=seed,
                    max_corpus_samples=max_corpus_samples, catalog_tokens=catalog_tokens,
                    marker_tokens=marker_tokens)
    tok = build_tokenizer(tokenizer, dataset_path, vocab_size, seed, max_corpus_samples, catalog_tokens,
                          marker_tokens)
    config = make_config(family, tok, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                         max_position_embeddings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    save_tokenizer(tok, out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_build.json").write_text(json.dumps({**asdict(args), "n_params": n_params}, indent=2) + "\n")
    return model, tok


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m modeling.tiny",
        description="Build a random-init tiny Qwen3/Llama causal LM + tokenizer for CPU runs.",
    )
    defaults = TinyArgs(output_dir="")
    p.add_argument("--output_dir", required=True, help="where to save the model and tokenizer")
    p.add_argument("--tokenizer", choices=["bpe", "qwen"], default=defaults.tokenizer,
                   help="bpe: train a small byte-level BPE on the data; qwen: the real Qwen2.5 vocabulary")
    p.add_argument("--dataset_path", default=None,
                   help="processed_datasets/<name> folder whose train text trains the BPE (default: built-in text)")
    p.add_argument("--family", choices=["qwen3", "llama"], default=defaults.family)
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings", "seed", "max_corpus_samples"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--catalog_tokens", action="store_true",
                   help="bpe: add every catalog entry's rendered `Title (Year)` as one token (needs --dataset_path)")
    p.add_argument("--marker_tokens", action="store_true",
                   help="bpe: add every method marker (<answer>, <think>, DeepRec's tags) as one token")
    a = p.parse_args(argv)
    t0 = time.time()
    model, tok = build_tiny_model(**vars(a))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {a.family} tiny model ({n_params / 1e6:.2f}M params, vocab {len(tok)}, tokenizer {a.tokenizer}) "
          f"to {a.output_dir} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
