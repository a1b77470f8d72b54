"""Shared plumbing of the recommendation RL trainers (one place, so a method's trainer holds only what is new).

``RecRLConfig`` adds to TRL's ``GRPOConfig`` what every method needs: the catalog, the list length N, the one
``require_year`` rule and prompt-side truncation. ``RecRLTrainer`` (a ``trl.GRPOTrainer``):

* loads the catalog (``catalog=`` or ``args.catalog_path``) and resolves ``require_year`` from it
  (``rewards.catalog.resolve_require_year``, the rule evaluation uses);
* fits prompts by cutting their history, oldest first (``preprocess.prompting.fit_prompt``), never the instruction
  or the completion; a run whose prompts would lose their instruction stops with an error;
* takes its reward functions from the ``build_reward_funcs`` hook, which go through TRL's own reward path
  (a method's terms over one per-batch judgement: ``trainers.reward_adapter.BatchJudge``);
* decodes completion token ids to their exact text with a byte table (``trainers.token_map``);
* ``process_slice`` / ``local_rows``: this process's rows of a tensor gathered over processes (TRL's order);
* ``global_token_mean``: a token-mean loss corrected for unequal token counts across processes (every trainer's
  ``token`` aggregation goes through it);
* ``log_metrics``: named scalar metrics for the current mode;
* ``_compute_loss``: the one policy-loss template (a ``core_algos.POLICY_LOSSES`` entry on the method's units,
  aggregation, forward and extra terms -- hooks ``policy_units``, ``loss_aggregation``, ``loss_forward``,
  ``extra_losses``), its metrics reduced across processes in one all-reduce (``trainers.metrics.MetricSums``);
* kill-safe checkpoints (``trainers.checkpointing.KillSafeCheckpointMixin``) that also record the run's identity
  (the config's ``resume_identity_fields``: a resume with another algorithm / stage / TRM is an error, not a
  silent mix), and
  ``save_run_state`` / ``load_run_state`` hooks for method state transformers does not save (RecPO's item table);
* a compact console line per logging step (``trainers.console.install_compact_console``); the full metrics
  still go to ``state.log_history``, wandb and the --log_file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from trl import GRPOConfig, GRPOTrainer

from rewards.catalog import resolve_require_year
from trainers.checkpointing import KillSafeCheckpointMixin
from trainers.console import install_compact_console
from trainers.core_algos import clip_fractions, get_policy_loss, is_token_mean, k3_kl
from trainers.metrics import MetricSums
from trainers.token_map import ByteTable, build_byte_table, decode_bytes

logger = logging.getLogger(__name__)


@dataclass
class RecRLConfig(GRPOConfig):
    """``GRPOConfig`` plus what every recommendation RL method needs. A method's config declares its resume identity:
    ``resume_identity_fields``, the fields that define what a run trains (a resume must use the same values; they
    are recorded in each checkpoint), of which ``resume_identity_paths`` are compared as resolved paths."""

    resume_identity_fields: ClassVar[tuple[str, ...]] = ()
    resume_identity_paths: ClassVar[tuple[str, ...]] = ()

    n_items: int = field(default=20, metadata={"help": "N, the length of the recommendation list."})
    require_year: bool | None = field(
        default=None,
        metadata={"help": "Only `Title (Year)` lines are items. Default (None): from the catalog -- required iff it "
                  "has any year (evaluation uses the same rule)."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt-side fitting (preprocess.prompting.fit_prompt: history cut oldest first, never the "
                  "instruction) applied to the datasets before training; the completion is never cut. None: none."},
    )
    catalog_path: str | None = field(
        default=None,
        metadata={"help": "Catalog file (.json/.csv/.pkl read with a restricted unpickler); default: the processed "
                  "data set's catalog.json."},
    )

    item_aware_decoding: bool = field(
        default=False,
        metadata={"help": "Rollouts never emit an item already in the list or in the row's `seen` items "
                  "(modeling.item_decoding; needs one token per catalog title, `python -m modeling.tiny "
                  "--catalog_tokens`; transformers generation only). Evaluate with `--decoding item_aware` too."},
    )

    freeze_token_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the input and output token embeddings fixed during RL (a deviation from the papers). "
                  "On the one-token-title CPU twin they are over half of the weights, one row per item, and Adam "
                  "moves the rows of items that are rarely sampled as far as the others (docs/results/NOTES.md "
                  "item 16)."},
    )

    def check_choices(self, **choices) -> None:
        """ValueError naming the first field (keyword) whose value is not among its allowed values."""
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def __post_init__(self):
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay False: the rewards need the groundtruth/seen columns")
        super().__post_init__()


def freeze_token_embeddings(model) -> int:
    """Set ``requires_grad=False`` on the input and output token embeddings (one tensor when tied); returns how many
    parameters that fixed (each shared tensor counted once)."""
    seen, frozen = set(), 0
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for p in (module.parameters() if module is not None else ()):
            if id(p) not in seen:
                seen.add(id(p))
                frozen += p.numel()
                p.requires_grad_(False)
    return frozen


def truncate_dataset_prompts(dataset, tokenizer, max_prompt_length: int, split: str = "train"):
    """Prompt-side fitting (``preprocess.prompting.fit_prompt``: history cut oldest first, never the instruction) of
    a ``prompt`` column. Prompts that cannot fit without cutting their instruction are counted and the run stops
    (``PromptFitError`` naming the first rows)."""
    from preprocess.prompting import FitReport, PromptFitError, fit_prompt

    if dataset is None or "prompt" not in getattr(dataset, "column_names", []):
        return dataset
    has_id = "sample_id" in dataset.column_names

    def fit(row, index):
        try:
            return {"prompt": fit_prompt(row["prompt"], tokenizer, max_prompt_length).prompt, "fit_error": ""}
        except PromptFitError as err:
            return {"prompt": row["prompt"], "fit_error": f"{row['sample_id'] if has_id else f'#{index}'}: {err}"}

    dataset = dataset.map(fit, with_indices=True, desc=f"fitting {split} prompts to {max_prompt_length} tokens")
    errors = [e for e in dataset["fit_error"] if e]
    if errors:
        FitReport(rows=len(dataset), unfit=len(errors), unfit_examples=errors[:5]).raise_if_unfit(f"{split} split")
    return dataset.remove_columns("fit_error")


@dataclass
class LossForward:
    """What the loss template needs from the forward pass: (B, T) log-probs, entropies and policy mask; ``extra``
    holds a method's own outputs (e.g. RecPO's user / item vectors)."""

    logps: torch.Tensor
    entropies: torch.Tensor
    mask: torch.Tensor
    extra: dict = field(default_factory=dict)


RUN_IDENTITY_FILE = "recrl_run.json"


class RecRLTrainer(KillSafeCheckpointMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with the catalog, prompt truncation, reward functions from ``build_reward_funcs`` and
    helpers for per-process rows and named metrics. Subclasses override ``build_reward_funcs``, TRL's
    ``_generate_and_score_completions`` for their own advantages, and for their own loss set ``policy_loss`` and
    supply the pieces of the loss template (``_compute_loss``)."""

    supports_item_aware_decoding = False  # the list methods (ListGRPOTrainer) set it: their completion is the list

    def __init__(self, model, args: RecRLConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 catalog=None, **kwargs):
        if not isinstance(args, RecRLConfig):
            raise TypeError(f"{type(self).__name__} needs a RecRLConfig (or a subclass), got {type(args).__name__}")
        if "reward_funcs" in kwargs:
            raise ValueError(f"{type(self).__name__} builds its own reward functions (build_reward_funcs)")
        self.catalog = catalog = self.resolve_catalog(args, catalog)
        self.require_year = resolve_require_year(catalog, args.require_year)
        if args.max_prompt_length is not None:
            if processing_class is None:
                raise ValueError("max_prompt_length needs processing_class (the tokenizer) to count prompt tokens")
            train_dataset = truncate_dataset_prompts(train_dataset, processing_class, args.max_prompt_length)
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: truncate_dataset_prompts(v, processing_class, args.max_prompt_length, k)
                                for k, v in eval_dataset.items()}
            else:
                eval_dataset = truncate_dataset_prompts(eval_dataset, processing_class, args.max_prompt_length,
                                                        "eval")
        if args.item_aware_decoding:  # refused before the model loads
            if not self.supports_item_aware_decoding:
                raise ValueError(f"item_aware_decoding is for methods whose completion is the item list (Rank-GRPO, "
                                 f"GRPO, GSPO), not {type(self).__name__}")
            if args.use_vllm or args.use_transformers_continuous_batching:
                raise ValueError("item_aware_decoding is built for transformers `generate` only; set use_vllm and "
                                 "use_transformers_continuous_batching false")
        self.args = args  # build_reward_funcs may read it before TRL sets it
        super().__init__(model=model, reward_funcs=self.build_reward_funcs(), args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        if args.freeze_token_embeddings:  # before train() builds the optimizer from the trainable parameters
            frozen = freeze_token_embeddings(self.model)
            logger.info("freeze_token_embeddings: %d parameters fixed", frozen)
        vocab = self.model.config.get_text_config().vocab_size
        try:
            self._byte_table: ByteTable | None = build_byte_table(self._tokenizer, vocab_size=vocab)
        except NotImplementedError as exc:
            logger.warning("%s -- using the SLOW per-sequence fallback (prefix decoding) for token->item maps", exc)
            self._byte_table = None
        self._eos_ids = set(self.eos_token_ids) | {self._tokenizer.pad_token_id}
        self._item_tokens = self._rollout_seen = None
        if args.item_aware_decoding:
            from modeling.item_decoding import ItemTokens
            from preprocess.contract import catalog_items_of

            self._item_tokens = ItemTokens.from_catalog(self._tokenizer, catalog_items_of(catalog), vocab)
        install_compact_console(self, terms=[(name, f"rewards/{name}/mean") for name in self.reward_func_names])
        self._warn_if_checkpoints_split_generations()

    @classmethod
    def resolve_catalog(cls, args: RecRLConfig, catalog=None):
        """The run's catalog: ``catalog`` when given, else the one at ``args.catalog_path`` (the one load every
        method trainer uses; a method that needs the catalog before ``RecRLTrainer.__init__`` calls it first)."""
        if catalog is not None:
            return catalog
        if args.catalog_path is None:
            raise ValueError(f"{cls.__name__} needs a catalog: pass catalog= or set args.catalog_path")
        from rewards.catalog import load_catalog

        return load_catalog(args.catalog_path)

    # ------------------------------------------------------------------------------------------ hooks
    def _generate_and_score_completions(self, inputs):
        """Keeps the rows' ``seen`` lists for item-aware decoding while TRL generates (TRL's generation gets only
        the prompts, in the order of ``inputs``)."""
        if self._item_tokens is not None:
            self._rollout_seen = [row.get("seen") or [] for row in inputs]
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_seen = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards (B_global, n_funcs), with a warning when every rollout of the whole batch got the same
        rewards: every advantage is then 0 and the step carries no policy gradient (counted in
        ``zero_reward_variance_batches``). The batch's rewards stay in ``rewards_per_func`` for the advantage hooks
        of methods that compute their own (RecPO, DeepRec)."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.rewards_per_func = rewards  # (B_global, n_funcs), gathered
        same = torch.nan_to_num(rewards, nan=0.0)
        if self.mode == "train" and same.size(0) > 1 and bool((same == same[:1]).all()):
            self.zero_reward_variance_batches = getattr(self, "zero_reward_variance_batches", 0) + 1
            if self.accelerator.is_main_process:
                logger.warning("step %d: all %d rollouts of the batch got the same rewards %s: every advantage is 0, "
                               "no policy gradient from this batch (%d such batches so far)", self.state.global_step,
                               same.size(0), same[0].tolist(), self.zero_reward_variance_batches)
        return rewards

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's transformers generation, plus the item-aware logits processor when it is on: TRL's call takes
        no processor, so the model's ``generate`` gets it for the duration of this call only."""
        if self._item_tokens is None or self._rollout_seen is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        from transformers import LogitsProcessorList

        from modeling.item_decoding import item_aware_processor

        if len(prompt_ids) != len(self._rollout_seen):
            raise RuntimeError(f"item-aware decoding: {len(prompt_ids)} prompts for {len(self._rollout_seen)} rows")
        model = self.accelerator.unwrap_model(self.model_wrapped)
        plain = model.generate
        processor = item_aware_processor(self._item_tokens, self._rollout_seen)

        def generate(*a, **kw):
            kw["logits_processor"] = LogitsProcessorList([*(kw.get("logits_processor") or []), processor])
            return plain(*a, **kw)

        model.generate = generate
        try:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        finally:
            del model.generate  # the instance attribute: the class's generate is back

    def build_reward_funcs(self) -> list:
        """The TRL reward functions of this method (called once, before ``GRPOTrainer.__init__``)."""
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, with a guard: a non-finite loss (e.g. NaN logits at a real position) must not reach the
        optimiser. The decision is collective -- every process learns whether ANY process's loss is non-finite
        (one all-reduce per micro-batch) -- and then EVERY process skips the micro-batch: its loss is replaced by
        an exact zero (``_zero_loss``: zero gradients on whole parameters, or no path to the partitioned ZeRO-3
        ones), so backward adds nothing to any gradient on any process, and the micro-batch is counted in
        ``nonfinite_loss_skipped`` with a warning. A zero connected to the loss's own graph would not do: its
        backward multiplies the NaN / inf inside that graph by zero."""
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(torch.tensor([int(local_bad)], device=loss.device))
            bad_processes = [i for i, f in enumerate(flags.tolist()) if f]
        else:
            bad_processes = [0] if local_bad else []
        if not bad_processes:
            return loss
        self.nonfinite_loss_skipped = getattr(self, "nonfinite_loss_skipped", 0) + 1
        logger.warning("non-finite loss (%s here; non-finite on process(es) %s) at step %d: micro-batch skipped on "
                       "every process (%d so far)", loss.detach().item(), bad_processes, self.state.global_step,
                       self.nonfinite_loss_skipped)
        self.log_metrics({"nonfinite_loss_skipped": float(self.nonfinite_loss_skipped)})
        return self._zero_loss(model, loss)

    # ------------------------------------------------------------------------------------------ the loss template
    # A method with its own loss names a POLICY_LOSSES entry and supplies its pieces (loss_forward, policy_units,
    # loss_aggregation, extra_losses); None keeps TRL's own loss (the GRPO / GSPO baselines).
    policy_loss: str | None = None
    # "sequence": log the KL term itself; "token": the k3 mean over every process's policy tokens (Rank-GRPO's log)
    kl_metric = "sequence"
    # a name (e.g. "item_ratio/mean") logs the mean unit ratio over units with tokens; None: not logged
    unit_ratio_metric: str | None = None

    def _compute_loss(self, model, inputs):
        """The policy-loss skeleton, once for every method: forward -> old log-probs -> ``policy_loss`` (unit
        ratios, clip, sampler correction, aggregation; policy and KL terms apart) -> a token-mean aggregation made
        global across processes -> + weighted extra terms + beta KL -> / gradient-accumulation steps; then the named
        metrics, reduced across processes in one all-reduce (``MetricSums``)."""
        if self.policy_loss is None:
            return super()._compute_loss(model, inputs)
        mode = self.mode
        fwd = self.loss_forward(model, inputs)
        ratio, ratio_kwargs = self.policy_units(inputs)
        aggregation, agg_kwargs = self.loss_aggregation()
        out = get_policy_loss(self.policy_loss)(
            fwd.logps, self.old_logps(inputs, fwd.logps), inputs["advantages"], fwd.mask,
            eps_low=self.epsilon_low, eps_high=self.epsilon_high, ratio=ratio, ratio_kwargs=ratio_kwargs,
            aggregation=aggregation, agg_kwargs=agg_kwargs,
            importance_sampling_ratio=inputs.get("importance_sampling_ratio"),
            ref_per_token_logps=inputs["ref_per_token_logps"] if self.beta != 0.0 else None)
        policy = out.policy
        if is_token_mean(aggregation):  # over every process's unit tokens, as one process would
            policy = self.global_token_mean(policy, out.weights.sum())
        extras = self.extra_losses(inputs, fwd)
        loss = policy
        for term, weight in extras.values():
            loss = loss + weight * term
        if out.kl is not None:
            loss = loss + self.beta * out.kl
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        with torch.no_grad():
            self.log_metrics(self._loss_metrics(fwd, out, policy, extras, inputs).reduce(self.accelerator), mode)
        return loss

    def _loss_metrics(self, fwd, out, policy, extras, inputs) -> MetricSums:
        """clip_ratio/{low,high}_mean over units with tokens, entropy over policy tokens, kl, and with extra terms
        loss/policy and loss/<name> (per-process loss terms: their mean over processes)."""
        sums = MetricSums()
        low, high = clip_fractions(out.log_w, out.advantages, out.weights, self.epsilon_low, self.epsilon_high)
        present = (out.weights > 0).to(out.log_w.dtype)
        n_units = present.sum()
        sums.add("clip_ratio/low_mean", low, n_units)
        sums.add("clip_ratio/high_mean", high, n_units)
        if self.unit_ratio_metric is not None:
            sums.add(self.unit_ratio_metric, (torch.exp(out.log_w) * present).sum(), n_units)
        n_tokens = fwd.mask.sum().to(out.log_w.dtype)
        sums.add("entropy", (fwd.entropies * fwd.mask).sum(), n_tokens)
        if out.kl is not None:
            if self.kl_metric == "token":
                sums.add("kl", (k3_kl(fwd.logps, inputs["ref_per_token_logps"]) * fwd.mask).sum(), n_tokens)
            else:
                sums.add("kl", out.kl)
        if extras:
            sums.add("loss/policy", policy)
            for name, (term, _) in extras.items():
                sums.add(f"loss/{name}", term)
        return sums

    def loss_forward(self, model, inputs) -> LossForward:
        """The loss's forward pass (default: ``policy_logps``); a method with a joint forward (RecPO) overrides
        it and puts what its extra terms need in ``LossForward.extra``."""
        return LossForward(*self.policy_logps(model, inputs))

    def policy_units(self, inputs) -> tuple[str, dict]:
        """The units of the policy loss: a RATIOS entry and its keyword arguments (default: tokens)."""
        return "token", {}

    def loss_aggregation(self) -> tuple[str, dict]:
        """A LOSS_AGGREGATIONS entry and its keyword arguments (default: the token mean)."""
        return "token", {}

    def extra_losses(self, inputs, forward: LossForward) -> dict:
        """Further loss terms, name -> (scalar term, weight): added as weight x term, logged as loss/<name>."""
        return {}

    @staticmethod
    def _zero_loss(model, loss: torch.Tensor) -> torch.Tensor:
        """An exact zero loss that gives every trainable parameter an exact zero gradient (or none), never through
        the loss's own graph. Whole parameters (1 process, DDP, ZeRO-1/2): sum(p.sum() * 0), so every gradient hook
        and bucket reduction runs as on any step (ZeRO-2's reduction epilogue fails on a backward that reached no
        parameter). ZeRO-3 (parameters partitioned, ``ds_id``; empty outside their module's forward, so p.sum()
        fails in backward): a zero with no path to the model -- no hook fires on any process, and DeepSpeed steps
        on zero gradients. DeepSpeed's ``engine.backward`` needs a ``grad_fn``: hence ``* 1.0`` on a leaf."""
        params = [p for p in model.parameters() if p.requires_grad]
        zero = torch.zeros((), dtype=loss.dtype, device=loss.device, requires_grad=True) * 1.0
        if any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3
            return zero
        return sum((p.sum() * 0.0 for p in params), zero)

    # ------------------------------------------------------------------------------------------ helpers
    def policy_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward of [prompt | completion]: (per-token log-probs (B, T), entropies (B, T), policy mask (B, T)
        = completion_mask x TRL's tool / env mask: the tokens the policy wrote)."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = self.policy_token_mask(inputs)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        return logps, entropies, mask

    @staticmethod
    def policy_token_mask(batch, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) tokens the policy wrote: ``mask`` (default the completion mask) x TRL's tool / env mask when the
        batch has one (environment tokens, e.g. DeepRec's injected TRM lists, are not the policy's)."""
        mask = batch["completion_mask"] if mask is None else mask
        return mask * batch["tool_mask"] if "tool_mask" in batch else mask

    def weighted_rewards(self) -> torch.Tensor:
        """(B_global,) the batch's rewards weighted by ``reward_weights`` and summed over the reward functions (NaN
        terms skipped), from ``rewards_per_func`` -- for methods that compute their own advantages."""
        return (self.rewards_per_func * self.reward_weights.to(self.rewards_per_func.device)).nansum(dim=1)

    def global_token_mean(self, local_mean: torch.Tensor, n_local_tokens: torch.Tensor) -> torch.Tensor:
        """A token mean over this process's micro-batch (``n_local_tokens`` tokens) -> its share of the token mean
        over EVERY process's tokens, which is what one process over the global batch computes. Data parallelism
        (DDP, DeepSpeed) averages gradients over the W processes, so this process's mean is scaled by
        W * n_local / n_global; without it a process with fewer tokens weighs more. One process: unchanged. A
        collective (every process calls it at the same point); the scale carries no gradient."""
        world = self.accelerator.num_processes
        if world == 1:
            return local_mean
        n_local = n_local_tokens.detach().to(local_mean.dtype).reshape(())
        n_global = self.accelerator.reduce(n_local.clone(), reduction="sum").clamp(min=1.0)
        return local_mean * (n_local * world / n_global)

    @staticmethod
    def old_logps(inputs, per_token_logps: torch.Tensor) -> torch.Tensor:
        """The sampler-time log-probs of the ratio's denominator; TRL omits them when mu = 1 (one update per
        generation), where the old policy IS the current one: its detached log-probs (ratio exactly 1)."""
        old = inputs.get("old_per_token_logps")
        return per_token_logps.detach() if old is None else old

    def decode_completion(self, ids: list[int]) -> str:
        """The exact text of completion token ids (byte table; tokenizer decode for non-byte-level vocabularies)."""
        if self._byte_table is not None:
            return decode_bytes(ids, self._byte_table)
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def mode(self) -> str:
        return "train" if self.model.training else "eval"

    @property
    def group_size(self) -> int:
        return self.num_generations if self.mode == "train" else self.num_generations_eval

    def process_slice(self, n_local: int) -> slice:
        """Rows of this process in a tensor gathered over processes (``accelerator.gather`` order, as TRL)."""
        i = self.accelerator.process_index
        return slice(i * n_local, (i + 1) * n_local)

    def local_rows(self, gathered: torch.Tensor, n_local: int) -> torch.Tensor:
        return gathered[self.process_slice(n_local)].contiguous()

    def log_metrics(self, metrics: dict[str, float], mode: str | None = None) -> None:
        """Append named scalars to this step's metrics (averaged per logging step by TRL, logged to wandb)."""
        table = self._metrics[mode or self.mode]
        for name, value in metrics.items():
            table[name].append(float(value))

    # ------------------------------------------------------------------------------------------ checkpoints
    def _warn_if_checkpoints_split_generations(self) -> None:
        """TRL keeps one generation batch for steps_per_generation x num_iterations micro-steps and does not save
        it: a resume from a checkpoint inside that window generates a new batch, so its curve leaves the
        uninterrupted run's. Checkpoints on window boundaries resume exactly."""
        args = self.args
        window = args.steps_per_generation * self.num_iterations  # micro-steps per generation batch
        save_steps = args.save_steps
        if args.save_strategy != "steps" or not float(save_steps).is_integer() or save_steps < 1:
            return
        if (int(save_steps) * args.gradient_accumulation_steps) % window:
            logger.warning("save_steps %s x gradient_accumulation_steps %s is not a multiple of steps_per_generation "
                           "x num_iterations = %s micro-steps: a resume from such a checkpoint regenerates the "
                           "batch it was in the middle of (the run goes on, but differs from an uninterrupted one)",
                           save_steps, args.gradient_accumulation_steps, window)

    def run_identity(self) -> dict:
        """The config's ``resume_identity_fields`` and their values, as recorded in each checkpoint."""
        args, identity = self.args, {}
        for name in args.resume_identity_fields:
            value = getattr(args, name)
            if name in args.resume_identity_paths and value is not None:
                value = os.path.realpath(value)
            identity[name] = value
        return identity

    def save_run_state(self, checkpoint_dir: str) -> None:
        if self.args.should_save:
            with open(os.path.join(checkpoint_dir, RUN_IDENTITY_FILE), "w", encoding="utf-8") as fh:
                json.dump({"trainer": type(self).__name__, **self.run_identity()}, fh, indent=1)

    def load_run_state(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, RUN_IDENTITY_FILE)
        if not os.path.isfile(path):
            logger.warning("%s has no %s (written before run identities were recorded): not checked",
                           checkpoint_dir, RUN_IDENTITY_FILE)
            return
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        now = self.run_identity()
        diff = [f"{k}: checkpoint {saved[k]!r}, now {v!r}" for k, v in now.items() if k in saved and saved[k] != v]
        if diff:
            raise ValueError(f"cannot resume from {checkpoint_dir}: it was trained with other settings ("
                             + "; ".join(diff) + "). Resume with the same settings, or start a new --output_dir")
