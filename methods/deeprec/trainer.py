"""DeepRec (Zheng et al. 2025) on TRL's GRPOTrainer: the LLM queries a traditional recommender (TRM) several times
while it reasons, then answers with a ranked top 10. Spec: docs/methods.md §4.

* Rollout: TRL's ``rollout_func`` running ``methods.deeprec.rollout.run_episodes`` (the loop evaluation runs too):
  generate until ``<|end_of_preference|>``, retrieve the top 20 for (history, preference text) with the in-process
  TRM (``retrieval.TRMRetriever``), append the item list as environment tokens (``env_mask`` 0 -> TRL's
  ``tool_mask``: no policy gradient, no KL), continue; at most ``max_calls`` calls, ``max_trajectory_tokens``
  completion tokens (over-long trajectories are masked out entirely). Generation: HF ``generate`` on the active
  rows (CPU / no vLLM), TRL's ``vllm_generation`` on GPU (``VLLMTokenGenerator``, written against TRL 1.16's API).

  Why not ``environment_factory``: TRL's environment loop is a TOOL-CALL loop -- it needs a chat template that
  renders tool schemas and a response parser (``parse_response``) that turns the model's JSON tool calls into
  function calls, and it appends tool results as chat messages. DeepRec's protocol is plain-string markers in a
  base model's completion-style prompt: generation must stop at a stop STRING, the tool result is raw text
  appended to the same assistant turn, and the episode needs its own call limit and trajectory token budget.
  ``rollout_func`` hands us the generation and lets us return ``env_mask`` ourselves.

  How often TRL hands each prompt to ``rollout_func`` (TRL 1.16): its docstring says "the raw per-process prompt
  slice with no duplication", but the ``RepeatSampler`` repeats every prompt ``num_generations`` times in a row
  before ``_generate`` is called, so ``rollout_func`` receives each prompt G times in ONE call and must return one
  completion per entry (tests/test_deeprec.py::test_rollout_func_sees_each_prompt_G_times checks this).
  ``rollout_func`` receives only the prompts, so the trainer stashes the batch's rows (history, seen, target) in
  ``_generate_and_score_completions`` and reads them by position.
* Rewards: TRL reward functions over one ``DeepRecJudge`` per batch: stage ``cold`` R_fmt + R_inv + R_div
  (``format``, ``invocation``, ``diversity``), stage ``rec`` R_fmt + R_out + R_sim (``format``, ``outcome``,
  ``similarity``), each logged as ``rewards/<name>/mean``. R_div embeds the preference texts with the TRM's text
  encoder; R_sim needs item embeddings (``ItemEmbeddings``: title text embeddings and TRM item vectors).
* Advantages: ``core_algos.reinforce_pp_baseline`` (group-mean baseline over the G samples, then whitened over the
  global batch's policy tokens: the (B,) rewards and token counts are gathered across processes).
* Loss: the shared template with ``core_algos.ppo_clip_loss`` on token ratios, clip [1 - 0.2, 1 + 0.28] =
  [0.8, 1.28], aggregated over the policy tokens (``loss_aggregation`` token (default) or sequence); k3 KL only if
  ``beta`` > 0 (paper: none).
* Difficulty-based selection (``difficulty_selection``): training rows whose target is outside the TRM's top
  ``difficulty_top_k`` (history only) are dropped; ``selection_stats`` reports the counts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from methods.deeprec.rollout import (
    END_REASONS,
    EpisodeSettings,
    HFTokenGenerator,
    answer_item_ids,
    render_prompt,
    run_episodes,
)
from preprocess.deeprec_prompts import PROMPT_STYLES, STOP_STRINGS
from methods.deeprec.rewards import (
    diversity_reward,
    format_check_shares,
    format_reward,
    invocation_reward,
    outcome_reward,
    parse_trajectory,
    similarity_reward,
    target_position,
)
from trainers.base import RecRLConfig, RecRLTrainer
from trainers.core_algos import reinforce_pp_baseline

logger = logging.getLogger(__name__)

STAGES = ("cold", "rec")
STAGE_REWARDS = {"cold": ("format", "invocation", "diversity"), "rec": ("format", "outcome", "similarity")}
LOSS_AGGREGATIONS = ("token", "sequence")


@dataclass
class DeepRecConfig(RecRLConfig):
    """``RecRLConfig`` plus DeepRec's options (defaults: the paper, docs/methods.md §4.7)."""

    resume_identity_fields: ClassVar[tuple[str, ...]] = ("stage", "trm_path")
    resume_identity_paths: ClassVar[tuple[str, ...]] = ("trm_path",)

    stage: str = field(default="cold", metadata={"help": "cold: R_fmt + R_inv + R_div (stage 1); rec: R_fmt + "
                                                         "R_out + R_sim (stage 2, from a stage-1 checkpoint).",
                                                 "choices": list(STAGES)})
    trm_path: str | None = field(default=None, metadata={"help": "TRM checkpoint folder (train_trm.py)."})
    max_calls: int = field(default=8, metadata={"help": "TRM calls per trajectory."})
    retrieve_k: int = field(default=20, metadata={"help": "Items the TRM returns per call."})
    max_trajectory_tokens: int = field(default=16384, metadata={
        "help": "Completion tokens per trajectory (generated + injected); longer ones are masked out entirely."})
    max_turn_tokens: int | None = field(default=None, metadata={
        "help": "New tokens per generation call (None: the trajectory's remaining budget)."})
    prompt_style: str = field(default="completion", metadata={
        "help": "completion (paper, base model: 'Assistant:\\n<think>\\n') or chat (warm-started instruct model).",
        "choices": list(PROMPT_STYLES)})
    category: str = field(default="items", metadata={"help": "What the items are, in the prompt (e.g. movies)."})
    max_history: int = field(default=20, metadata={"help": "History items shown in the prompt."})
    difficulty_selection: bool = field(default=True, metadata={
        "help": "Drop training rows whose target is outside the TRM's top difficulty_top_k (history only)."})
    difficulty_top_k: int = field(default=100, metadata={"help": "k of the difficulty-based selection."})
    loss_aggregation: str = field(default="token", metadata={
        "help": "token: mean over all policy tokens of the micro-batch; sequence: per-trajectory mean, then mean.",
        "choices": list(LOSS_AGGREGATIONS)})
    n_items: int = field(default=10, metadata={"help": "Items in the final list (DeepRec: 10)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip: ratio >= 0.8."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clip: ratio <= 1.28."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (DeepRec: no KL)."})
    num_generations: int | None = field(default=8, metadata={"help": "Samples per prompt (DeepRec: 8)."})

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_aggregation must be one of {LOSS_AGGREGATIONS}, got {self.loss_aggregation!r}")
        if self.n_items != 10:
            raise ValueError(f"DeepRec's final list has exactly 10 items (R_out assumes it), got n_items={self.n_items}")
        if self.difficulty_top_k < 1 or self.max_history < 1:
            raise ValueError("difficulty_top_k and max_history must be >= 1")
        if self.max_prompt_length is not None:
            raise ValueError("max_prompt_length must stay None: DeepRec renders its own prompts from the last "
                             "max_history items")
        if self.mask_truncated_completions:
            raise ValueError("mask_truncated_completions must stay False: DeepRec masks over-long trajectories "
                             "itself (a call-limit episode does not end with EOS but must keep its -1 reward)")
        EpisodeSettings(self.max_calls, self.max_trajectory_tokens, self.max_turn_tokens, self.retrieve_k)
        super().__post_init__()

    @property
    def episode_settings(self) -> EpisodeSettings:
        return EpisodeSettings(self.max_calls, self.max_trajectory_tokens, self.max_turn_tokens, self.retrieve_k)


# ------------------------------------------------------------------------------------------------ embeddings
class ItemEmbeddings:
    """R_sim's two item embeddings, L2-normalised, rows in ``ids`` order: ``text`` (the title's text embedding)
    and ``trm`` (the TRM's item vectors)."""

    def __init__(self, ids, text, trm):
        text, trm = np.asarray(text, dtype=np.float32), np.asarray(trm, dtype=np.float32)
        ids = [int(i) for i in ids]
        if text.shape[0] != len(ids) or trm.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids, {text.shape[0]} text rows, {trm.shape[0]} TRM rows")
        self.row = {iid: r for r, iid in enumerate(ids)}
        self.text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        self.trm = trm / np.maximum(np.linalg.norm(trm, axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_retriever(cls, retriever, title_embeddings=None) -> "ItemEmbeddings":
        """TRM item vectors from ``retriever``; text = ``title_embeddings`` (rows in the retriever's catalog order)
        or, without them, the TRM's frozen item-text embeddings (title + genres + description)."""
        ids = [int(i) for i in retriever.catalog_ids]
        if title_embeddings is None:
            title_embeddings = retriever.model.item_text[1:].detach().cpu().numpy()
        return cls(ids, title_embeddings, retriever.item_embeddings())

    def cosines(self, predicted, target: int) -> tuple[list, list]:
        """(text cosines, TRM cosines) of each predicted id with the target (None for an id without a row)."""
        t = self.row.get(int(target))
        if t is None:
            raise ValueError(f"target {target!r} has no item embedding")
        text, trm = [], []
        for iid in predicted:
            r = None if iid is None else self.row.get(int(iid))
            text.append(None if r is None else float(self.text[r] @ self.text[t]))
            trm.append(None if r is None else float(self.trm[r] @ self.trm[t]))
        return text, trm


def rollout_sampling(args: DeepRecConfig) -> dict:
    """The sampling settings of a stage's rollouts (config fields ``temperature``, ``top_p``, ``top_k``; the GPU
    configs keep the paper's temperature 1.0). TRL divides the policy logits by the same ``temperature``, so the
    importance ratio compares like with like."""
    return {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}


# ------------------------------------------------------------------------------------------------ rewards
@dataclass
class DeepRecScore:
    rewards: dict  # name -> value, all five terms
    trajectory: object
    predicted: list
    rank: int | None  # 0-based position of the target in the final list (valid format only)


class DeepRecJudge:
    """Scores the episodes of one generation batch once; every reward function of the batch reads the result."""

    def __init__(self, catalog, require_year: bool, item_embeddings: ItemEmbeddings | None, encode_preferences):
        self.catalog, self.require_year = catalog, require_year
        self.item_embeddings, self.encode_preferences = item_embeddings, encode_preferences
        self._key, self.last = None, []

    def score(self, episodes: list[dict], targets: list[int], need_similarity: bool = True) -> list[DeepRecScore]:
        # R_inv / R_div / the no_call check count the rollout's REAL calls (``n_calls``) and the preference texts
        # the TRM got, not item-list blocks in the text: a model that types its own lists gains nothing
        trajs = [parse_trajectory(e["text"], real_calls=e.get("n_calls")) for e in episodes]
        prefs = [list(e["preferences"]) if e.get("preferences") is not None else t.preferences
                 for e, t in zip(episodes, trajs)]
        # R_div: one batched encode of every preference of trajectories with >= 2 calls
        multi = [i for i, t in enumerate(trajs) if t.n_calls >= 2]
        texts = [p for i in multi for p in prefs[i][:trajs[i].n_calls]]
        emb = self.encode_preferences(texts) if texts else np.zeros((0, 1))
        div, pos = {}, 0
        for i in multi:
            n = len(prefs[i][:trajs[i].n_calls])
            div[i] = diversity_reward(emb[pos:pos + n])
            pos += n
        out = []
        for i, (traj, target) in enumerate(zip(trajs, targets, strict=True)):
            predicted = answer_item_ids(traj.answer_lines, self.catalog, self.require_year) if traj.valid else []
            sim = 0.0
            if traj.valid and need_similarity and self.item_embeddings is not None:
                sim = similarity_reward(*self.item_embeddings.cosines(predicted, target), valid=True)
            named = self.catalog.canonical_id(target)  # the id a line naming the target matches (duplicate titles)
            rewards = {"format": format_reward(traj), "invocation": invocation_reward(traj.n_calls),
                       "diversity": div.get(i, 0.0), "outcome": outcome_reward(predicted, named, traj.valid),
                       "similarity": sim}
            out.append(DeepRecScore(rewards, traj, predicted,
                                    target_position(predicted, named) if traj.valid else None))
        return out

    def __call__(self, completion_ids, episodes, targets, log_metric=None, need_similarity=True):
        if self._key is not None and self._key[0] is completion_ids:  # same batch: shared by every reward func
            return self.last
        if episodes is None:
            raise KeyError("no `deeprec_episode` field: the DeepRec rollout_func did not run")
        if targets is None or any(t is None for t in targets):
            raise KeyError("the dataset needs a `target` column (catalog ids) for every row")
        scores = self.score(list(episodes), [int(t) for t in targets], need_similarity)
        self._key, self.last = (completion_ids,), scores
        if log_metric is not None:
            # per episode; TRL averages each name over the logging step: the step's share of valid episodes
            # (deeprec/valid_format) and of episodes failing each check (deeprec/fail_<check>)
            for s, e in zip(scores, episodes):
                log_metric("deeprec/calls", float(s.trajectory.n_calls))
                log_metric("deeprec/hit@10", float(s.rank is not None))
                log_metric("deeprec/overlong", float(bool(e.get("overlong"))))
                for name, value in format_check_shares([s.trajectory]).items():
                    log_metric("deeprec/valid_format" if name == "valid" else f"deeprec/{name}", value)
                for reason in END_REASONS:
                    log_metric(f"deeprec/end_{reason}", float(e.get("end_reason") == reason))
        return scores


class DeepRecReward:
    """One DeepRec reward term as a TRL reward function (``__name__`` = the term)."""

    def __init__(self, name: str, judge: DeepRecJudge, need_similarity: bool):
        self.__name__, self.judge, self.need_similarity = name, judge, need_similarity

    def __call__(self, prompts, completions, completion_ids, deeprec_episode=None, target=None, log_metric=None,
                 **_) -> list[float]:
        scores = self.judge(completion_ids, deeprec_episode, target, log_metric, self.need_similarity)
        return [float(s.rewards[self.__name__]) for s in scores]


# ------------------------------------------------------------------------------------------------ rounds
def agree_round_max(accelerator, value: int) -> int:
    """The largest ``value`` over every process (a collective; one process: ``value``)."""
    if accelerator.num_processes == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=accelerator.device)
    return int(accelerator.gather(t).max().item())


def agree_round_rows(accelerator, n_local: int) -> int:
    """Rows every process generates in one DeepRec round: the largest active row count over the processes (0: every
    process is done). Under ZeRO-3 every ``generate`` is a collective (TRL's ``unwrap_model_for_generation`` gathers
    the parameters; transformers' ``synced_gpus`` runs a forward on every process per token), and TRL's vLLM server
    mode hands each process the completions ``process_index * len(prompts)`` onward of everyone's prompts: a process
    that skipped a round or sent fewer rows would hang the others or get their rows' completions.
    ``run_episodes`` pads a process's rows to this count with dummy rows and drops their outputs."""
    return agree_round_max(accelerator, n_local)


# ------------------------------------------------------------------------------------------------ vLLM
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
        vg.max_completion_length = agree_round_max(self.trainer.accelerator,
                                                   max(max_new_tokens) if max_new_tokens else 1)
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


# ------------------------------------------------------------------------------------------------ data
def select_by_difficulty(dataset, retriever, top_k: int = 100, batch_size: int = 512):
    """Keep the rows whose target is in the TRM's top ``top_k`` for the history alone (history and ``seen``
    excluded, as in every retrieval). Returns (kept dataset, stats). On a catalog too small for ``top_k`` the
    whole retrievable rest is the top (k is cut per batch to what every row can still retrieve)."""
    histories, seens, targets = dataset["history"], dataset["seen"], dataset["target"]
    n_catalog = len(retriever.catalog_ids) - len(getattr(retriever, "excluded_ids", ()))
    keep = []
    for s in range(0, len(targets), batch_size):
        h = [list(x or []) for x in histories[s:s + batch_size]]
        ex = [list(x or []) for x in seens[s:s + batch_size]]
        k = min(top_k, n_catalog - max(len(set(a) | set(b)) for a, b in zip(h, ex)))
        if k < 1:
            raise ValueError(f"rows {s}..{s + len(h) - 1}: nothing left to retrieve after excluding their history")
        ids, _ = retriever.retrieve(h, None, k=k, exclude=ex)
        keep += [s + j for j, (row, t) in enumerate(zip(ids, targets[s:s + batch_size]))
                 if t is not None and int(t) in {int(x) for x in row}]
    stats = {"difficulty_top_k": top_k, "rows_before": len(targets), "rows_kept": len(keep),
             "rows_dropped": len(targets) - len(keep)}
    return dataset.select(keep), stats


# ------------------------------------------------------------------------------------------------ trainer
class DeepRecTrainer(RecRLTrainer):
    """DeepRec on TRL (module docstring). Needs dataset columns ``history``, ``target`` (catalog ids) and
    ``seen``; a ``retriever`` (``retrieval.TRMRetriever`` or anything with its ``retrieve`` / ``encode``);
    ``item_embeddings`` for stage rec (default: ``ItemEmbeddings.from_retriever``)."""

    def __init__(self, model, args: DeepRecConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 catalog=None, retriever=None, item_embeddings: ItemEmbeddings | None = None,
                 encode_preferences=None, **kwargs):
        if not isinstance(args, DeepRecConfig):
            raise TypeError(f"DeepRecTrainer needs a DeepRecConfig, got {type(args).__name__}")
        if retriever is None:
            raise ValueError("DeepRecTrainer needs a retriever (the TRM): pass retriever=")
        if "rollout_func" in kwargs:
            raise ValueError("DeepRecTrainer brings its own rollout_func")
        if catalog is None and args.catalog_path is not None:
            from rewards.catalog import load_catalog

            catalog = load_catalog(args.catalog_path)
        if catalog is None:
            raise ValueError("DeepRecTrainer needs a catalog: pass catalog= or set args.catalog_path")
        self.retriever = retriever
        if item_embeddings is None and args.stage == "rec":
            item_embeddings = ItemEmbeddings.from_retriever(retriever)
        self.item_embeddings = item_embeddings
        self.encode_preferences = encode_preferences or retriever.encode
        self.selection_stats = None
        if train_dataset is not None:
            _check_columns(train_dataset, "train")
            if args.difficulty_selection:
                train_dataset, self.selection_stats = select_by_difficulty(train_dataset, retriever,
                                                                           args.difficulty_top_k)
                logger.info("difficulty-based selection: kept %d of %d training rows (target in the TRM's top %d)",
                            self.selection_stats["rows_kept"], self.selection_stats["rows_before"],
                            args.difficulty_top_k)
                if not self.selection_stats["rows_kept"]:
                    raise ValueError("difficulty-based selection dropped every training row; the TRM never ranks "
                                     f"the target in its top {args.difficulty_top_k} (check --trm_path)")
        render = self._render_fn(catalog, args)
        train_dataset = _render(train_dataset, render)
        if eval_dataset is not None:
            _check_columns(eval_dataset, "eval")
            eval_dataset = _render(eval_dataset, render)
        self._rollout_inputs: list | None = None
        self.rollout_timings: dict = {}
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, catalog,
                         rollout_func=self._rollout, **kwargs)

    @staticmethod
    def _render_fn(catalog, args: DeepRecConfig):
        settings = args.episode_settings

        def render(row):
            return {"prompt": render_prompt(row, catalog, args.prompt_style, args.category, args.max_history,
                                            settings)}
        return render

    def build_reward_funcs(self) -> list:
        self.judge = DeepRecJudge(self.catalog, self.require_year, self.item_embeddings, self.encode_preferences)
        need_sim = self.args.stage == "rec"
        return [DeepRecReward(name, self.judge, need_sim) for name in STAGE_REWARDS[self.args.stage]]

    # ------------------------------------------------------------------------------------------ rollout
    def _generator(self):
        if self.use_vllm:
            return VLLMTokenGenerator(self)
        from trl.models import unwrap_model_for_generation

        a = self.args
        return HFTokenGenerator(
            self.model, self._tokenizer, do_sample=True, **rollout_sampling(a), eos_token_ids=list(self.eos_token_ids),
            model_context=lambda: unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                                              gather_deepspeed3_params=a.ds3_gather_for_generation))

    def _round_rows(self, n_local: int) -> int:
        """Collective rounds (``run_episodes``' ``round_rows``): every process generates as many rounds, with as
        many rows, as the busiest one (``agree_round_rows``)."""
        return agree_round_rows(self.accelerator, n_local)

    def _rollout(self, prompts, trainer=None) -> dict:
        """TRL's ``rollout_func``: one DeepRec episode per entry of ``prompts`` (each prompt arrives G times)."""
        rows = self._rollout_inputs
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError(f"rollout_func got {len(prompts)} prompts but {0 if rows is None else len(rows)} "
                               "stashed rows (DeepRecTrainer._generate_and_score_completions stashes them)")
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        tok = self._tokenizer
        timings: dict = {}
        episodes = run_episodes(
            prompt_ids, [r.get("history") or [] for r in rows], [r.get("seen") or [] for r in rows],
            self._generator(), self.retriever, self.catalog.display,
            lambda text: tok(text, add_special_tokens=False)["input_ids"], self.decode_completion,
            set(self.eos_token_ids), self.args.episode_settings, round_rows=self._round_rows, timings=timings)
        for k, v in timings.items():
            self.rollout_timings[k] = self.rollout_timings.get(k, 0.0) + v
        self.log_metrics({f"deeprec/{k}_seconds": v for k, v in timings.items()})
        logprobs = [e.logprobs for e in episodes]
        return {
            "prompt_ids": [list(p) for p in prompt_ids],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": logprobs if all(lp is not None for lp in logprobs) else None,
            # over-long trajectories are masked out entirely: no token of theirs is a policy token
            "env_mask": [[0] * len(e.env_mask) if e.overlong else list(e.env_mask) for e in episodes],
            "deeprec_episode": [e.to_record() for e in episodes],
        }

    # ------------------------------------------------------------------------------------------ batch
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # (B_global, n_funcs), gathered
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._rollout_inputs = inputs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_inputs = None
        device = self.accelerator.device
        B = output["completion_ids"].size(0)
        rewards = (self._rewards_per_func * self.reward_weights.to(device)).nansum(dim=1)
        policy = output["completion_mask"] * output["tool_mask"] if "tool_mask" in output else \
            output["completion_mask"]
        counts = self.accelerator.gather(policy.sum(dim=1).to(rewards.dtype))
        adv = reinforce_pp_baseline(rewards, self.group_size, counts)
        output["advantages"] = self.local_rows(adv, B)
        self.log_metrics({"deeprec/policy_tokens": counts.mean().item(),
                          "deeprec/masked_rows": (counts == 0).float().mean().item()})
        return output

    # ------------------------------------------------------------------------------------------ loss
    # the loss template's pieces (RecRLTrainer._compute_loss): token units on the policy tokens (injected TRM lists
    # and masked-out trajectories excluded: their logits get exactly zero gradient and no KL), the
    # ``loss_aggregation`` mean (``token``: over every process's policy tokens, base.global_token_mean)
    policy_loss = "ppo_clip"

    def loss_aggregation(self) -> tuple[str, dict]:
        return self.args.loss_aggregation, {}

def _render(dataset, render):
    """The DeepRec prompt in place of the data set's own prompt / completion (a string or a chat list)."""
    if dataset is None:
        return None
    drop = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return dataset.map(render, remove_columns=drop, desc="DeepRec prompts")


def _check_columns(dataset, split: str) -> None:
    missing = [c for c in ("history", "target", "seen") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{split} data set: DeepRec needs columns history, target, seen (a sequential data set "
                         f"such as preprocess.movielens / preprocess.amazon); missing {missing}")


# ------------------------------------------------------------------------------------------------ warm-start
def _preference_texts(history: list[int], catalog, category: str) -> tuple[str, str]:
    """Two scripted preference texts from a history: its most frequent genres, then its last two items."""
    from collections import Counter

    genres = Counter(g for iid in history for g in (catalog[iid].get("genres") or catalog[iid].get("categories")
                                                      or []))
    top = [g for g, _ in genres.most_common(3)]
    first = (f"{category} in the genres {', '.join(map(str, top))}" if top
             else f"{category} like the ones in this history")
    recent = [catalog.display(i) for i in history[-2:]]
    second = f"{category} similar to {' and '.join(recent)}" if recent else f"popular {category}"
    return first, second


def warmstart_records(dataset, catalog, retriever, args: DeepRecConfig, split: str = "train") -> list[dict]:
    """Format warm-start (beyond the paper): one scripted chat-style trajectory per row, in the data contract's
    prompt/completion form (``train_sft.py`` trains on it): two TRM calls with preference texts from the history
    (its top genres, its last two items), the REAL retrieved lists, and a final top 10 interleaving the two lists.
    The target is never inserted: this teaches the protocol, not the answer."""
    from preprocess.deeprec_prompts import (
        BEGIN_PREFERENCE,
        END_PREFERENCE,
        THINK_CLOSE,
        THINK_OPEN,
        answer_text,
        item_list_text,
    )

    settings = args.episode_settings
    if settings.k < 10:
        raise ValueError(f"the warm-start's final top 10 comes from the retrieved lists: retrieve_k must be >= 10, "
                         f"got {settings.k}")
    rows = [dict(r) for r in dataset]
    prefs = [_preference_texts(list(r.get("history") or []), catalog, args.category) for r in rows]
    lists = []
    for which in (0, 1):
        ids, _ = retriever.retrieve([list(r.get("history") or []) for r in rows], [p[which] for p in prefs],
                                    k=settings.k, exclude=[list(r.get("seen") or []) for r in rows])
        lists.append([[int(x) for x in row] for row in ids])
    out = []
    for r, (p1, p2), l1, l2 in zip(rows, prefs, lists[0], lists[1]):
        final = list(dict.fromkeys(x for pair in zip(l1, l2) for x in pair))[:10]
        last = catalog.display(r["history"][-1]) if r.get("history") else "nothing yet"
        text = (f"{THINK_OPEN}\nThe user's most recent item is {last}. Let me ask the recommender.\n"
                f"{BEGIN_PREFERENCE}{p1}{END_PREFERENCE}" + item_list_text([catalog.display(x) for x in l1])
                + f"Now items close to the latest ones.\n{BEGIN_PREFERENCE}{p2}{END_PREFERENCE}"
                + item_list_text([catalog.display(x) for x in l2])
                + f"Both lists fit; I interleave their best items.\n{THINK_CLOSE}\n"
                + answer_text([catalog.display(x) for x in final]))
        prompt = render_prompt(r, catalog, "chat", args.category, args.max_history, settings)
        out.append({"sample_id": f"{r['sample_id']}/deeprec_warmstart", "prompt": prompt,
                    "completion": [{"role": "assistant", "content": text}],
                    "groundtruth": list(r.get("groundtruth") or [r["target"]]), "seen": list(r.get("seen") or []),
                    "history": list(r.get("history") or []), "target": r.get("target"),
                    "timestamp": r.get("timestamp")})
    return out


def warmstart_sft_tokens(tokenizer, prompt: list[dict], completion: list[dict]) -> dict:
    """Token ids and loss mask of one warm-start SFT example, tokenized as the RL rollout builds a trajectory: the
    chat-templated prompt (generation prompt appended), then the completion segment by segment -- each injected TRM
    list (``preprocess.deeprec_prompts.injected_spans``) encoded on its own, as ``run_episodes`` appends it -- then the
    template's end of the turn. ``completion_mask`` (TRL's column): 1 on the policy text and the end of the turn, 0
    on the prompt and on every token of an injected list, so the model is not trained to write the lists itself."""
    from preprocess.deeprec_prompts import injected_spans

    if not (isinstance(completion, list) and len(completion) == 1 and completion[0].get("role") == "assistant"):
        raise ValueError(f"the completion must be one assistant message, got {completion!r}")
    content = completion[0]["content"]
    p_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    f_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not f_text.startswith(p_text + content):
        raise ValueError("the chat template does not render prompt + completion as the prompt followed by the "
                         "completion's text; the injected lists cannot be located in its tokens")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    ids = encode(p_text)
    mask = [0] * len(ids)
    pos = 0
    for start, end in [*injected_spans(content), (len(content), len(content))]:
        for text, bit in ((content[pos:start], 1), (content[start:end], 0)):
            seg = encode(text)
            ids += seg
            mask += [bit] * len(seg)
        pos = end
    tail = encode(f_text[len(p_text) + len(content):])
    return {"input_ids": ids + tail, "completion_mask": mask + [1] * len(tail)}


# ------------------------------------------------------------------------------------------------ warm-start gate
#: A warm-started model is ready for stage 1 when its episodes are valid this often on validation rows: greedy
#: (what evaluation sees) and sampled at the stage's rollout temperature (what RL needs: a group with some valid
#: episodes has a non-zero advantage).
GATE_MIN_GREEDY_VALID = 0.9
GATE_MIN_SAMPLED_VALID = 0.3


def warmstart_gate(model, tokenizer, rows, catalog, retriever, args: DeepRecConfig,
                   min_greedy: float = GATE_MIN_GREEDY_VALID, min_sampled: float = GATE_MIN_SAMPLED_VALID,
                   batch_size: int = 16, generators=None) -> dict:
    """Run DeepRec episodes (the evaluation loop, ``methods.deeprec.rollout.DeepRecRecommender``) on ``rows`` greedily and
    sampled with ``rollout_sampling(args)``; return the share of valid episodes of each, every failing check's
    share, and ``passed`` (greedy >= min_greedy and sampled >= min_sampled). ``generators``: an optional
    (greedy, sampled) pair of token generators (tests); default HF ``generate`` on ``model``."""
    import torch

    from methods.deeprec.rollout import DeepRecRecommender

    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("the warm-start gate needs validation rows (give --eval_split)")
    if generators is None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None
        generators = (HFTokenGenerator(model, tokenizer, do_sample=False, eos_token_ids=eos),
                      HFTokenGenerator(model, tokenizer, do_sample=True, eos_token_ids=eos, **rollout_sampling(args)))
    out = {"rows": len(rows), "temperature": args.temperature, "min_greedy": min_greedy, "min_sampled": min_sampled}
    for name, generator in zip(("greedy", "sampled"), generators):
        rec = DeepRecRecommender(model, tokenizer, retriever, catalog, args.episode_settings, args.prompt_style,
                                 args.category, args.require_year, batch_size, args.max_history, generator)
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            rec.recommend(rows)
        stats = rec.episode_stats
        out[f"{name}_valid"] = stats["deeprec/valid_format_rate"]
        out[f"{name}_calls"] = stats["deeprec/calls_per_episode"]
        out[f"{name}_failures"] = {k[len("deeprec/fail_"):-len("_rate")]: v for k, v in stats.items()
                                   if k.startswith("deeprec/fail_")}
    out["passed"] = out["greedy_valid"] >= min_greedy and out["sampled_valid"] >= min_sampled
    return out


def format_gate(result: dict) -> str:
    """One line for the console."""
    def fails(d):
        return ", ".join(f"{k} {v:.2f}" for k, v in d.items() if v) or "none"

    return (f"[deeprec] warm-start gate on {result['rows']} validation rows: greedy valid {result['greedy_valid']:.2f} "
            f"(need >= {result['min_greedy']:.2f}; failing: {fails(result['greedy_failures'])}), sampled at T "
            f"{result['temperature']:g} valid {result['sampled_valid']:.2f} (need >= {result['min_sampled']:.2f}; "
            f"failing: {fails(result['sampled_failures'])}) -> {'PASSED' if result['passed'] else 'NOT PASSED'}")
