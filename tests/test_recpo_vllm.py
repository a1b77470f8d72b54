"""RecPO on TRL's real vLLM code path (``use_vllm=True``, colocate mode) with a FAKE vLLM engine: TRL's own
``VLLMGeneration`` (init, ``sync_weights``, ``generate``, ``extract_logprobs``) and GRPOTrainer's importance-sampling
correction run unchanged; only vLLM's ``LLM`` / ``SamplingParams`` are replaced. The fake engine keeps its OWN copy
of the model, fills it by name through ``load_weights`` (an unknown name is an error, as in vLLM's loaders) and
returns canned completions with that copy's true log-probs at the sampling temperature: a perfect sampler, so every
importance-sampling ratio must be 1 and the correction must leave the loss and its gradient unchanged."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from preprocess.recpo_prompts import ANSWER_MARKER

torch.set_num_threads(1)

TITLES = [f"Game {c}" for c in "ABCDEFGHIJKLMNOPQRST"]
# two write <answer> mid-text (cut there), two never do (the marker is appended: forced tokens), one of them with EOS
CANNED_TEXTS = ["Racing fans like speed. <answer> Game X", "I am not sure", "Puzzles, then <answer>",
                "Nothing fits<|im_end|>"]


class _Logprob:  # vLLM's Logprob: the sampled token is rank 1
    def __init__(self, logprob: float):
        self.logprob, self.rank = logprob, 1


class FakeEngineModel:
    """What TRL reaches as ``llm.llm_engine.model_executor.driver_worker.model_runner.model``."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(path)
        self.params = dict(self.hf.named_parameters())
        self.syncs: list[list[str]] = [[]]  # the names each sync delivered (a sync ends with reset_prefix_cache)

    def load_weights(self, weights):
        for name, tensor in weights:
            if name not in self.params:  # vLLM's loaders index their params_dict by name: KeyError
                raise KeyError(f"fake vLLM engine: no weight named {name!r}")
            with torch.no_grad():
                self.params[name].copy_(tensor)
            self.syncs[-1].append(name)


class FakeLLM:
    """vLLM's ``LLM`` for TRL's colocate mode: canned completions, log-probs from the engine's own weights."""

    canned: list[list[int]] = []
    last = None

    def __init__(self, model, **kwargs):
        self.engine = FakeEngineModel(model)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=self.engine))))
        self.calls = 0
        FakeLLM.last = self

    def reset_prefix_cache(self):  # called at the end of every sync
        self.engine.syncs.append([])

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        outputs = []
        for i, p in enumerate(prompts):
            prompt = list(p["prompt_token_ids"])
            comp = list(self.canned[(self.calls + i) % len(self.canned)])
            logits = self.engine.hf(input_ids=torch.tensor([prompt + comp])).logits[0, len(prompt) - 1:-1].float()
            lp = torch.log_softmax(logits / sampling_params.temperature, -1).gather(1, torch.tensor(comp)[:, None])
            outputs.append(SimpleNamespace(prompt_token_ids=prompt, outputs=[SimpleNamespace(
                token_ids=comp, logprobs=[{t: _Logprob(x)} for t, x in zip(comp, lp[:, 0].tolist())])]))
        self.calls += len(prompts)
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    """TRL's vLLM module sees a vLLM install whose LLM / SamplingParams are the fakes above."""
    import trl.generation.vllm_generation as vg

    monkeypatch.setattr(vg, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vg, "LLM", FakeLLM, raising=False)
    monkeypatch.setattr(vg, "SamplingParams", FakeSamplingParams, raising=False)
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # TRL's colocate init sets them
    saved = {k: os.environ.get(k) for k in names}
    FakeLLM.last = None
    yield FakeLLM
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def tiny_recpo(tmp_path_factory):
    """A sequential contract data set over 20 yearless items + a tiny random Qwen3 with a small byte-level BPE."""
    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    root = tmp_path_factory.mktemp("recpo_vllm")
    catalog = [{"id": 100 + i, "title": t, "year": None, "description": f"a {t.lower()} adventure"}
               for i, t in enumerate(TITLES)]
    recs = []
    for s in range(8):
        hist = [100 + (s + j) % 20 for j in range(3 + s % 3)]
        tgt = 100 + (s + 5) % 20
        recs.append(dict(sample_id=f"s{s}", prompt=build_prompt("history", n_items=1),
                         completion=format_completion([TITLES[tgt - 100]]), groundtruth=[tgt], seen=hist,
                         history=hist, target=tgt, timestamp=None))
    save_processed(root / "data", {"train": recs}, catalog, {"name": "tiny"}, quiet=True, progress=False)
    build_tiny_model(root / "model", tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    return root


def _vllm_trainer(root, tmp_path, fake, **kw):
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from methods.recpo.trainer import RecPOConfig, RecPOTrainer

    tok = load_tokenizer(root / "model")
    dsd, catalog = load_processed(root / "data")
    fake.canned = [tok(t, add_special_tokens=False)["input_ids"] for t in CANNED_TEXTS]
    args = dict(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4, max_steps=1,
                max_completion_length=16, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False,
                dataloader_num_workers=0, seed=0, category="video games", use_vllm=True, vllm_mode="colocate",
                temperature=0.7)
    args.update(kw)
    trainer = RecPOTrainer(model=str(root / "model"), args=RecPOConfig(**args), train_dataset=dsd["train"],
                           processing_class=tok, catalog=catalog)
    assert isinstance(trainer.vllm_generation.llm, FakeLLM)  # TRL's real VLLMGeneration around the fake engine
    return trainer, tok


def _grads(trainer, inputs) -> torch.Tensor:
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train; the loss is called directly here
    trainer.model.zero_grad()
    trainer._compute_loss(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("mode", ["sequence_mask", "token_truncate"])
def test_forced_answer_paths_keep_their_policy_gradient_under_vllm(tiny_recpo, tmp_path, fake_vllm, mode):
    """A perfect sampler: TRL's IS ratio is 1 on every row, forced-marker rows included (with 0.0 as their sampling
    log-prob it was ~1e-17 and ``sequence_mask`` zeroed it), and the loss gradient equals the uncorrected one."""
    trainer, tok = _vllm_trainer(tiny_recpo, tmp_path, fake_vllm, rec_loss_weight=0.0,
                                 vllm_importance_sampling_mode=mode)
    trainer.model.train()
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in (0, 0, 1, 1)])
    marker = tok(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
    lengths = out["completion_mask"].sum(dim=1).tolist()
    policy = out["policy_mask"].sum(dim=1).tolist()
    forced = [n - p for n, p in zip(lengths, policy)]
    assert forced == [0, len(marker), 0, len(marker)]  # rows 1 and 3: the marker was appended
    assert out["advantages"][[1, 3]].abs().min() > 0.1  # their policy terms matter

    # TRL's sampling log-probs: the sampler's for sampled tokens, NaN for the appended marker
    sampling = out["sampling_per_token_logps"]
    for b in (1, 3):
        n = lengths[b]
        assert torch.isnan(sampling[b, n - len(marker):n]).all() and torch.isfinite(sampling[b, :n - len(marker)]).all()

    isr = out["importance_sampling_ratio"]
    assert isr.shape == ((4, 1) if mode.startswith("sequence") else out["completion_mask"].shape)
    real = out["completion_mask"].bool() if isr.size(1) > 1 else torch.ones_like(isr, dtype=torch.bool)
    torch.testing.assert_close(isr[real], torch.ones_like(isr[real]), atol=1e-4, rtol=0)

    with_is = _grads(trainer, out)
    without = _grads(trainer, {k: v for k, v in out.items() if k != "importance_sampling_ratio"})
    assert without.abs().max() > 1e-4
    torch.testing.assert_close(with_is, without, atol=1e-4 * without.abs().max().item(), rtol=1e-3)


def test_no_reasoning_ablation_runs_under_vllm(tiny_recpo, tmp_path, fake_vllm):
    """reasoning=False never samples; TRL's correction still subtracts sampling log-probs: all NaN, ratio 1."""
    trainer, tok = _vllm_trainer(tiny_recpo, tmp_path, fake_vllm, reasoning=False)
    trainer.model.train()
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in (0, 0, 1, 1)])
    assert torch.isnan(out["sampling_per_token_logps"][out["completion_mask"].bool()]).all()
    torch.testing.assert_close(out["importance_sampling_ratio"], torch.ones(4, 1), atol=0, rtol=0)
    assert fake_vllm.last.calls == 0  # no rollout


def test_projection_is_not_pushed_to_vllm(tiny_recpo, tmp_path, fake_vllm):
    """--projection_dim: TRL's weight sync delivers every weight of the served architecture and never the
    projection (vLLM fails on an unknown name); after the update the engine holds the trained weights."""
    trainer, _ = _vllm_trainer(tiny_recpo, tmp_path, fake_vllm, projection_dim=16, max_steps=2)
    engine = fake_vllm.last.engine
    trainer.train()
    syncs = [s for s in engine.syncs if s]
    assert len(syncs) == 2  # one sync per optimizer step (global steps 0 and 1)
    for names in syncs:
        assert sorted(names) == sorted(engine.params), set(names) ^ set(engine.params)
    trained = dict(trainer.model.named_parameters())
    assert "recpo_projection.weight" in trained and trained["recpo_projection.weight"].requires_grad
    initial = FakeEngineModel(tiny_recpo / "model").params
    moved = [n for n, p in engine.params.items() if not torch.equal(p, initial[n])]
    assert moved, "the step-1 sync did not deliver the updated weights"
