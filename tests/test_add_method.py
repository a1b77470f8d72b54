"""A new method edits no shared module (docs/ARCHITECTURE.md "Adding a method"). Defined HERE: a length-normalised
GRPO (Dr. GRPO's constant divisor: the summed token surrogates over B x L, so a token weighs the same in a short and
a long completion) as a config subclass that declares its resume identity, a loss aggregation registered from this
file, and a trainer subclass that supplies only its pieces to the shared loss template. It trains 2 steps on the
tiny CPU model of tests/test_train_rank_grpo.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

from test_train_rank_grpo import tiny_setup  # noqa: F401  (a fixture)
from trainers import core_algos
from trainers.base import RecRLConfig, RecRLTrainer

torch.set_num_threads(1)

AGGREGATION = "test_length_normalised"
CALLS: list = []


@pytest.fixture
def length_normalised():
    """The method's aggregation in the shared registry for the test's duration."""

    @core_algos.register_loss_agg(AGGREGATION)
    def length_normalised_sum(values: torch.Tensor, weights: torch.Tensor, length: int) -> torch.Tensor:
        """sum_bt w_bt v_bt / (B L) with a constant L (Dr. GRPO). (B, T) -> scalar."""
        CALLS.append(tuple(values.shape))
        return (torch.where(weights > 0, values, torch.zeros_like(values)) * weights).sum() / (values.size(0) * length)

    CALLS.clear()
    yield
    del core_algos.LOSS_AGGREGATIONS[AGGREGATION]


@dataclass
class LengthNormGRPOConfig(RecRLConfig):
    resume_identity_fields: ClassVar[tuple[str, ...]] = ("normaliser_length",)

    normaliser_length: int = field(default=50, metadata={"help": "L of the B x L divisor."})


def token_id_sum(prompts, completions, completion_ids, **_) -> list[float]:
    """A reward that differs between completions of a random model: the sum of its token ids, mod 11."""
    return [float(sum(ids) % 11) for ids in completion_ids]


class LengthNormGRPOTrainer(RecRLTrainer):
    policy_loss = "ppo_clip"  # token units (the default policy_units), TRL's group advantages

    def build_reward_funcs(self) -> list:
        return [token_id_sum]

    def loss_aggregation(self) -> tuple[str, dict]:
        return AGGREGATION, {"length": self.args.normaliser_length}


def _trainer(tiny_setup, tmp_path, **kw):  # noqa: F811
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed

    _, data, model = tiny_setup
    dsd, catalog = load_processed(data)
    args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                per_device_train_batch_size=4, num_generations=2, max_completion_length=8, max_steps=2,
                learning_rate=5e-2, logging_steps=1, seed=0, dataloader_num_workers=0, beta=0.0,
                activation_checkpointing=False, normaliser_length=50)
    args.update(kw)
    return LengthNormGRPOTrainer(model=str(model), args=LengthNormGRPOConfig(**args), train_dataset=dsd["train"],
                                 processing_class=load_tokenizer(model), catalog=catalog)


def test_the_method_loss_is_its_own_aggregation_of_the_clipped_surrogate(tiny_setup, tmp_path, length_normalised):  # noqa: F811
    trainer = _trainer(tiny_setup, tmp_path)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]  # 2 prompts x G = 2
    batch = trainer._generate_and_score_completions(rows)
    adv, mask = batch["advantages"], batch["completion_mask"]
    assert adv.abs().sum() > 0
    # off-policy (old log-probs perturbed), so the ratios differ from 1 and some are clipped
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], mask], 1)
    T = mask.size(1)
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, T)[0]
    batch["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(0))
    loss = trainer._compute_loss(trainer.model, batch)
    assert CALLS == [tuple(mask.shape)]
    # by hand: the clipped surrogate of every completion token, summed, over B x L
    B, L, eps = mask.size(0), trainer.args.normaliser_length, trainer.args.epsilon
    total, n_clipped = 0.0, 0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                w, a = math.exp(logps[b, t].item() - batch["old_per_token_logps"][b, t].item()), adv[b].item()
                total += min(w * a, min(max(w, 1 - eps), 1 + eps) * a)
                n_clipped += not 1 - eps <= w <= 1 + eps
    assert n_clipped > 0
    assert loss.item() == pytest.approx(-total / (B * L), abs=1e-6)
    assert abs(total / mask.sum().item() - total / (B * L)) > 1e-4  # the default token mean would differ


def test_the_method_trains_and_records_its_resume_identity(tiny_setup, tmp_path, length_normalised):  # noqa: F811
    trainer = _trainer(tiny_setup, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert all(k in logs[0] for k in ("clip_ratio/low_mean", "entropy", "rewards/token_id_sum/mean"))
    assert len(CALLS) >= 2  # the registered aggregation built the loss of each step
    changed = max((p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters())
    assert changed > 0
    assert trainer.run_identity() == {"normaliser_length": 50}
