"""DeepRec (Zheng et al. 2025) on TRL's GRPOTrainer: the LLM queries a traditional recommender (TRM) several times
while it reasons, then answers with a ranked top 10. Spec: docs/methods.md §4.

* Rollout: TRL's ``rollout_func`` running ``methods.deeprec.rollout.run_episodes`` (the loop evaluation runs too):
  generate until ``<|end_of_preference|>``, retrieve the top 20 for (history, preference text) with the in-process
  TRM (``retrieval.TRMRetriever``), append the item list as environment tokens (``env_mask`` 0 -> TRL's
  ``tool_mask``: no policy gradient, no KL), continue; at most ``max_calls`` calls, ``max_trajectory_tokens``
  completion tokens (over-long trajectories are masked out entirely). Generation: HF ``generate`` on the active
  rows (CPU / no vLLM), TRL's ``vllm_generation`` on GPU (``VLLMTokenGenerator``, written against TRL 1.16's API);
  both generators are in ``methods.deeprec.rollout``.

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
* Rewards: TRL reward functions over one ``DeepRecJudge`` per batch (``methods.deeprec.judge``): stage ``cold``
  R_fmt + R_inv + R_div (``format``, ``invocation``, ``diversity``), stage ``rec`` R_fmt + R_out + R_sim (``format``, ``outcome``,
  ``similarity``), each logged as ``rewards/<name>/mean``. R_div embeds the preference texts with the TRM's text
  encoder; R_sim needs item embeddings (``ItemEmbeddings``: title text embeddings and TRM item vectors).
* Advantages: ``core_algos.reinforce_pp_baseline`` (group-mean baseline over the G samples, then whitened over the
  global batch's policy tokens: the (B,) rewards and token counts are gathered across processes).
* Loss: the shared template with ``core_algos.ppo_clip_loss`` on token ratios, clip [1 - 0.2, 1 + 0.28] =
  [0.8, 1.28], aggregated over the policy tokens (``loss_aggregation`` token (default) or sequence); k3 KL only if
  ``beta`` > 0 (paper: none).
* Difficulty-based selection (``difficulty_selection``): training rows whose target is outside the TRM's top
  ``difficulty_top_k`` (history only) are dropped (``preprocess.deeprec_data.select_by_difficulty``);
  ``selection_stats`` reports the counts.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import ClassVar

from methods.deeprec.judge import DeepRecJudge, ItemEmbeddings
from methods.deeprec.rollout import EpisodeSettings, agree_round_rows, rollout_output, run_episodes, \
    training_generator
from preprocess.deeprec_data import check_columns, render_dataset, select_by_difficulty
from preprocess.deeprec_prompts import PROMPT_STYLES
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
        self.check_choices(stage=STAGES, prompt_style=PROMPT_STYLES, loss_aggregation=LOSS_AGGREGATIONS)
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
        catalog = self.resolve_catalog(args, catalog)
        self.retriever = retriever
        if item_embeddings is None and args.stage == "rec":
            item_embeddings = ItemEmbeddings.from_retriever(retriever)
        self.item_embeddings = item_embeddings
        self.encode_preferences = encode_preferences or retriever.encode
        self.selection_stats = None
        if train_dataset is not None:
            check_columns(train_dataset, "train")
            if args.difficulty_selection:
                train_dataset, self.selection_stats = _select_training_rows(train_dataset, retriever, args)
        if eval_dataset is not None:
            check_columns(eval_dataset, "eval")
        self._rollout_inputs: list | None = None
        self.rollout_timings: dict = {}
        super().__init__(model, args, render_dataset(train_dataset, catalog, args),
                         render_dataset(eval_dataset, catalog, args), processing_class, catalog,
                         rollout_func=self._rollout, **kwargs)

    def build_reward_funcs(self) -> list:
        self.judge = DeepRecJudge(self.catalog, self.require_year, self.item_embeddings, self.encode_preferences,
                                  need_similarity=self.args.stage == "rec")
        return self.judge.reward_funcs(STAGE_REWARDS[self.args.stage])

    # ------------------------------------------------------------------------------------------ rollout
    def _generator(self):
        return training_generator(self)

    def _rollout(self, prompts, trainer=None) -> dict:
        """TRL's ``rollout_func``: one DeepRec episode per entry of ``prompts`` (each prompt arrives G times).
        Every process runs as many rounds, with as many rows, as the busiest one (``agree_round_rows``)."""
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
            set(self.eos_token_ids), self.args.episode_settings,
            round_rows=functools.partial(agree_round_rows, self.accelerator), timings=timings)
        for k, v in timings.items():
            self.rollout_timings[k] = self.rollout_timings.get(k, 0.0) + v
        self.log_metrics({f"deeprec/{k}_seconds": v for k, v in timings.items()})
        return rollout_output(prompt_ids, episodes)

    # ------------------------------------------------------------------------------------------ batch
    def _generate_and_score_completions(self, inputs):
        self._rollout_inputs = inputs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_inputs = None
        B = output["completion_ids"].size(0)
        rewards = self.weighted_rewards()
        policy = self.policy_token_mask(output)
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


def _select_training_rows(dataset, retriever, args: DeepRecConfig):
    """Difficulty-based selection (``preprocess.deeprec_data.select_by_difficulty``), logged; no row left is an
    error."""
    dataset, stats = select_by_difficulty(dataset, retriever, args.difficulty_top_k)
    logger.info("difficulty-based selection: kept %d of %d training rows (target in the TRM's top %d)",
                stats["rows_kept"], stats["rows_before"], args.difficulty_top_k)
    if not stats["rows_kept"]:
        raise ValueError("difficulty-based selection dropped every training row; the TRM never ranks the target in "
                         f"its top {args.difficulty_top_k} (check --trm_path)")
    return dataset, stats
