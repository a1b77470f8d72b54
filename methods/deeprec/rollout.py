"""DeepRec's multi-turn episode loop (LLM <-> TRM) and its recommender for the evaluation seam.

One loop serves training (``methods.deeprec.trainer``: sampled, TRL's vLLM on GPU) and evaluation (greedy HF here):

    episodes = run_episodes(prompt_ids, histories, excludes, generator, retriever, title_of, encode, decode,
                            eos_ids, EpisodeSettings(max_calls=8, max_tokens=16384))

Per round, every still-active trajectory generates (one batched call) until ``<|end_of_preference|>``,
``</recommendation_list>``, EOS, its per-turn cap or its token budget. The loop itself finds the first stop in
what the generator returned and cuts there (a generator may run past a stop: the HF stop-string criterion is
per batch, vLLM keeps the stop token's tail), so generators only need "at most N new tokens". Then the rows that
asked for the TRM are retrieved in ONE batched ``retrieve(histories, preference_texts, k, exclude)`` call and
``\\n<|begin_of_item_list|>\\n1. title ...\\n<|end_of_item_list|>\\n`` is appended as ENVIRONMENT tokens
(``env_mask`` 0: no policy gradient, no KL). Token ids are kept segment by segment, so which tokens are the
environment's is known exactly (the released code re-found the marker token sub-sequences by hand).

Ends: ``answer`` (``</recommendation_list>``; an EOS token is appended as an environment token so the row reads as
terminated), ``eos``, ``call_limit`` (the model asks for call max_calls + 1: no retrieval, the episode stops),
``budget`` (more than ``max_tokens`` completion tokens, generated + injected: the trajectory is over-long and the
trainer masks it out entirely).

Generators: ``HFTokenGenerator`` (transformers ``generate``, greedy or sampled) and ``VLLMTokenGenerator`` (TRL's
vLLM, training on GPU); ``training_generator`` picks the trainer's, ``rollout_output`` turns episodes into what TRL's
``rollout_func`` returns.

``DeepRecRecommender`` runs the same loop greedily; an episode whose format fails is a miss (empty list); its
prediction text is the whole trajectory. It registers itself as eval_test.py's ``--recommender deeprec``, with its
flags (``DeepRecOptions``) and ``--episode_config`` (the training YAML's episode settings as defaults).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from evaluation.recommenders import Recommendation
from evaluation.registry import BuildRequest, register_recommender
from methods.deeprec.rewards import format_check_shares, parse_trajectory
from preprocess.deeprec_prompts import (
    ANSWER_CLOSE,
    END_PREFERENCE,
    MAX_CALLS,
    RETRIEVE_K,
    STOP_STRINGS,
    item_list_text,
    last_preference,
    render_prompt,
)
from trainers.distributed import agree_max

END_REASONS = ("answer", "eos", "call_limit", "budget")


@dataclass
class EpisodeSettings:
    max_calls: int = MAX_CALLS  # TRM calls per episode
    max_tokens: int = 16384  # completion tokens per trajectory (generated + injected)
    max_turn_tokens: int | None = None  # new tokens per generation call (None: the remaining budget)
    k: int = RETRIEVE_K  # items per TRM call

    def __post_init__(self):
        if self.max_calls < 1 or self.max_tokens < 1 or self.k < 1:
            raise ValueError(f"max_calls, max_tokens and k must be >= 1, got {self.max_calls}, {self.max_tokens}, "
                             f"{self.k}")
        if self.max_turn_tokens is not None and self.max_turn_tokens < 1:
            raise ValueError(f"max_turn_tokens must be >= 1 or None, got {self.max_turn_tokens}")


class TokenGenerator(Protocol):
    """``generate(rows, max_new_tokens) -> [(new_ids, logprobs or None)]``: one continuation per token row, at most
    ``max_new_tokens[i]`` tokens (it may stop early at a stop string or EOS, or run past one: the loop cuts)."""

    def generate(self, rows: list[list[int]], max_new_tokens: list[int]) -> list[tuple[list[int], list | None]]: ...


@dataclass
class Episode:
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)  # 1 = policy token, 0 = environment token
    logprobs: list[float] | None = None  # sampler log-probs (0.0 on environment tokens), if the generator gave any
    text: str = ""  # the completion text (generated segments decoded + injected text verbatim)
    n_calls: int = 0
    preferences: list[str] = field(default_factory=list)
    retrieved: list[list[int]] = field(default_factory=list)
    end_reason: str | None = None
    overlong: bool = False

    def to_record(self) -> dict:
        """JSON-able summary (TRL forwards it to the reward functions; predictions files store it)."""
        return {"text": self.text, "n_calls": self.n_calls, "preferences": list(self.preferences),
                "retrieved": [list(map(int, r)) for r in self.retrieved], "end_reason": self.end_reason,
                "overlong": self.overlong}


def cut_at_stop(ids: Sequence[int], decode: Callable[[list[int]], str], eos_ids: set[int],
                stops: Sequence[str] = STOP_STRINGS, before: str = "") -> tuple[list[int], str | None]:
    """The shortest prefix of ``ids`` that ends a turn, and why: ``(prefix, stop string | "eos" | None)``.

    EOS ends at its own token (kept); a stop string ends at the token that completes it (the smallest prefix whose
    decoded text contains it, found by bisection: decoding is monotone in prefixes for these ASCII markers).
    ``before``: the text already generated in this turn, so a stop string split across two generation calls (a
    per-turn cap) is found; only its last ``len(stop) - 1`` characters matter."""
    ids = list(ids)
    keep = max(len(s) for s in stops) - 1
    before = before[-keep:] if keep > 0 else ""
    eos_at = next((t for t, tok in enumerate(ids) if tok in eos_ids), None)
    body = ids if eos_at is None else ids[:eos_at]
    text = before + decode(body)
    if any(s in text for s in stops):
        lo, hi = 1, len(body)  # smallest n with a stop in before + decode(body[:n])
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s in before + decode(body[:mid]) for s in stops):
                hi = mid
            else:
                lo = mid + 1
        head = before + decode(body[:lo])
        first = min((head.find(s), s) for s in stops if s in head)[1]
        return body[:lo], first
    if eos_at is not None:
        return ids[:eos_at + 1], "eos"
    return ids, None


def run_episodes(prompt_ids: Sequence[Sequence[int]], histories: Sequence[Sequence[int]],
                 excludes: Sequence[Sequence[int]] | None, generator: TokenGenerator, retriever,
                 title_of: Callable[[int], str], encode: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], eos_ids: set[int], settings: EpisodeSettings,
                 round_rows: Callable[[int], int] | None = None, timings: dict | None = None) -> list[Episode]:
    """Run one episode per prompt (module docstring). ``retriever.retrieve(histories, preference_texts, k=,
    exclude=)`` -> (ids (B, k), scores); ``title_of(id)`` is the title line shown for a retrieved item.

    ``round_rows(n_active) -> n_rows`` makes the rounds collective: under ZeRO-3 (parameter gathering, transformers'
    ``synced_gpus``) and TRL's vLLM (server mode gathers every process's prompts and hands each process the slice
    ``process_index * len(prompts)``) every process must call ``generate`` the same number of times with the same
    number of rows. Each round it gets this process's active row count and returns the row count of every
    process (the largest; 0 ends the loop); the round's rows are padded to it with dummy rows (this process's
    first prompt, 1 new token) whose outputs are dropped. Default: this process's own count (no padding).
    ``timings`` (optional) accumulates seconds under ``generation`` and ``retrieval``."""
    n = len(prompt_ids)
    if len(histories) != n or (excludes is not None and len(excludes) != n):
        raise ValueError(f"{n} prompts, {len(histories)} histories, "
                         f"{'no' if excludes is None else len(excludes)} exclude lists")
    eps = [Episode() for _ in range(n)]
    active = list(range(n))
    timings = timings if timings is not None else {}
    eos_token = min(eos_ids) if eos_ids else None
    while True:
        for i in [i for i in active if len(eps[i].completion_ids) >= settings.max_tokens]:  # no room left
            eps[i].end_reason, eps[i].overlong = "budget", True
        active = [i for i in active if eps[i].end_reason is None]
        n_round = len(active) if round_rows is None else int(round_rows(len(active)))
        if n_round == 0:
            break
        if n_round < len(active):
            raise RuntimeError(f"round_rows returned {n_round} rows for a round with {len(active)} active rows")
        allow = []
        for i in active:
            room = settings.max_tokens - len(eps[i].completion_ids)
            allow.append(room if settings.max_turn_tokens is None else min(room, settings.max_turn_tokens))
        rows = [list(prompt_ids[i]) + eps[i].completion_ids for i in active]
        n_pad = n_round - len(rows)
        if n_pad and not n:
            raise ValueError("run_episodes got no prompts: a process that pads its rounds needs one prompt for the "
                             "dummy rows")
        t0 = time.perf_counter()
        outs = generator.generate(rows + [list(prompt_ids[0])] * n_pad, allow + [1] * n_pad)
        timings["generation"] = timings.get("generation", 0.0) + time.perf_counter() - t0
        if len(outs) != n_round:
            raise RuntimeError(f"the generator returned {len(outs)} continuations for {n_round} rows")
        outs = outs[:len(rows)]  # the dummy rows' outputs are dropped
        calls, still = [], []
        for i, cap, (new_ids, new_lp) in zip(active, allow, outs):
            ep = eps[i]
            new_ids, stop = cut_at_stop(list(new_ids)[:cap], decode, eos_ids, before=ep.text)
            _append(ep, new_ids, 1, None if new_lp is None else list(new_lp)[:len(new_ids)])
            ep.text += decode([t for t in new_ids if t not in eos_ids])
            if stop == ANSWER_CLOSE:
                ep.end_reason = "answer"
                if eos_token is not None:
                    _append(ep, [eos_token], 0)
            elif stop == "eos":
                ep.end_reason = "eos"
            elif stop == END_PREFERENCE:
                if ep.n_calls >= settings.max_calls:
                    ep.end_reason = "call_limit"
                else:
                    calls.append(i)
                    continue
            elif len(ep.completion_ids) >= settings.max_tokens:
                ep.end_reason, ep.overlong = "budget", True
            else:  # the per-turn cap: keep generating this turn next round
                still.append(i)
        if calls:
            prefs = [last_preference(eps[i].text) for i in calls]
            t0 = time.perf_counter()
            ids, _ = retriever.retrieve([list(histories[i]) for i in calls], prefs, k=settings.k,
                                        exclude=None if excludes is None else [list(excludes[i]) for i in calls])
            timings["retrieval"] = timings.get("retrieval", 0.0) + time.perf_counter() - t0
            for i, pref, row in zip(calls, prefs, ids):
                ep = eps[i]
                row = [int(x) for x in row]
                injected = item_list_text([title_of(x) for x in row])
                _append(ep, encode(injected), 0)
                ep.text += injected
                ep.n_calls += 1
                ep.preferences.append(pref)
                ep.retrieved.append(row)
                if len(ep.completion_ids) > settings.max_tokens:
                    ep.end_reason, ep.overlong = "budget", True
                else:
                    still.append(i)
        active = sorted(still)
    return eps


def _append(ep: Episode, ids: list[int], mask: int, logprobs: list | None = None) -> None:
    """Add tokens to an episode. Environment tokens (mask 0) get sampler log-prob 0.0: they are masked out of every
    loss and of TRL's importance-sampling statistics."""
    if mask == 1 and logprobs is not None and ep.logprobs is None:
        if ep.completion_ids:
            raise RuntimeError("the generator returned log-probs for some turns only")
        ep.logprobs = []
    ep.completion_ids.extend(ids)
    ep.env_mask.extend([mask] * len(ids))
    if ep.logprobs is not None:
        if mask == 0:
            lp = [0.0] * len(ids)
        else:
            if logprobs is None or len(logprobs) != len(ids):
                raise RuntimeError(f"{'no' if logprobs is None else len(logprobs)} log-probs for {len(ids)} "
                                   "generated tokens")
            lp = [float(x) for x in logprobs]
        ep.logprobs.extend(lp)


# ------------------------------------------------------------------------------------------------- HF generation
class HFTokenGenerator:
    """``transformers`` ``generate`` on token rows (left-padded, one batch of the active rows), greedy or sampled,
    with the stop strings as an early-stopping criterion (the loop still cuts exactly)."""

    def __init__(self, model, tokenizer, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int | None = None, batch_size: int | None = None, model_context=None,
                 eos_token_ids: Sequence[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids else None
        self.do_sample, self.temperature, self.top_p, self.top_k = do_sample, temperature, top_p, top_k
        self.batch_size = batch_size
        self.model_context = model_context  # a callable giving a context manager that yields the model to call

    def generate(self, rows, max_new_tokens):
        import contextlib

        import torch

        if not rows:
            return []
        out: list = [None] * len(rows)
        step = self.batch_size or len(rows)
        ctx = self.model_context() if self.model_context is not None else contextlib.nullcontext(self.model)
        with ctx as model, torch.no_grad():
            for s in range(0, len(rows), step):
                chunk = list(range(s, min(len(rows), s + step)))
                for i, ids in zip(chunk, self._generate(model, [rows[i] for i in chunk],
                                                        max(max_new_tokens[i] for i in chunk))):
                    out[i] = (ids[:max_new_tokens[i]], None)
        return out

    def _generate(self, model, rows, max_new):
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r) for r in rows)
        device = next(model.parameters()).device
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
        kw = dict(max_new_tokens=max_new, do_sample=self.do_sample, pad_token_id=pad,
                  eos_token_id=self.eos_token_ids or tok.eos_token_id, stop_strings=list(STOP_STRINGS))
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0)
        config = GenerationConfig(**kw)
        was_training = model.training
        model.eval()
        try:
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                 tokenizer=tok)
        finally:
            model.train(was_training)
        return [row[width:].tolist() for row in gen.cpu()]


def rollout_sampling(args) -> dict:
    """The sampling settings of a stage's rollouts (config fields ``temperature``, ``top_p``, ``top_k``; the GPU
    configs keep the paper's temperature 1.0). TRL divides the policy logits by the same ``temperature``, so the
    importance ratio compares like with like."""
    return {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}


# ------------------------------------------------------------------------------------------------- vLLM generation
def agree_round_rows(accelerator, n_local: int) -> int:
    """Rows every process generates in one DeepRec round: the largest active row count over the processes (0: every
    process is done). Under ZeRO-3 every ``generate`` is a collective (TRL's ``unwrap_model_for_generation`` gathers
    the parameters; transformers' ``synced_gpus`` runs a forward on every process per token), and TRL's vLLM server
    mode hands each process the completions ``process_index * len(prompts)`` onward of everyone's prompts: a process
    that skipped a round or sent fewer rows would hang the others or get their rows' completions.
    ``run_episodes`` pads a process's rows to this count with dummy rows and drops their outputs."""
    return agree_max(accelerator, n_local)


class VLLMTokenGenerator:
    """One multi-turn round through TRL's ``trainer.vllm_generation`` (colocate or server), n = 1 per row: the
    stop strings and this round's token cap are set on it for the call and restored after. The cap is the largest
    of EVERY process's rows (server mode generates everyone's prompts with the main process's cap; colocated
    tensor-parallel ranks must pass the same sampling parameters), so every process must call ``generate`` the same
    number of times with the same number of rows (``run_episodes``' ``round_rows``). Written against TRL 1.16's
    ``VLLMGeneration.generate(prompts, images, num_generations, profiler)``; tests/test_multiprocess_deeprec.py runs
    its server branch with a fake client."""

    def __init__(self, trainer):
        self.trainer = trainer

    def generate(self, rows, max_new_tokens):
        vg = self.trainer.vllm_generation
        saved = vg.max_completion_length, vg.generation_kwargs
        vg.max_completion_length = agree_max(self.trainer.accelerator, max(max_new_tokens) if max_new_tokens else 1)
        vg.generation_kwargs = {**(saved[1] or {}), "stop": list(STOP_STRINGS), "include_stop_str_in_output": True}
        try:
            _, completion_ids, logprobs, _ = vg.generate(prompts=rows, images=None, num_generations=1)
        finally:
            vg.max_completion_length, vg.generation_kwargs = saved
        out = []
        for b, ids in enumerate(completion_ids):
            lp = None if logprobs is None else [x[0] if isinstance(x, (list, tuple)) else x for x in logprobs[b]]
            cap = max_new_tokens[b]
            out.append((list(ids)[:cap], None if lp is None else lp[:cap]))
        return out


def training_generator(trainer) -> TokenGenerator:
    """The generator of a training rollout: TRL's vLLM (``VLLMTokenGenerator``) when the trainer uses it, else HF
    ``generate`` sampled with ``rollout_sampling``, on the model TRL unwraps for generation (ZeRO-3: gathered)."""
    if trainer.use_vllm:
        return VLLMTokenGenerator(trainer)
    from trl.models import unwrap_model_for_generation

    a = trainer.args
    return HFTokenGenerator(
        trainer.model, trainer._tokenizer, do_sample=True, **rollout_sampling(a),
        eos_token_ids=list(trainer.eos_token_ids),
        model_context=lambda: unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                                          gather_deepspeed3_params=a.ds3_gather_for_generation))


def rollout_output(prompt_ids, episodes: list[Episode]) -> dict:
    """What TRL's ``rollout_func`` returns for a batch of episodes: token ids, sampler log-probs (when every episode
    has them), ``env_mask`` (TRL's ``tool_mask``; over-long trajectories are masked out entirely: no token of
    theirs is a policy token) and each episode's record (``deeprec_episode``, forwarded to the reward functions)."""
    logprobs = [e.logprobs for e in episodes]
    return {
        "prompt_ids": [list(p) for p in prompt_ids],
        "completion_ids": [e.completion_ids for e in episodes],
        "logprobs": logprobs if all(lp is not None for lp in logprobs) else None,
        "env_mask": [[0] * len(e.env_mask) if e.overlong else list(e.env_mask) for e in episodes],
        "deeprec_episode": [e.to_record() for e in episodes],
    }


# ------------------------------------------------------------------------------------------------- data helpers
def answer_item_ids(answer_lines: Sequence[str] | None, catalog, require_year: bool) -> list[int | None]:
    """Catalog id of each final-list line (None: no catalog item), with the matcher every reward uses
    (``rewards.judge.line_catalog_id``)."""
    from rewards.judge import line_catalog_id

    out: list[int | None] = []
    for line in answer_lines or []:
        iid = line_catalog_id(line.strip(), catalog, require_year)
        out.append(iid if isinstance(iid, int) and not isinstance(iid, bool) else None)
    return out


# ------------------------------------------------------------------------------------------------- recommender
# eval_test.py option <- train_deeprec.py config field: the episode a DeepRec model was trained on
EPISODE_KEYS = {"prompt_style": "prompt_style", "category": "category", "max_calls": "max_calls",
                "retrieve_k": "retrieve_k", "max_turn_tokens": "max_turn_tokens",
                "max_new_tokens": "max_trajectory_tokens"}


@dataclass
class DeepRecOptions:
    """eval_test.py's flags for ``--recommender deeprec``."""

    category: str = field(default="items", metadata={"help": "the item category named in prompts"})
    trm_path: str | None = field(default=None, metadata={"help": "the TRM folder (train_trm.py output)"})
    prompt_style: str = field(default="completion", metadata={
        "choices": ("completion", "chat"),
        "help": "the paper's base-model completion prompt, or the model's chat template"})
    max_calls: int = field(default=8, metadata={"help": "TRM calls per episode (paper: 8)"})
    retrieve_k: int = field(default=20, metadata={
        "help": "items per TRM call (paper: 20; use the value the model was trained with)"})
    max_turn_tokens: int | None = field(default=None, metadata={
        "help": "new tokens per generation turn (default: the remaining --max_new_tokens)"})
    episode_config: str | None = field(default=None, metadata={
        "help": "a train_deeprec.py YAML; its " + ", ".join(EPISODE_KEYS) + " (max_new_tokens = its "
                "max_trajectory_tokens) become the defaults, so the episodes are those the model was trained with (a "
                "field it leaves out: train_deeprec.py's default); flags on the command line still win"})


def episode_presets(parsed) -> dict:
    """The EPISODE_KEYS of ``--episode_config`` (a train_deeprec.py YAML) as eval_test.py defaults; a field the file
    leaves out is DeepRecConfig's default, the value train_deeprec.py trained with (SystemExit naming the file when
    it cannot be read). Nothing without --episode_config."""
    path = getattr(parsed, "episode_config", None)
    if not path:
        return {}
    import dataclasses

    import yaml

    from methods.deeprec.trainer import DeepRecConfig

    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except OSError as err:
        raise SystemExit(f"error: --episode_config {path}: {err.strerror}")
    if not isinstance(config, dict):
        raise SystemExit(f"error: --episode_config {path}: expected a YAML mapping of train_deeprec.py options")
    defaults = {f.name: f.default for f in dataclasses.fields(DeepRecConfig)}
    missing = [key for key in EPISODE_KEYS.values() if key not in config]
    if missing:
        print(f"[eval_test] --episode_config {path}: {', '.join(f'{k}={defaults[k]!r}' for k in missing)} "
              "(train_deeprec.py's defaults: not in the file)")
    return {option: config.get(key, defaults[key]) for option, key in EPISODE_KEYS.items()}


@register_recommender("deeprec", options=DeepRecOptions, presets=episode_presets,
                      help="the multi-turn LLM <-> TRM loop, greedy (--model_path = the LLM, --trm_path = the TRM)")
class DeepRecRecommender:
    """The DeepRec loop with greedy decoding as a seam recommender: ``recommend(dataset)`` -> one
    ``Recommendation`` per row (item ids of the final list; [] when the format fails: a miss), ``text`` = the
    whole trajectory. ``episode_stats`` after a run: TRM calls per episode, valid-format rate, end reasons (pass
    it as ``provenance`` to ``evaluate_recommender`` to get it into metrics.json)."""

    def __init__(self, model, tokenizer, retriever, catalog, settings: EpisodeSettings | None = None,
                 prompt_style: str = "completion", category: str = "items", require_year: bool | None = None,
                 batch_size: int = 16, max_history: int = 20, generator: TokenGenerator | None = None):
        from rewards.catalog import resolve_require_year

        self.model, self.tokenizer, self.retriever, self.catalog = model, tokenizer, retriever, catalog
        self.settings = settings or EpisodeSettings()
        self.prompt_style, self.category, self.max_history = prompt_style, category, max_history
        self.require_year = resolve_require_year(catalog, require_year)
        self.batch_size = batch_size
        self.generator = generator or HFTokenGenerator(model, tokenizer, do_sample=False)
        self.generation_seconds: float | None = None
        self.episode_stats: dict = {}
        self.episodes: list[Episode] = []

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "DeepRecRecommender":
        from modeling.loading import load_model_and_tokenizer
        from retrieval.retriever import TRMRetriever

        opts, args = request.options, request.args
        if not opts.trm_path:
            raise SystemExit("error: --recommender deeprec needs --trm_path (a train_trm.py folder)")
        model, tokenizer = load_model_and_tokenizer(request.model_path)
        model.eval()
        request.provenance.update(backend="transformers", recommender="deeprec", trm_path=opts.trm_path,
                                  prompt_style=opts.prompt_style, max_calls=opts.max_calls,
                                  retrieve_k=opts.retrieve_k, max_turn_tokens=opts.max_turn_tokens)
        settings = EpisodeSettings(max_calls=opts.max_calls, max_tokens=args.max_new_tokens,
                                   max_turn_tokens=opts.max_turn_tokens, k=opts.retrieve_k)
        return cls(model, tokenizer, TRMRetriever.load(opts.trm_path, encoder="auto"), request.data.catalog,
                   settings, prompt_style=opts.prompt_style, category=opts.category, batch_size=args.batch_size)

    def prompt_ids(self, prompts) -> list[list[int]]:
        tok = self.tokenizer
        if self.prompt_style == "chat":
            return [list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
                         ["input_ids"]) for p in prompts]
        return [list(tok(p)["input_ids"]) for p in prompts]

    def recommend(self, dataset) -> list[Recommendation]:
        rows = [dict(r) for r in dataset]
        tok = self.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        t0 = time.time()
        episodes: list[Episode] = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            prompts = [render_prompt(r, self.catalog, self.prompt_style, self.category, self.max_history,
                                     self.settings) for r in chunk]
            episodes += run_episodes(
                self.prompt_ids(prompts), [r.get("history") or [] for r in chunk],
                [r.get("seen") or [] for r in chunk], self.generator, self.retriever, self.catalog.display,
                lambda text: tok(text, add_special_tokens=False)["input_ids"],
                lambda ids: tok.decode(ids, skip_special_tokens=True), eos, self.settings)
        self.generation_seconds = round(time.time() - t0, 3)
        self.episodes = episodes
        recs, trajs = [], []
        for ep in episodes:
            traj = parse_trajectory(ep.text, real_calls=ep.n_calls)
            ids = answer_item_ids(traj.answer_lines, self.catalog, self.require_year) if traj.valid else []
            trajs.append(traj)
            recs.append(Recommendation(ids, ep.text))
        n = max(1, len(episodes))
        shares = format_check_shares(trajs)
        self.episode_stats = {
            "deeprec/calls_per_episode": sum(e.n_calls for e in episodes) / n,
            "deeprec/valid_format_rate": shares.pop("valid"),
            **{f"deeprec/{name}_rate": value for name, value in shares.items()},
            **{f"deeprec/end_{r}_rate": sum(e.end_reason == r for e in episodes) / n for r in END_REASONS},
        }
        return recs
