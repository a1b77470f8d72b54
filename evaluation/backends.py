"""Generation backends for evaluation: greedy decoding, one completion per chat prompt.

Every backend has one method, `generate(prompts) -> list[str]`, where a prompt is a list of chat messages
(`{"role", "content"}`) and the result holds one decoded completion (assistant text only) per prompt, in order.

* `HFBackend`     - `transformers` `model.generate(do_sample=False)`, left padding, length-sorted batches.
* `VLLMBackend`   - `vllm.LLM.chat` with `SamplingParams(temperature=0)`; vllm is imported lazily.
* `StaticBackend` - fixed answers (tests, oracles, replaying completions produced elsewhere).

`make_backend("hf" | "vllm" | "auto", model_path, **options)` builds one from a model folder.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Messages = list[dict]


@runtime_checkable
class GenerationBackend(Protocol):
    """Greedy generation: one completion (assistant text, special tokens removed) per chat prompt."""

    def generate(self, prompts: list[Messages]) -> list[str]: ...


def prompt_key(prompt: Messages | str) -> str:
    """A canonical string for a chat prompt (dedup key, `StaticBackend` key)."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(clean_messages(prompt), sort_keys=True, ensure_ascii=False)


def clean_messages(prompt: Messages) -> Messages:
    """Drop None-valued keys that Arrow adds when message structs of a column differ (e.g. `name: None`)."""
    return [{k: v for k, v in dict(m).items() if v is not None} for m in prompt]


def _truncate(prompts: list[Messages], tokenizer, max_prompt_length: int | None) -> list[Messages]:
    """History cut oldest first (``preprocess.prompting.fit_prompts``); a prompt that cannot fit without cutting its
    instruction is generated whole (evaluation scores every row) and counted in a warning."""
    if not max_prompt_length:
        return prompts
    from preprocess.prompting import fit_prompts

    fitted, report = fit_prompts(prompts, tokenizer, max_prompt_length)
    if report.unfit:
        logger.warning("%d of %d prompts do not fit max_prompt_length=%d without cutting their instruction; they are "
                       "generated whole. First: %s", report.unfit, report.rows, max_prompt_length,
                       " | ".join(report.unfit_examples))
    return fitted


# ------------------------------------------------------------------------------------------------------ HF
class HFBackend:
    """Greedy `model.generate` over a chat-templated, left-padded batch; returns the decoded new tokens only.

    Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`), optionally fitted to
    `max_prompt_length` tokens by cutting their history (`preprocess.prompting.fit_prompts`), sorted by length
    (longest first: similar lengths share a batch, and an out-of-memory shows on the first batch) and
    generated `batch_size` at a time. Results come back in the input order.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        max_prompt_length: int | None = None,
        show_progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.max_prompt_length = max_prompt_length
        self.show_progress = show_progress
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; evaluation renders chat prompts with it")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        self._eos_ids = self._stop_ids()

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is None:
                continue
            ids.update([eos] if isinstance(eos, int) else list(eos))
        return ids

    def _generation_config(self):
        from transformers import GenerationConfig

        base = getattr(self.model, "generation_config", None)
        config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
        # Greedy: clear the sampling knobs a chat model ships with (else transformers warns on every call).
        config.do_sample = False
        config.num_beams = 1
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.min_p = None
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        config.pad_token_id = self.tokenizer.pad_token_id
        if self._eos_ids:
            config.eos_token_id = sorted(self._eos_ids)
        return config

    def encode(self, prompts: list[Messages]) -> list[list[int]]:
        """Token ids of each chat-templated prompt (generation prompt appended, truncated when asked)."""
        prompts = _truncate([clean_messages(p) for p in prompts], self.tokenizer, self.max_prompt_length)
        texts = [
            self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        # The template already holds any BOS / special tokens: do not add them twice.
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[Messages], seen: list[list[int]] | None = None, item_tokens=None) -> list[str]:
        """Greedy completions; with ``item_tokens`` (``modeling.item_decoding.ItemTokens``) and ``seen`` (catalog
        ids per prompt) decoding is item-aware: no item of the prompt's ``seen`` list nor one already written."""
        import torch
        from tqdm.auto import tqdm

        if not prompts:
            return []
        if (seen is None) != (item_tokens is None) or (seen is not None and len(seen) != len(prompts)):
            raise ValueError("item-aware decoding needs both item_tokens and one seen list per prompt")
        encoded = self.encode(prompts)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        config = self._generation_config()
        device = next(self.model.parameters()).device
        outputs: list[str | None] = [None] * len(prompts)
        self.tokenizer.padding_side = "left"
        was_training = self.model.training
        self.model.eval()
        try:
            with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not self.show_progress) as bar:
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    padded = self.tokenizer.pad(
                        {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
                    )
                    input_ids = padded["input_ids"].to(device)
                    attention_mask = padded["attention_mask"].to(device)
                    extra = {}
                    if item_tokens is not None:
                        from transformers import LogitsProcessorList

                        from modeling.item_decoding import item_aware_processor

                        extra["logits_processor"] = LogitsProcessorList(
                            [item_aware_processor(item_tokens, [seen[i] for i in batch])])
                    with torch.inference_mode():
                        generated = self.model.generate(
                            input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra
                        )
                    new_tokens = generated[:, input_ids.shape[1] :].tolist()
                    for i, tokens in zip(batch, new_tokens):
                        outputs[i] = self._decode(tokens)
                    bar.update(len(batch))
        finally:
            if was_training:
                self.model.train()
        return [o if o is not None else "" for o in outputs]

    def close(self) -> None:
        """Drop the model reference so its memory can be freed (eval_val.py loads one checkpoint at a time)."""
        self.model = None

    def _decode(self, tokens: list[int]) -> str:
        # Cut at the first stop token: everything after it is padding of a finished row.
        for pos, tok in enumerate(tokens):
            if tok in self._eos_ids:
                tokens = tokens[:pos]
                break
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- vLLM
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend:
    """Greedy `vllm.LLM.chat` (`SamplingParams(temperature=0)`), one completion per prompt."""

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = 256,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_prompt_length: int | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        show_progress: bool = True,
    ):
        try:
            import vllm
        except ImportError as err:  # ModuleNotFoundError, or a broken install (CUDA libraries missing)
            raise ImportError(
                f"--backend vllm needs the `vllm` package, which cannot be imported here ({err}). Install it on a "
                "CUDA machine (see docs/install.md, requirements-gpu.txt), or use --backend hf."
            ) from err
        self.max_new_tokens = int(max_new_tokens)
        self.max_prompt_length = max_prompt_length
        self.show_progress = show_progress
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            tensor_parallel_size=int(tensor_parallel_size),
            gpu_memory_utilization=float(gpu_memory_utilization),
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        self.llm = vllm.LLM(**kwargs)
        self.sampling_params = vllm.SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, n=1)

    def generate(self, prompts: list[Messages]) -> list[str]:
        if not prompts:
            return []
        prompts = [clean_messages(p) for p in prompts]
        if self.max_prompt_length:
            prompts = _truncate(prompts, self.llm.get_tokenizer(), self.max_prompt_length)
        results = self.llm.chat(
            prompts, self.sampling_params, use_tqdm=self.show_progress, add_generation_prompt=True
        )
        if len(results) != len(prompts):
            raise RuntimeError(f"vllm returned {len(results)} results for {len(prompts)} prompts")
        return [r.outputs[0].text for r in results]

    def close(self) -> None:
        """Best-effort release of the engine and its GPU memory (before loading the next checkpoint)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - module layout differs across vllm versions; freeing is best effort
            pass
        del llm
        import gc

        gc.collect()


# -------------------------------------------------------------------------------------------------- static
class StaticBackend:
    """Fixed answers: a mapping (prompt -> text), a sequence (i-th prompt of each call -> text) or a callable.

    Mapping keys may be `prompt_key(prompt)` strings or the content of the prompt's last message. Prompts
    with no answer get `default` (raise KeyError when `default` is None). `calls` counts `generate` calls and
    `prompts_seen` lists every prompt asked for, so tests can check deduplication.
    """

    def __init__(
        self,
        completions_by_prompt_or_index: Mapping[str, str] | Sequence[str] | Callable[[Messages], str],
        default: str | None = "",
    ):
        self.source = completions_by_prompt_or_index
        self.default = default
        self.calls = 0
        self.prompts_seen: list[Messages] = []

    def _lookup(self, prompt: Messages, position: int) -> str:
        source = self.source
        if callable(source) and not isinstance(source, Mapping):
            return source(prompt)
        if isinstance(source, Mapping):
            for key in (prompt_key(prompt), prompt[-1]["content"] if prompt else None):
                if key is not None and key in source:
                    return source[key]
        elif isinstance(source, Sequence) and not isinstance(source, str):
            if position < len(source):
                return source[position]
        if self.default is None:
            raise KeyError(f"StaticBackend has no completion for prompt #{position}: {prompt_key(prompt)[:200]}")
        return self.default

    def generate(self, prompts: list[Messages]) -> list[str]:
        self.calls += 1
        self.prompts_seen.extend(prompts)
        return [self._lookup(p, i) for i, p in enumerate(prompts)]


# ---------------------------------------------------------------------------------------------------- make
_HF_OPTIONS = {"max_new_tokens", "batch_size", "max_prompt_length", "show_progress"}
_VLLM_OPTIONS = {
    "max_new_tokens", "tensor_parallel_size", "gpu_memory_utilization", "max_prompt_length", "max_model_len",
    "dtype", "trust_remote_code", "show_progress",
}
_LOAD_OPTIONS = {"dtype", "trust_remote_code"}


def resolve_backend_name(name: str) -> str:
    """"auto" -> "vllm" when vllm is importable and CUDA is available, else "hf"."""
    if name not in ("hf", "vllm", "auto"):
        raise ValueError(f"unknown backend {name!r}: choose hf, vllm or auto")
    if name != "auto":
        return name
    if not vllm_available():
        return "hf"
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def make_backend(name: str, model_path: str, **options) -> GenerationBackend:
    """Build a backend for the model folder `model_path`.

    Options: max_new_tokens, batch_size (hf), max_prompt_length, dtype, trust_remote_code, show_progress,
    tensor_parallel_size / gpu_memory_utilization / max_model_len (vllm). Options that do not apply to the
    chosen backend are ignored (so one option set serves "auto"); unknown options raise TypeError.
    """
    unknown = set(options) - _HF_OPTIONS - _VLLM_OPTIONS - _LOAD_OPTIONS
    if unknown:
        raise TypeError(f"make_backend got unknown options {sorted(unknown)}")
    resolved = resolve_backend_name(name)
    options = {k: v for k, v in options.items() if v is not None}
    if resolved == "vllm":
        from modeling.loading import check_weights_load  # vLLM's own load would not say what is missing

        check_weights_load(str(model_path), trust_remote_code=bool(options.get("trust_remote_code")))
        return VLLMBackend(str(model_path), **{k: v for k, v in options.items() if k in _VLLM_OPTIONS})
    from modeling.loading import load_model_and_tokenizer

    load_kw = {k: v for k, v in options.items() if k in _LOAD_OPTIONS}
    model, tokenizer = load_model_and_tokenizer(str(model_path), padding_side="left", **load_kw)
    try:
        import torch

        if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
            model = model.to("cuda")
    except StopIteration:  # a model without parameters (never in practice)
        pass
    return HFBackend(model, tokenizer, **{k: v for k, v in options.items() if k in _HF_OPTIONS})


def backend_options(args) -> dict:
    """`make_backend` options from the parsed command line (`evaluation.options.add_evaluation_arguments`)."""
    return dict(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code or None,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, show_progress=not args.no_progress,
    )
