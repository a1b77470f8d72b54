"""RecPO / R²ec (You et al., NeurIPS 2025) on TRL's GRPOTrainer: reason, then rank the whole catalog with the
model's own last hidden state. Spec: docs/methods.md §3.

* Rollout: G reasoning paths per user on the R²ec user prompt (``preprocess.recpo_prompts``), cut right after the
  first ``<answer>`` marker. A path that never writes it gets the marker appended; those forced tokens carry no
  policy gradient (``policy_mask`` 0) -- so the marker's last token is ALWAYS the completion's last token, and h_T is
  read at each row's last real position (``modeling.hidden_states``), never one token early.
* Item table H_V (V, d): every catalog item encoded with the item prompt pre-filled with ``<answer>`` (batched, no
  grad, progress bar), refreshed every ``refresh_steps``. The reward ranks against this ONE snapshot for every item,
  the target included (released: fresh targets vs stale items, docs/methods.md §3.8 anchor bug d); its age is logged.
* Reward (Eq. 5) through TRL's reward path, weights [beta, 1 - beta]: ``recpo_softmax`` R_c = softmax probability of
  the target at tau (over the catalog, or over the batch's targets), ``recpo_ndcg`` R_d = 1 / log2(rank + 1) of the
  target among all items with the user's history masked, 0 past ``ndcg_cutoff``.
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

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch

from methods.recpo.recommender import PROJECTION_FILE  # the optional learned projection, saved beside the model
from modeling.hidden_states import (
    capture_last_hidden_state,
    chat_ids,
    encode_id_rows,
    end_with_marker,
    gather_positions,
    last_positions,
)
from preprocess.recpo_prompts import ANSWER_MARKER, ITEM_PREFILL, item_prompt, record_user_prompt
from rewards.embedding_rewards import cosine_scores, rank_ndcg, target_ranks, target_softmax_prob
from trainers.base import LossForward, RecRLConfig, RecRLTrainer
from trainers.core_algos import group_zscore

logger = logging.getLogger(__name__)
ITEM_TABLE_FILE = "recpo_item_table.safetensors"
PROJECTION_MODULE = "recpo_projection"  # the projection's attribute name on the policy (a submodule of it)

REC_LOSSES = ("infonce", "released")
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
        if self.softmax_over not in SOFTMAX_OVER:
            raise ValueError(f"softmax_over must be one of {SOFTMAX_OVER}, got {self.softmax_over!r}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if self.rec_negatives not in REC_NEGATIVES:
            raise ValueError(f"rec_negatives must be one of {REC_NEGATIVES}, got {self.rec_negatives!r}")
        if self.rec_warmup_steps < 0:
            raise ValueError(f"rec_warmup_steps must be >= 0, got {self.rec_warmup_steps}")
        if self.num_uniform_negatives < 1:
            raise ValueError(f"num_uniform_negatives must be >= 1, got {self.num_uniform_negatives}")
        if self.mask_truncated_completions:
            raise ValueError("mask_truncated_completions must stay False: every RecPO completion ends at <answer>, "
                             "not at EOS, so TRL would mask them all")
        self.reward_weights = [self.reward_beta, 1.0 - self.reward_beta]  # [R_c, R_d], Eq. 5
        super().__post_init__()


class _RecPOReward:
    """A TRL reward function returning one per-row value the trainer computed for this batch (``inputs[key]``)."""

    def __init__(self, name: str, key: str):
        self.__name__, self.key = name, key

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        return [float(v) for v in columns[self.key]]


class RecPOTrainer(RecRLTrainer):
    """R²ec on TRL: the rewards of Eq. 5 through TRL's reward path; Eq. 2 advantages; the clipped policy loss plus
    the recommendation loss from the same forward pass. Dataset columns: ``history`` (catalog ids, oldest first),
    ``target`` (catalog id); optional ``seen``, ``history_ratings``, ``history_time_deltas`` (seconds)."""

    def __init__(self, model, args: RecPOConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 catalog=None, **kwargs):
        if not isinstance(args, RecPOConfig):
            raise TypeError("RecPOTrainer needs a RecPOConfig")
        if processing_class is None:
            raise ValueError("RecPOTrainer needs processing_class (the tokenizer): it renders the item prompts")
        if catalog is None and args.catalog_path is not None:
            from rewards.catalog import load_catalog

            catalog = load_catalog(args.catalog_path)
        if catalog is None:
            raise ValueError("RecPOTrainer needs a catalog: pass catalog= or set args.catalog_path")
        self.item_ids = list(catalog.ids)
        self.index_of = {iid: i for i, iid in enumerate(self.item_ids)}
        render = self._render_user_prompt_fn(catalog, args)
        train_dataset = None if train_dataset is None else train_dataset.map(render, desc="RecPO user prompts")
        if eval_dataset is not None:
            eval_dataset = eval_dataset.map(render, desc="RecPO user prompts")
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, catalog, **kwargs)
        tok = self._tokenizer
        self._marker_ids = tok(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
        self._item_rows = [chat_ids(tok, item_prompt(self.catalog[i], args.category), ITEM_PREFILL)
                           for i in self.item_ids]
        self.item_table: torch.Tensor | None = None  # (V, d) snapshot
        self.table_step = -1  # global step of the snapshot
        self._forced: list[int] = []  # forced marker tokens per row of the batch being generated
        self._reward_stash: dict = {}
        self._negative_draws = 0  # micro-steps that drew uniform negatives (the draw's seed; equal on every process)
        self.target_share = None  # (V,) p_c of the logQ correction
        if args.logq_correction:
            if self.train_dataset is None:
                raise ValueError("logq_correction needs train_dataset: p_c is each item's share of its targets")
            self.target_share = target_shares(self.train_dataset["target"], self.index_of)
        self.projection = None
        if args.projection_dim is not None:
            # a submodule of the policy: TRL's optimizer, device placement and DeepSpeed wrapping include it
            d = self.model.config.get_text_config().hidden_size
            self.projection = make_projection(d, args.projection_dim).to(self.accelerator.device)
            setattr(self.model, PROJECTION_MODULE, self.projection)
            if self.use_vllm:
                self._keep_projection_out_of_vllm()

    # ------------------------------------------------------------------------------------------ data
    @staticmethod
    def _render_user_prompt_fn(catalog, args: RecPOConfig):
        def render(row):
            if row.get("target") is None or row["target"] not in catalog:
                raise ValueError(f"sample {row.get('sample_id')!r}: field 'target' must be a catalog id, got "
                                 f"{row.get('target')!r}")
            return {"prompt": record_user_prompt(row, catalog, args.category, args.max_history)}
        return render

    def build_reward_funcs(self) -> list:
        return [_RecPOReward("recpo_softmax", "_recpo_rc"), _RecPOReward("recpo_ndcg", "_recpo_rd")]

    # ------------------------------------------------------------------------------------------ item table
    def refresh_item_table(self) -> None:
        """Encode every catalog item (this process's share, then gathered), no grad, with a progress bar."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        V = len(self._item_rows)
        share = -(-V // world)
        rows = self._item_rows[rank * share:(rank + 1) * share]
        n_local = len(rows)
        rows = rows + [self._item_rows[0]] * (share - n_local)  # equal shares: every rank runs the same forwards
        local = encode_id_rows(self.model, rows, self._tokenizer.pad_token_id, self.args.item_batch_size,
                               desc=f"item table ({V} items)", progress=self.accelerator.is_main_process)
        table = self.accelerator.gather(local.contiguous())  # (world * share, d), rank-major
        self.item_table = table[:V].detach()
        self.table_step = self.state.global_step

    def _maybe_refresh(self) -> None:
        if self.item_table is None or self.state.global_step - self.table_step >= self.args.refresh_steps:
            self.refresh_item_table()

    # The table is part of the run's state: a resume rebuilt from the checkpoint's model would rank against a newer
    # snapshot than the uninterrupted run until the next refresh, so it is saved with each checkpoint.
    def save_run_state(self, checkpoint_dir: str) -> None:
        super().save_run_state(checkpoint_dir)
        if self.args.should_save and self.item_table is not None:
            from safetensors.torch import save_file

            save_file({"item_table": self.item_table.detach().cpu().contiguous()},
                      os.path.join(checkpoint_dir, ITEM_TABLE_FILE),
                      metadata={"table_step": str(self.table_step), "item_ids": json.dumps(self.item_ids)})

    def _keep_projection_out_of_vllm(self) -> None:
        """TRL's weight sync (``VLLMGeneration.sync_weights``, colocate and server) pushes every name of
        ``_iter_named_params``; the projection is no weight of the architecture vLLM serves (its ``load_weights``
        fails on the unknown name), so this process's engine gets that iterator without it. The filter drops only
        what TRL yields, after TRL's own per-parameter gather: every process still joins the same collectives."""
        generation = self.vllm_generation
        trl_params = generation._iter_named_params

        def policy_params():
            for name, param in trl_params():
                if PROJECTION_MODULE not in name.split("."):
                    yield name, param

        generation._iter_named_params = policy_params

    @contextlib.contextmanager
    def _whole_projection(self, modify: bool = False):
        """The projection's weight, whole, inside the block: DeepSpeed ZeRO-3 partitions it across processes (each
        holds an empty slice), so it is gathered there -- a collective every process must enter -- and, with
        ``modify``, process 0's changes are partitioned back on exit. A no-op under every other setting."""
        weight = self.projection.weight
        if not self._dist.is_zero3:
            yield weight
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=0 if modify else None):
            yield weight

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The optional learned projection of user / item vectors (identity when none is configured)."""
        return h if self.projection is None else self.projection(h.to(self.projection.weight.dtype))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if self.projection is not None:  # also beside a LoRA adapter, which omits it
            from safetensors.torch import save_file

            with self._whole_projection() as weight:  # every process: a collective under ZeRO-3
                if self.args.should_save:
                    save_file({"weight": weight.detach().cpu().contiguous()},
                              os.path.join(output_dir or self.args.output_dir, PROJECTION_FILE))

    def load_run_state(self, checkpoint_dir: str) -> None:
        super().load_run_state(checkpoint_dir)
        projection = os.path.join(checkpoint_dir, PROJECTION_FILE)
        if self.projection is not None and os.path.isfile(projection):
            from safetensors.torch import load_file

            saved = load_file(projection)["weight"]
            with torch.no_grad(), self._whole_projection(modify=True) as weight:
                weight.copy_(saved.to(weight.device, weight.dtype))
        path = os.path.join(checkpoint_dir, ITEM_TABLE_FILE)
        if not os.path.isfile(path):
            logger.warning("%s has no %s: the item table is rebuilt from the resumed model", checkpoint_dir,
                           ITEM_TABLE_FILE)
            return
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta, table = fh.metadata(), fh.get_tensor("item_table")
        if json.loads(meta["item_ids"]) != self.item_ids:
            raise ValueError(f"{path}: the item table was built over another catalog (its item ids differ); resume "
                             "with the catalog of the run")
        self.item_table = table.to(self.accelerator.device)
        self.table_step = int(meta["table_step"])

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
        out_ids, out_lp, forced = [], [] if logprobs is not None else None, []
        for b, ids in enumerate(completion_ids):
            new, n_forced = end_with_marker(ids, self.decode_completion, ANSWER_MARKER, self._marker_ids,
                                            self._eos_ids)
            out_ids.append(new)
            forced.append(n_forced)
            if out_lp is not None:  # sampler log-probs of the kept tokens, NaN for the appended ones (see above)
                lp = list(logprobs[b])[:len(new) - n_forced]
                out_lp.append(lp + [float("nan")] * (len(new) - len(lp)))
        self._forced = forced
        self._prompt_rows = [list(p) for p in prompt_ids]
        return out_ids, out_lp

    def _sample(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's own sampling (transformers or vLLM); tests replace it with canned completions."""
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    # ------------------------------------------------------------------------------------------ rewards
    def _history_mask(self, inputs) -> torch.Tensor:
        """(B, V) True for each row's history / seen items (its target excepted)."""
        V = len(self.item_ids)
        mask = torch.zeros(len(inputs), V, dtype=torch.bool, device=self.accelerator.device)
        for b, x in enumerate(inputs):
            cols = [self.index_of[i] for i in list(x.get("history") or []) + list(x.get("seen") or [])
                    if i in self.index_of and i != x["target"]]
            if cols:
                mask[b, cols] = True
        return mask

    def _user_vectors(self, completion_ids_list) -> torch.Tensor:
        """h_T of every row of the batch being scored, no grad: one forward of [prompt | completion]."""
        rows = [p + list(c) for p, c in zip(self._prompt_rows, completion_ids_list, strict=True)]
        return encode_id_rows(self.model, rows, self._tokenizer.pad_token_id, batch_size=len(rows) or 1)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        args, device = self.args, self.accelerator.device
        targets = torch.tensor([self.index_of[x["target"]] for x in inputs], device=device)
        exclude = self._history_mask(inputs)
        h = self._user_vectors(completion_ids_list)
        scores = cosine_scores(self.project(h), self.project(self.item_table), args.tau)  # (B, V)
        ranks = target_ranks(scores, targets, exclude)
        r_d = rank_ndcg(ranks, args.ndcg_cutoff)
        if args.softmax_over == "catalog":
            r_c = target_softmax_prob(scores, targets, exclude)
        else:  # over the distinct targets of the global batch
            all_t = self.accelerator.gather(targets)
            cols = torch.unique(all_t)
            pos = torch.searchsorted(cols, targets)
            r_c = target_softmax_prob(scores[:, cols], pos)
        for x, c, d in zip(inputs, r_c.tolist(), r_d.tolist(), strict=True):
            x["_recpo_rc"], x["_recpo_rd"] = c, d
        self._reward_stash = {"targets": targets, "ranks": ranks}
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._reward_stash["rewards"] = rewards_per_func  # (B_global, 2), gathered
        return rewards_per_func

    # ------------------------------------------------------------------------------------------ batch
    def _generate_and_score_completions(self, inputs):
        self._maybe_refresh()
        output = super()._generate_and_score_completions(inputs)
        stash, forced = self._reward_stash, self._forced
        self._reward_stash, self._forced = {}, []
        G, B = self.group_size, output["completion_ids"].size(0)
        device = self.accelerator.device
        rewards = (stash["rewards"] * self.reward_weights.to(device)).nansum(dim=1)  # (B_global,) Eq. 5
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
        pmask = inputs["policy_mask"] * (inputs["tool_mask"] if "tool_mask" in inputs else 1)
        return LossForward(logps, entropies, pmask, dict(h_user=h_user, h_items=h_items, h_neg=h_neg, uniq=uniq,
                                                         pos=pos, negatives=negatives))

    def loss_aggregation(self) -> tuple[str, dict]:
        return self.args.policy_loss_aggregation, {}

    def extra_losses(self, inputs, forward: LossForward) -> dict:
        x = forward.extra
        rec = self._rec_loss(x["h_user"], x["h_items"], x["uniq"], x["pos"], inputs["rec_weight"], x["h_neg"],
                             x["negatives"])
        return {"rec": (rec, self.args.rec_loss_weight)}

    def _draw_negatives(self) -> torch.Tensor | None:
        """The uniform negatives of this micro-step (``rec_negatives=in_batch+uniform``): K distinct catalog
        indices, the same on every process (seeded by the run's seed and the draw count), so each process encodes
        the same items and data parallelism averages their gradients as one process would."""
        if self.args.rec_negatives != "in_batch+uniform":
            return None
        gen = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self._negative_draws)
        self._negative_draws += 1
        return uniform_negatives(len(self.item_ids), self.args.num_uniform_negatives, gen).to(self.accelerator.device)

    def _joint_forward(self, model, inputs, negatives: torch.Tensor | None = None):
        """ONE forward over the batch's user rows [prompt | completion], the item rows of its distinct targets and
        of the uniform ``negatives`` (left-padded to one length): the policy log-probs and entropies of the user
        rows, h_T of each user row and h_v of each target / negative (all with grad), read at each row's last real
        token. Returns (logps (B, T), entropies (B, T), h_user (B, d), h_items (U, d), h_negatives (K, d) or None,
        distinct target indices (U,), each row's position among them (B,))."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        B, T = completion_ids.shape
        user_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        user_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        uniq, pos = torch.unique(inputs["target_index"], return_inverse=True)
        n_neg = 0 if negatives is None else negatives.numel()
        item_rows = [self._item_rows[i] for i in uniq.tolist() + ([] if negatives is None else negatives.tolist())]
        S = max(user_ids.size(1), max(len(r) for r in item_rows))
        ids = torch.full((B + len(item_rows), S), self._tokenizer.pad_token_id, dtype=torch.long,
                         device=user_ids.device)
        mask = torch.zeros_like(ids)
        ids[:B, S - user_ids.size(1):], mask[:B, S - user_ids.size(1):] = user_ids, user_mask
        for j, r in enumerate(item_rows):
            ids[B + j, S - len(r):] = torch.tensor(r, device=ids.device)
            mask[B + j, S - len(r):] = 1
        with capture_last_hidden_state(model) as captured:
            logps, entropies, _ = self._get_per_token_logps_and_entropies(model, ids, mask, T, compute_entropy=True)
        vectors = gather_positions(torch.cat(captured, dim=0), last_positions(mask))  # (B + U, d)
        U = uniq.numel()
        return (logps[:B], entropies[:B], vectors[:B], vectors[B:B + U], vectors[B + U:] if n_neg else None,
                uniq, pos)

    def _rec_loss(self, h_user, h_items, uniq, pos, rec_weight, h_neg=None, negatives=None) -> torch.Tensor:
        """InfoNCE (or the released -A p) of each selected row's h_T against the batch's distinct targets, gathered
        across processes (a duplicate id is one column). Other processes' target vectors enter WITH grad
        (``_gather_with_grad``): this process's loss sends gradient into the targets the other processes encoded, as
        one process over the global batch would (without it, the first update of a 2-process run differed from the
        1-process one by ~4x the largest weight change; tests/test_multiprocess.py). Uniform ``negatives`` (same on
        every process) join as further columns, but not where they repeat a target column; ``logq_correction``
        offsets every column by log of its expected count in the draw (``logq_offsets``)."""
        args = self.args
        h_user, h_items = self.project(h_user), self.project(h_items)
        cand_ids = uniq
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.gather(torch.tensor([uniq.numel()], device=uniq.device))
            width = int(counts.max())
            pad_ids = torch.full((width,), -1, dtype=uniq.dtype, device=uniq.device)
            pad_ids[:uniq.numel()] = uniq
            pad_vec = h_items.new_zeros(width, h_items.size(1))
            pad_vec[:uniq.numel()] = h_items
            all_ids = self.accelerator.gather(pad_ids)
            all_vec = _gather_with_grad(pad_vec)
            keep = all_ids >= 0
            all_ids, all_vec = all_ids[keep], all_vec[keep]
            cols, first = _first_occurrence(all_ids)
            cand = all_vec[first]
            local_cols = torch.searchsorted(cols, uniq)
            cand = cand.index_put((local_cols,), h_items)  # own targets keep their grad
            pos = local_cols[pos]
            cand_ids = cols
        else:
            cand = h_items
        offset = torch.zeros(cand_ids.numel(), dtype=cand.dtype, device=cand.device)
        if negatives is not None:  # a negative that is also a target column is that column, not a second one
            cand = torch.cat([cand, self.project(h_neg)])
            repeat = torch.isin(negatives, cand_ids)
            offset = torch.cat([offset, torch.where(repeat, torch.full_like(repeat, math.inf, dtype=offset.dtype),
                                                    torch.zeros_like(repeat, dtype=offset.dtype))])
            cand_ids = torch.cat([cand_ids, negatives])
        if args.logq_correction:
            n_rows = h_user.size(0) * self.accelerator.num_processes
            offset = offset + logq_offsets(cand_ids, self.target_share.to(cand.device), n_rows,
                                           0 if negatives is None else negatives.numel())
        return recommendation_loss(h_user, cand, pos, rec_weight, args.tau, args.rec_loss, logit_offset=offset)


def make_projection(d: int, out_dim: int) -> torch.nn.Linear:
    """W: d -> out_dim without bias; the identity when out_dim = d (training starts at the unprojected scores),
    else a seeded orthogonal map (cosines preserved as well as a lower-dimensional map can)."""
    layer = torch.nn.Linear(d, out_dim, bias=False)
    with torch.no_grad():
        if out_dim == d:
            layer.weight.copy_(torch.eye(d))
        else:
            torch.nn.init.orthogonal_(layer.weight, generator=torch.Generator().manual_seed(0))
    return layer


def recommendation_weights(advantages: torch.Tensor, num_generations: int, reasoning: bool = True) -> torch.Tensor:
    """Which rows train the recommendation head, and with what weight (B,) -> (B,): each group's max-advantage
    path(s) (ties: all of them) when that advantage is POSITIVE, weighted by it (R²ec Eq. 8's delta(i = i*), anchor
    bug b: a negative advantage never pushes the target down); without reasoning every row, weight 1."""
    if not reasoning:
        return torch.ones_like(advantages)
    grouped = advantages.view(-1, num_generations)
    best = grouped == grouped.amax(dim=1, keepdim=True)
    return torch.where(best & (grouped > 0), grouped, torch.zeros_like(grouped)).reshape(-1)


def target_shares(targets, index_of: dict) -> torch.Tensor:
    """p_c of the logQ correction: each catalog item's share of the training targets, add-one smoothed (an item
    never a target still has a finite log). ``targets``: catalog ids -> (V,) float64, sums to 1."""
    counts = torch.ones(len(index_of), dtype=torch.float64)
    for t in targets:
        counts[index_of[t]] += 1
    return counts / counts.sum()


def uniform_negatives(n_items: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """K distinct catalog indices drawn uniformly without replacement (all of them when K >= V). -> (min(K, V),)"""
    return torch.randperm(n_items, generator=generator)[:k]


def logq_offsets(candidate_ids: torch.Tensor, target_share: torch.Tensor, n_rows: int, n_uniform: int) -> torch.Tensor:
    """log Q(c) of each candidate column: its expected count in this micro-step's candidate draw, N_rows x p_c
    (in-batch: each of the N_rows targets is c with probability p_c) + K / V (K uniform draws over V items).
    Subtracted from the logits, it is the sampled-softmax correction (Yi et al., RecSys 2019; mixed negatives:
    Yang et al., WWW 2020). (C,) ids, (V,) p -> (C,)."""
    q = n_rows * target_share[candidate_ids] + n_uniform / target_share.numel()
    return torch.log(q).to(torch.float32)


def recommendation_loss(h_user: torch.Tensor, h_candidates: torch.Tensor, positive: torch.Tensor,
                        weights: torch.Tensor, tau: float, kind: str = "infonce",
                        logit_offset: torch.Tensor | None = None) -> torch.Tensor:
    """The recommendation loss of a micro-batch: (1/B) sum_i w_i l_i with p_i = softmax_c(cos(h_i, h_c) / tau -
    offset_c) at the row's own target c = positive[i]; l_i = -log p_i (``infonce``) or -p_i (``released``: -A p).
    (B, d), (C, d), (B,), (B,), optional (C,) offsets (inf: the column is left out) -> scalar. Rows with w_i = 0
    contribute exactly nothing (value and gradient)."""
    if kind not in REC_LOSSES:
        raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {kind!r}")
    scores = cosine_scores(h_user, h_candidates, tau)
    if logit_offset is not None:
        scores = scores - logit_offset.to(scores.dtype)[None, :]
    log_p = torch.log_softmax(scores, dim=1).gather(1, positive[:, None])[:, 0]
    per_row = -log_p if kind == "infonce" else -log_p.exp()
    w = weights.to(per_row.dtype)
    per_row = torch.where(w != 0, w * per_row, torch.zeros_like(per_row))  # no 0 * inf, no grad leak
    return per_row.sum() / max(1, weights.numel())


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 (equal shapes on every process, rank-major) whose backward gives each process the
    SUM over processes of the gradient of its own slice: every process's loss reaches the vectors this process
    computed. With the data-parallel mean of the parameter gradients that is exactly the gradient of one process
    over the global batch. Every process must run the backward (it is a collective)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.size(0)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo (CPU) has no reduce_scatter
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x)


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct values of ``ids`` and, for each, the index of its first occurrence."""
    cols, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((cols.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return cols, first
