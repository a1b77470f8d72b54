"""RecPO's item side (docs/methods.md §3): the catalog's item rows, the item table H_V and its snapshot in checkpoints,
the optional learned projection W (ZeRO-3 gathering, kept out of vLLM's weight sync), the user / item vectors of
the joint forward, the reward terms scored against the table (``RecPOJudge``) and the recommendation loss
(``ItemHead._rec_loss`` and its pieces: which rows train it, uniform negatives, the logQ correction).

``ItemHead`` is a mixin of ``methods.recpo.trainer.RecPOTrainer`` (it reads the trainer's model, tokenizer,
accelerator and state, and chains TRL's checkpoint hooks with ``super()``); the functions below it are pure torch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os

import torch

from methods.recpo.recommender import PROJECTION_FILE  # the optional learned projection, saved beside the model
from modeling.hidden_states import capture_last_hidden_state, chat_ids, encode_id_rows, gather_positions, \
    last_positions
from preprocess.recpo_prompts import ITEM_PREFILL, item_prompt
from rewards.embedding_rewards import cosine_scores, rank_ndcg, target_ranks, target_softmax_prob
from trainers.distributed import first_occurrence, gather_with_grad
from trainers.reward_adapter import BatchJudge

logger = logging.getLogger(__name__)
ITEM_TABLE_FILE = "recpo_item_table.safetensors"
PROJECTION_MODULE = "recpo_projection"  # the projection's attribute name on the policy (a submodule of it)
REC_LOSSES = ("infonce", "released")
REWARD_TERMS = ("recpo_softmax", "recpo_ndcg")  # R_c, R_d (Eq. 5), in the order of RecPOConfig.reward_weights


class ItemHead:
    """The item table, the projection and the vectors of the recommendation loss, on the trainer."""

    # ------------------------------------------------------------------------------------------ item table
    def _init_item_head(self, args) -> None:
        """After ``GRPOTrainer.__init__`` (needs the tokenizer, the model and the accelerator)."""
        self._item_rows = [chat_ids(self._tokenizer, item_prompt(self.catalog[i], args.category), ITEM_PREFILL)
                           for i in self.item_ids]
        self.item_table: torch.Tensor | None = None  # (V, d) snapshot
        self.table_step = -1  # global step of the snapshot
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

    # ------------------------------------------------------------------------------------------ projection
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

    # ------------------------------------------------------------------------------------------ checkpoints
    # The table is part of the run's state: a resume rebuilt from the checkpoint's model would rank against a newer
    # snapshot than the uninterrupted run until the next refresh, so it is saved with each checkpoint.
    def save_run_state(self, checkpoint_dir: str) -> None:
        super().save_run_state(checkpoint_dir)
        if self.args.should_save and self.item_table is not None:
            from safetensors.torch import save_file

            save_file({"item_table": self.item_table.detach().cpu().contiguous()},
                      os.path.join(checkpoint_dir, ITEM_TABLE_FILE),
                      metadata={"table_step": str(self.table_step), "item_ids": json.dumps(self.item_ids)})

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

    # ------------------------------------------------------------------------------------------ vectors
    def _history_mask(self, targets, histories=None, seens=None) -> torch.Tensor:
        """(B, V) True for each row's history / seen items (its target excepted); per-row catalog ids."""
        V, B = len(self.item_ids), len(targets)
        mask = torch.zeros(B, V, dtype=torch.bool, device=self.accelerator.device)
        for b, (target, history, seen) in enumerate(zip(targets, histories or [None] * B, seens or [None] * B)):
            cols = [self.index_of[i] for i in list(history or []) + list(seen or [])
                    if i in self.index_of and i != target]
            if cols:
                mask[b, cols] = True
        return mask

    def _user_vectors(self, completion_ids_list) -> torch.Tensor:
        """h_T of every row of the batch being scored, no grad: one forward of [prompt | completion]."""
        rows = [p + list(c) for p, c in zip(self._prompt_rows, completion_ids_list, strict=True)]
        return encode_id_rows(self.model, rows, self._tokenizer.pad_token_id, batch_size=len(rows) or 1)

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

    # ------------------------------------------------------------------------------------------ rewards
    def _rec_loss(self, h_user, h_items, uniq, pos, rec_weight, h_neg=None, negatives=None) -> torch.Tensor:
        """InfoNCE (or the released -A p) of each selected row's h_T against the batch's distinct targets, gathered
        across processes (a duplicate id is one column). Other processes' target vectors enter WITH grad
        (``gather_with_grad``): this process's loss sends gradient into the targets the other processes encoded, as
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
            all_vec = gather_with_grad(pad_vec)
            keep = all_ids >= 0
            all_ids, all_vec = all_ids[keep], all_vec[keep]
            cols, first = first_occurrence(all_ids)
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

    def score_batch(self, completion_ids, columns) -> dict:
        """R_c and R_d (Eq. 5) of every row of the batch being scored, against the item table: h_T of
        [prompt | completion] (no grad) vs every item, the row's history / seen items masked. Also the target
        indices and ranks (the trainer's metrics)."""
        args, device = self.args, self.accelerator.device
        target_ids = columns["target"]
        targets = torch.tensor([self.index_of[t] for t in target_ids], device=device)
        exclude = self._history_mask(target_ids, columns.get("history"), columns.get("seen"))
        h = self._user_vectors(completion_ids)
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
        return {"recpo_softmax": r_c.tolist(), "recpo_ndcg": r_d.tolist(), "targets": targets, "ranks": ranks}


class RecPOJudge(BatchJudge):
    """RecPO's reward adapter: one ``score(completion_ids, columns)`` per batch (``ItemHead.score_batch``); its terms
    are ``recpo_softmax`` (R_c) and ``recpo_ndcg`` (R_d)."""

    def __init__(self, score):
        self.score = score

    def judge(self, completion_ids, columns, log_metric=None) -> dict:
        return self.score(completion_ids, columns)

    def value(self, term: str, judgement: dict) -> list[float]:
        return judgement[term]


# ------------------------------------------------------------------------------------------------ functions
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
