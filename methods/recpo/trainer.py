"""RecPO / R²ec (You et al., NeurIPS 2025) on TRL's GRPOTrainer: reason, then rank the whole catalog with the
model's own last hidden state. Spec: docs/methods.md §3.

* Rollout: G reasoning paths per user on the R²ec user prompt (``preprocess.recpo_prompts``), cut right after the
  first ``<answer>`` marker. A path that never writes it gets the marker appended; those forced tokens carry no
  policy gradient (``policy_mask`` 0) -- so the marker's last token is ALWAYS the completion's last token, and h_T is
  read at each row's last real position (``modeling.hidden_states``), never one token early.
* Item table H_V (V, d) (``methods.recpo.head``, with the projection and the vectors): every catalog item encoded
  with the item prompt pre-filled with ``<answer>`` (batched, no grad, progress bar), refreshed every
  ``refresh_steps``. The reward ranks against this ONE snapshot for every item, the target included (released:
  fresh targets vs stale items, docs/methods.md §3.8 anchor bug d); its age is logged.
* Reward (Eq. 5) through TRL's reward path (``head.RecPOJudge``), weights [beta, 1 - beta]: ``recpo_softmax``
  R_c = softmax probability of the target at tau (over the catalog, or over the batch's targets), ``recpo_ndcg``
  R_d = 1 / log2(rank + 1) of the target among all items with the user's history masked, 0 past ``ndcg_cutoff``.
* Advantage (Eq. 2): ``core_algos.group_zscore``.
* Loss: clipped token-ratio surrogate (eps 0.2 / 0.28) on the reasoning tokens of all G paths + ``rec_loss_weight``
  x the recommendation loss on each group's max-advantage path(s) with POSITIVE advantage only (§3.8 anchor bug b). The
  recommendation loss (default ``infonce``) is A * -log softmax(cos(h_T, h_v) / tau) over the batch's DISTINCT
  targets gathered across processes (a duplicate target is not a negative), with the targets re-encoded WITH grad in
  the same forward as the policy log-probs (one pass: user rows and item rows are one batch). ``released`` is the
  released -A p(target) form (§3.8 anchor bug a: its gradient vanishes for small p at tau 0.02). Optional k3 KL.
  Deviations from the paper, as options (named in the run name): ``rec_negatives=in_batch+uniform`` adds K uniformly
  drawn catalog items as negatives (``uniform_negatives``), ``logq_correction`` subtracts log of each candidate's
  expected count in the draw from its logit (``logq_offsets``: in-batch negatives arrive in proportion to
  popularity, so the uncorrected loss cannot learn popularity).
* Optional learned projection (``projection_dim``): W applied to h_T and h_v before the cosine, a submodule of the
  policy (optimised and placed with it), saved as ``recpo_projection.safetensors`` for evaluation.
* Ablations: ``reasoning=False`` (no rollout: h_T at the prompt's own ``<answer>``; all paths are identical, so the
  recommendation loss weighs every row 1), ``beta=0`` (no R_c), ``beta=1`` (no R_d).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.recpo.head import REC_LOSSES, REWARD_TERMS, ItemHead, RecPOJudge, recommendation_weights
from modeling.hidden_states import end_with_marker
from preprocess.recpo_prompts import ANSWER_MARKER, record_user_prompt
from trainers.base import LossForward, RecRLConfig, RecRLTrainer
from trainers.core_algos import group_zscore

SOFTMAX_OVER = ("catalog", "batch")
REC_NEGATIVES = ("in_batch", "in_batch+uniform")


@dataclass
class RecPOConfig(RecRLConfig):
    """``RecRLConfig`` plus R²ec's options (defaults: the released code where the paper is silent)."""

    category: str = field(default="items", metadata={"help": "Item category named in the prompts, e.g. 'video "
                                                             "games' or 'movies'."})
    tau: float = field(default=0.02, metadata={"help": "Temperature of s(u, v) = cos(h_u, h_v) / tau."})
    reward_beta: float = field(default=0.05, metadata={"help": "beta of Eq. 5: R = beta R_c + (1 - beta) R_d. "
                                                                "0: no R_c; 1: no R_d (the paper's ablations)."})
    ndcg_cutoff: int = field(default=1000, metadata={"help": "R_d is 0 for a target ranked below this."})
    softmax_over: str = field(default="catalog", metadata={
        "help": "R_c normalised over the whole catalog (released code) or over the batch's targets (paper).",
        "choices": list(SOFTMAX_OVER)})
    rec_loss: str = field(default="infonce", metadata={
        "help": "infonce: A * -log p(target) over in-batch targets; released: -A * p(target).",
        "choices": list(REC_LOSSES)})
    rec_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the recommendation loss."})
    rec_negatives: str = field(default="in_batch", metadata={
        "help": "Candidates of the recommendation loss: in_batch (the paper: the batch's distinct targets) or "
                "in_batch+uniform (plus num_uniform_negatives catalog items drawn uniformly each micro-step; a "
                "deviation from the paper).", "choices": list(REC_NEGATIVES)})
    num_uniform_negatives: int = field(default=64, metadata={
        "help": "K, the uniform negatives of rec_negatives=in_batch+uniform (drawn without replacement)."})
    logq_correction: bool = field(default=False, metadata={
        "help": "Sampled-softmax logQ correction (a deviation from the paper): every candidate's logit minus log "
                "of its expected count in the candidate draw, N_rows x p_c + K / V (p_c: the item's share of the "
                "training targets, add-one smoothed), so popular items are not under-scored for arriving as "
                "in-batch negatives more often."})
    refresh_steps: int = field(default=50, metadata={"help": "Re-encode the whole item table every N steps."})
    item_batch_size: int = field(default=32, metadata={"help": "Batch size when encoding the item table."})
    reasoning: bool = field(default=True, metadata={"help": "False: the no-reasoning ablation (no rollout)."})
    rec_warmup_steps: int = field(default=0, metadata={
        "help": "The first N optimizer steps train the recommendation loss alone, on no-reasoning rows (h_T at "
                "the prompt's own <answer>, as reasoning=False), so the policy update on h_T does not follow a "
                "head at chance; then reasoning RL. A deviation from the paper (named in the run name)."})
    projection_dim: int | None = field(default=None, metadata={
        "help": "Optional learned projection W (d -> projection_dim, no bias) applied to h_T and h_v before the "
                "cosine; identity-initialised when projection_dim = d. None: none (the released code)."})
    max_history: int = field(default=20, metadata={"help": "History items shown in the user prompt."})
    policy_loss_aggregation: str = field(default="sequence", metadata={
        "help": "sequence: per-path token mean, then mean (TRL's grpo); token: over all tokens of the batch.",
        "choices": ["sequence", "token"]})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip (R²ec: 0.2)."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clip (released code: 0.28)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (R²ec: no KL)."})
    num_generations: int | None = field(default=4, metadata={"help": "G reasoning paths per user (R²ec: 4)."})

    def __post_init__(self):
        if not 0.0 <= self.reward_beta <= 1.0:
            raise ValueError(f"reward_beta must be in [0, 1], got {self.reward_beta}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.ndcg_cutoff < 1 or self.refresh_steps < 1 or self.item_batch_size < 1 or self.max_history < 1:
            raise ValueError("ndcg_cutoff, refresh_steps, item_batch_size and max_history must be >= 1")
        self.check_choices(softmax_over=SOFTMAX_OVER, rec_loss=REC_LOSSES, rec_negatives=REC_NEGATIVES)
        if self.rec_warmup_steps < 0:
            raise ValueError(f"rec_warmup_steps must be >= 0, got {self.rec_warmup_steps}")
        if self.num_uniform_negatives < 1:
            raise ValueError(f"num_uniform_negatives must be >= 1, got {self.num_uniform_negatives}")
        if self.mask_truncated_completions:
            raise ValueError("mask_truncated_completions must stay False: every RecPO completion ends at <answer>, "
                             "not at EOS, so TRL would mask them all")
        self.reward_weights = [self.reward_beta, 1.0 - self.reward_beta]  # [R_c, R_d], Eq. 5
        super().__post_init__()


class RecPOTrainer(ItemHead, RecRLTrainer):
    """R²ec on TRL: the rewards of Eq. 5 through TRL's reward path; Eq. 2 advantages; the clipped policy loss plus
    the recommendation loss from the same forward pass. Dataset columns: ``history`` (catalog ids, oldest first),
    ``target`` (catalog id); optional ``seen``, ``history_ratings``, ``history_time_deltas`` (seconds)."""

    def __init__(self, model, args: RecPOConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 catalog=None, **kwargs):
        if not isinstance(args, RecPOConfig):
            raise TypeError("RecPOTrainer needs a RecPOConfig")
        if processing_class is None:
            raise ValueError("RecPOTrainer needs processing_class (the tokenizer): it renders the item prompts")
        catalog = self.resolve_catalog(args, catalog)
        self.item_ids = list(catalog.ids)
        self.index_of = {iid: i for i, iid in enumerate(self.item_ids)}
        train_dataset = _render_user_prompts(train_dataset, catalog, args)
        eval_dataset = _render_user_prompts(eval_dataset, catalog, args)
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, catalog, **kwargs)
        self._marker_ids = self._tokenizer(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
        self._forced: list[int] = []  # forced marker tokens per row of the batch being generated
        self._init_item_head(args)

    def build_reward_funcs(self) -> list:
        self.judge = RecPOJudge(self.score_batch)
        return self.judge.reward_funcs(REWARD_TERMS)

    # ------------------------------------------------------------------------------------------ rollout
    @property
    def reasoning_now(self) -> bool:
        """Whether this step's rows reason: ``reasoning``, except during the ``rec_warmup_steps`` warm-up."""
        return self.args.reasoning and self.state.global_step >= self.args.rec_warmup_steps

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's generation, then each completion cut right after its first ``<answer>`` (or the marker appended:
        forced tokens, no policy gradient). Without reasoning the completion is the marker alone.

        The sampler never produced the appended tokens, so they have no sampling log-prob: NaN, which TRL's vLLM
        importance-sampling correction reads as "no correction" (its log-ratio becomes 0). A 0.0 there claimed the
        sampler gave them probability 1: the sequence-level ratio exp(sum of log-ratios) of every forced path fell
        to ~1e-17 and TRL's ``sequence_mask`` mode zeroed its whole policy gradient."""
        if self.reasoning_now:
            completion_ids, logprobs = self._sample(prompt_ids, images, multimodal_fields, num_generations,
                                                    has_tool_images)
        else:  # TRL's vLLM correction subtracts sampling log-probs, so it needs them (all NaN) even here
            completion_ids, logprobs = [[] for _ in prompt_ids], [[] for _ in prompt_ids] if self.use_vllm else None
        out_ids, out_lp, forced = _end_at_answer(completion_ids, logprobs, self.decode_completion, self._marker_ids,
                                                 self._eos_ids)
        self._forced = forced
        self._prompt_rows = [list(p) for p in prompt_ids]
        return out_ids, out_lp

    def _sample(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's own sampling (transformers or vLLM); tests replace it with canned completions."""
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    # ------------------------------------------------------------------------------------------ batch
    def _generate_and_score_completions(self, inputs):
        self._maybe_refresh()
        output = super()._generate_and_score_completions(inputs)
        (stash, _), forced = self.judge.take(), self._forced
        self._forced = []
        G, B = self.group_size, output["completion_ids"].size(0)
        device = self.accelerator.device
        rewards = self.weighted_rewards()  # (B_global,) Eq. 5
        adv = group_zscore(rewards, G)  # Eq. 2
        rec_w = recommendation_weights(adv, G, self.reasoning_now)
        output["advantages"] = self.local_rows(adv, B)
        output["rec_weight"] = self.local_rows(rec_w, B)
        output["target_index"] = stash["targets"]
        policy_mask = output["completion_mask"].clone()
        lengths = output["completion_mask"].sum(dim=1)
        for b, n in enumerate(forced):
            if n:
                policy_mask[b, int(lengths[b]) - n:int(lengths[b])] = 0
        output["policy_mask"] = policy_mask

        ranks = self.accelerator.gather(stash["ranks"]).double()
        self.log_metrics({
            "recpo/rec_warmup": float(self.args.reasoning and not self.reasoning_now),
            "recpo/target_rank/median": ranks.median().item(),
            "recpo/hit@10": (ranks <= 10).double().mean().item(),
            "recpo/forced_answer_rate": self.accelerator.gather(
                torch.tensor([float(n > 0) for n in forced], device=device)).mean().item(),
            "recpo/rec_rows": self.accelerator.gather((output["rec_weight"] > 0).float()).sum().item(),
            "recpo/item_table_age": float(self.state.global_step - self.table_step),
        })
        return output

    # ------------------------------------------------------------------------------------------ loss
    # the loss template's pieces (RecRLTrainer._compute_loss): token units on the reasoning tokens, the joint
    # forward, and the recommendation loss as an extra term
    policy_loss = "ppo_clip"

    def loss_forward(self, model, inputs) -> LossForward:
        """The joint forward (``_joint_forward``) over this micro-step's rows, targets and uniform negatives; the
        policy mask is the reasoning tokens (forced marker tokens and tool tokens excluded)."""
        negatives = self._draw_negatives()
        logps, entropies, h_user, h_items, h_neg, uniq, pos = self._joint_forward(model, inputs, negatives)
        pmask = self.policy_token_mask(inputs, inputs["policy_mask"])
        return LossForward(logps, entropies, pmask, dict(h_user=h_user, h_items=h_items, h_neg=h_neg, uniq=uniq,
                                                         pos=pos, negatives=negatives))

    def loss_aggregation(self) -> tuple[str, dict]:
        return self.args.policy_loss_aggregation, {}

    def extra_losses(self, inputs, forward: LossForward) -> dict:
        """The recommendation loss (``ItemHead._rec_loss``) on the joint forward's vectors."""
        x = forward.extra
        rec = self._rec_loss(x["h_user"], x["h_items"], x["uniq"], x["pos"], inputs["rec_weight"], x["h_neg"],
                             x["negatives"])
        return {"rec": (rec, self.args.rec_loss_weight)}


def _render_user_prompts(dataset, catalog, args: RecPOConfig):
    """The R²ec user prompt of every row (``preprocess.recpo_prompts.record_user_prompt``)."""
    if dataset is None:
        return None

    def render(row):
        if row.get("target") is None or row["target"] not in catalog:
            raise ValueError(f"sample {row.get('sample_id')!r}: field 'target' must be a catalog id, got "
                             f"{row.get('target')!r}")
        return {"prompt": record_user_prompt(row, catalog, args.category, args.max_history)}
    return dataset.map(render, desc="RecPO user prompts")


def _end_at_answer(completion_ids, logprobs, decode, marker_ids, eos_ids):
    """Each completion cut right after its first ``<answer>``, or the marker appended (``end_with_marker``):
    (ids, sampler log-probs or None, forced token count per row). The appended tokens get log-prob NaN
    (``RecPOTrainer._generate_single_turn`` says why)."""
    out_ids, out_lp, forced = [], [] if logprobs is not None else None, []
    for b, ids in enumerate(completion_ids):
        new, n_forced = end_with_marker(ids, decode, ANSWER_MARKER, marker_ids, eos_ids)
        out_ids.append(new)
        forced.append(n_forced)
        if out_lp is not None:  # sampler log-probs of the kept tokens, NaN for the appended ones
            lp = list(logprobs[b])[:len(new) - n_forced]
            out_lp.append(lp + [float("nan")] * (len(new) - len(lp)))
    return out_ids, out_lp, forced
