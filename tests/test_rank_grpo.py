"""Rank-GRPO: rewards, advantages, token->item maps, item ratios and the loss against slow references written
straight from the paper's equations (plain Python loops), on real Reddit-v2 completions tokenised with the real
Qwen2.5 vocabulary; the mu = 1 gradient against a hand-written per-rank policy gradient; edge cases."""
from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch

from conftest import REDDIT_DIR, require
from references import ref_advantages, ref_clipped_surrogate, ref_item_index, ref_rank_rewards, ref_relevance
from methods.rank_grpo.trainer import (
    RankGRPOConfig,
    RankGRPOTrainer,
    build_advantages,
)
from methods.rank_grpo.list_judge import length_shaping_reward
from trainers.core_algos import item_log_ratio, rank_zscore

torch.set_num_threads(1)

PROMPT = [{"role": "user", "content": "Recommend 20 movies, one per line as Title (Year)."}]


# ---------------------------------------------------------------------------------------------- helpers
class CannedTrainer(RankGRPOTrainer):
    """Generation replaced by fixed completion token ids (cycled), so rewards are known and non-trivial."""

    canned: list[list[int]] = []
    _pos = 0

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = [list(self.canned[(self._pos + i) % len(self.canned)]) for i in range(len(prompt_ids))]
        self._pos += len(prompt_ids)
        return out, None


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                per_device_train_batch_size=8, num_generations=4, max_completion_length=512, beta=0.0,
                gradient_checkpointing=False, logging_steps=1, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return RankGRPOConfig(**base)


def _tiny_model(vocab_size, eos_id, pad_id):
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
                      eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=pad_id)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    return model


# ------------------------------------------------------------------------------------------ real data fixtures
@pytest.fixture(scope="module")
def reddit():
    from rewards.catalog import load_catalog

    samples = json.loads(require(REDDIT_DIR / "sft_with_assigned_traits_test.json").read_text())["samples"]
    catalog = load_catalog(require(REDDIT_DIR / "gt_catalog.pkl"))
    return samples, catalog


@pytest.fixture(scope="module")
def qwen_tok():
    from modeling.qwen_vocab import load_qwen_tokenizer

    return load_qwen_tokenizer()


def _record(sample, catalog):
    gt = [catalog.match(t, int(y)) for t, y in sample["groundtruth_with_release_year"]]
    seen = sorted({i for t in sample["seen_titles"] for i in catalog.ids_for_title(t)})
    return {"prompt": PROMPT, "groundtruth": [i for i in gt if i is not None], "seen": seen}


def _variants(samples, gt_lines, seen_line, rng):
    """4 completion texts (+ EOS flag) for one prompt: real completions of other users' answers to the same post,
    perturbed the ways models do, with the prompt's ground-truth / seen titles placed at known ranks."""
    a, b, c, d = (s["completion"][0]["content"].split("\n") for s in samples)
    g = (gt_lines * 3)[:3]
    a = a[:]
    a[0], a[6] = g[0], g[1]  # hits at ranks 1 and 7
    shuffled = b[:]
    rng.shuffle(shuffled)
    shuffled[2], shuffled[4], shuffled[9] = g[0], seen_line, g[0]  # hit, seen (0), duplicate (0)
    v2 = c[:12]
    v2[1] = g[2]
    v2[2] = v2[2].rsplit(" (", 1)[0]  # a line without its year: not an item under the paper's parse
    v2.insert(5, "")
    d = d + a[:2]
    d[19], d[21] = g[1], g[2]  # a hit at rank 20 and one beyond N (not counted)
    return [
        ("\n".join(a), True),  # SFT-style list, EOS
        ("Sure! Here are 20 movies you might enjoy:\n\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(shuffled)),
         True),  # preamble + numbering, shuffled
        ("\n".join(f"- **{t}**" if t else t for t in v2), True),  # 11 items + blank line -> early stop
        ("\n".join(d) + "\n\nI hope you like them!", False),  # 22 items + outro, truncated -> overflow
    ]


def _build_group_data(reddit, tok, n_groups=2, seed=0):
    samples, catalog = reddit
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    by_seen = {}
    for s in samples:
        by_seen.setdefault(tuple(s["seen_titles"]), []).append(s)
    pools = [v for v in by_seen.values() if len(v) >= 4][:n_groups]
    assert len(pools) == n_groups
    rng = random.Random(seed)
    inputs, canned, texts = [], [], []
    for pool in pools:
        rec = _record(pool[0], catalog)
        gt_lines = [f"{t} ({y})" for t, y in pool[0]["groundtruth_with_release_year"]]
        seen_id = catalog.ids_for_title(pool[0]["seen_titles"][0])[0]
        for text, eos_flag in _variants(pool[:4], gt_lines, catalog.display(seen_id), rng):
            ids = tok.encode(text) + ([eos] if eos_flag else [])
            inputs.append(dict(rec))
            canned.append(ids)
            texts.append(text)
    return inputs, canned, texts


# ------------------------------------------------------------------------------------------------- tests
def test_rewards_advantages_token_map_on_real_reddit(reddit, qwen_tok, tmp_path):
    samples, catalog = reddit
    tok = qwen_tok
    N, G = 20, 4
    inputs, canned, texts = _build_group_data(reddit, tok)
    model = _tiny_model(len(tok), tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id)
    trainer = CannedTrainer(model=model, args=_config(tmp_path), train_dataset=_dataset(inputs),
                            processing_class=tok, catalog=catalog)
    trainer.canned = canned
    trainer.model.train()
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    # reference per completion (decode with the tokenizer; parse; match; relevance by hand)
    from rewards.parse import parse_items

    ref = []
    for ids, x, text in zip(canned, inputs, texts):
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert decoded == text
        items = parse_items(decoded)
        rel = ref_relevance([catalog.match(it.title, it.year) for it in items], x["groundtruth"], set(x["seen"]))[:N]
        overflow = len(items) >= N and decoded[items[N - 1].end:].strip() != ""
        ended = ids[-1] == eos
        tail = (-0.1 if overflow else 0.0) + (-0.1 if ended and len(items) < N else 0.0)
        ref.append(dict(items=items, rel=rel, tail=tail, overflow=overflow, ended=ended))
    assert sum(sum(r["rel"]) for r in ref) >= 4, "the real completions should hit some ground truth"
    assert [r["overflow"] for r in ref[:4]] == [False, False, False, True]
    assert [len(r["items"]) for r in ref[:4]] == [20, 20, 11, 22]
    ref_idx = ref_item_index(canned, texts, [r["items"] for r in ref], tok, N, tok.pad_token_id)

    for scheme in ("exp_inf", "exp_2", "log"):
        for shaping in ("reward", "advantage"):
            trainer.args.reward_func, trainer.args.length_shaping = scheme, shaping
            out = trainer._generate_and_score_completions(inputs)
            R = [ref_rank_rewards(r["rel"], scheme, N) for r in ref]
            if shaping == "reward":
                A = ref_advantages([row + [r["tail"]] for row, r in zip(R, ref)], G, 1e-4)
            else:
                A = [a + [r["tail"]] for a, r in zip(ref_advantages(R, G, 1e-4), ref)]
            assert out["advantages"].shape == (len(canned), N + 1)
            torch.testing.assert_close(out["advantages"].double(), torch.tensor(A, dtype=torch.float64),
                                       atol=1e-6, rtol=0)
            assert out["item_index"].tolist() == [row[: out["item_index"].size(1)] for row in ref_idx]
            for k in (1, 5, 20):
                want = sum(r[k - 1] for r in R) / len(R)
                assert trainer._metrics["train"][f"rewards/pos_{k}/mean"][-1] == pytest.approx(want, abs=1e-6)
            want_seq = sum(sum(r) + x["tail"] for r, x in zip(R, ref)) / len(R)
            # TRL's reward path: the rank-reward sum and the length shaping, each under its own name
            assert trainer.reward_func_names == ["rank_exp_inf", "length_shaping"]
            got_seq = sum(trainer._metrics["train"][f"rewards/{name}/mean"][-1] for name in trainer.reward_func_names)
            assert got_seq == pytest.approx(want_seq, abs=1e-5)
            want_tail = sum(x["tail"] for x in ref) / len(ref)
            assert trainer._metrics["train"]["rewards/length_shaping/mean"][-1] == pytest.approx(want_tail, abs=1e-6)

    # ---- item ratios (Eq. 6) and the clipped loss, off-policy (mu > 1: old logps differ)
    trainer.args.reward_func, trainer.args.length_shaping = "exp_inf", "reward"
    out = trainer._generate_and_score_completions(inputs)
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    T = out["completion_ids"].size(1)
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attn, T)[0]
    gen = torch.Generator().manual_seed(0)
    old = logps + 0.08 * torch.randn(logps.shape, generator=gen)
    out["old_per_token_logps"] = old
    mask = out["completion_mask"]
    idx = out["item_index"]
    adv = out["advantages"]

    log_w, counts = item_log_ratio((logps - old) * mask, torch.ones_like(logps), item_index=idx, n_units=N + 1)
    n_clipped = 0
    for norm in ("paper", "token"):
        trainer.args.rank_normalization = norm
        trainer.current_gradient_accumulation_steps = 1
        with torch.no_grad():
            loss = trainer._compute_loss(trainer.model, out).item()
        total, weight = 0.0, 0.0
        for i in range(len(canned)):
            for k in range(N + 1):
                toks = [t for t in range(T) if mask[i, t] and idx[i, t] == k]
                if not toks:
                    assert counts[i, k] == 0
                    continue
                lr = sum(float(logps[i, t] - old[i, t]) for t in toks) / len(toks)
                assert float(log_w[i, k]) == pytest.approx(lr, abs=1e-6)
                w, a = math.exp(lr), float(adv[i, k])
                s = ref_clipped_surrogate(w, a, 0.06, 0.08)
                n_clipped += int(w < 1 - 0.06 or w > 1 + 0.08)
                total += s * (len(toks) if norm == "token" else 1.0)
                weight += len(toks)
        want = -total / (len(canned) * N) if norm == "paper" else -total / weight
        assert loss == pytest.approx(want, abs=1e-6)
    assert n_clipped > 0, "the perturbation should clip some item ratios"


def _dataset(inputs):
    from datasets import Dataset

    return Dataset.from_list([{k: v for k, v in x.items()} for x in inputs])


@pytest.fixture(scope="module")
def tiny_bpe(tmp_path_factory):
    from modeling.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_bpe") / "model"
    _, tok = build_tiny_model(path, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                              num_kv_heads=1, intermediate_size=64)
    return path, tok


def _toy_catalog():
    from rewards.catalog import Catalog

    titles = [("The Matrix", 1999), ("Toy Story", 1995), ("Star Wars", 1977), ("Pulp Fiction", 1994),
              ("Fargo", 1996), ("The Godfather", 1972), ("Casablanca", 1942), ("Alien", 1979)]
    return Catalog([{"id": i, "title": t, "year": y} for i, (t, y) in enumerate(titles)])


def test_mu1_ratio_is_one_and_gradient_equals_naive_rank_policy_gradient(tiny_bpe, tmp_path):
    path, tok = tiny_bpe
    N, G, beta = 3, 4, 0.05
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    texts = ["The Matrix (1999)\nFargo (1996)\nAlien (1979)", "Here:\n\nAlien (1979)\nToy Story (1995)",
             "Star Wars (1977)\nThe Matrix (1999)\nFargo (1996)\nCasablanca (1942)", "Pulp Fiction (1994)"]
    canned = [tok.encode(t) + ([eos] if i != 2 else []) for i, t in enumerate(texts)]
    inputs = [{"prompt": PROMPT, "groundtruth": [0, 4, 7], "seen": [1]}] * G
    cfg = _config(tmp_path, n_items=N, num_generations=G, per_device_train_batch_size=G, beta=beta)
    trainer = CannedTrainer(model=str(path), args=cfg, train_dataset=_dataset(inputs), processing_class=tok,
                            catalog=_toy_catalog())
    trainer.canned = canned
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions(inputs)
    assert "old_per_token_logps" not in out  # mu = 1, aligned steps: TRL reuses the current logps (ratio 1)
    adv, idx, mask = out["advantages"], out["item_index"], out["completion_mask"]
    assert adv.abs().sum() > 0 and (idx >= 0).any()
    # a reference different from the policy, so the KL term has a gradient
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    T = out["completion_ids"].size(1)
    with torch.no_grad():
        lp0 = trainer._get_per_token_logps_and_entropies(model, input_ids, attn, T)[0]
    out["ref_per_token_logps"] = lp0 + 0.1 * torch.randn(lp0.shape, generator=torch.Generator().manual_seed(1))

    model.zero_grad()
    loss = trainer._compute_loss(model, out)
    loss.backward()
    g_trainer = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert trainer._metrics["train"]["item_ratio/mean"][-1] == 1.0  # exp(mean(logp - logp.detach())) = exp(0)

    # naive per-rank policy gradient by hand: -(1/(G N)) sum_ik A_ik mean_{t in k} log pi_t + beta KL
    model.zero_grad()
    logits = model(input_ids=input_ids, attention_mask=attn).logits[:, -T - 1:-1].float()
    lp = torch.log_softmax(logits / cfg.temperature, -1).gather(-1, out["completion_ids"][..., None])[..., 0]
    naive = 0.0
    for i in range(G):
        for k in range(N + 1):
            toks = [t for t in range(T) if mask[i, t] and idx[i, t] == k]
            if toks:
                naive = naive - adv[i, k] * torch.stack([lp[i, t] for t in toks]).mean() / (G * N)
    kl_rows = []
    for i in range(G):
        toks = [t for t in range(T) if mask[i, t]]
        d = torch.stack([out["ref_per_token_logps"][i, t] - lp[i, t] for t in toks])
        kl_rows.append((torch.exp(d) - d - 1).mean())
    kl = beta * torch.stack(kl_rows).mean()
    naive = naive + kl
    # value: with w = 1 every surrogate is A_ik, so the loss is -(1/(G N)) sum of the present ranks' A + beta KL
    present = [(i, k) for i in range(G) for k in range(N + 1) if ((idx[i] == k) & (mask[i] != 0)).any()]
    want = -sum(float(adv[i, k]) for i, k in present) / (G * N) + kl.item()
    assert loss.item() == pytest.approx(want, abs=1e-6)
    naive.backward()
    for n, p in model.named_parameters():
        if n in g_trainer:
            torch.testing.assert_close(g_trainer[n], p.grad, atol=1e-7, rtol=1e-4)
    assert sum(g.abs().sum() for g in g_trainer.values()) > 0


def test_identical_completions_give_zero_advantage_and_finite_loss(tiny_bpe, tmp_path):
    path, tok = tiny_bpe
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.encode("The Matrix (1999)\nFargo (1996)") + [eos]
    inputs = [{"prompt": PROMPT, "groundtruth": [0], "seen": []}] * 4
    cfg = _config(tmp_path, n_items=3, num_generations=4, per_device_train_batch_size=4, beta=0.01)
    trainer = CannedTrainer(model=str(path), args=cfg, train_dataset=_dataset(inputs), processing_class=tok,
                            catalog=_toy_catalog())
    trainer.canned = [ids]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions(inputs)
    assert torch.equal(out["advantages"], torch.zeros_like(out["advantages"]))
    loss = trainer._compute_loss(trainer.model, out)
    assert torch.isfinite(loss)
    assert trainer._metrics["train"]["frac_rank_zero_std"][-1] == 1.0


def test_rank_advantages_edge_cases():
    r = torch.tensor([[0.1, 1.0], [0.1, 0.0], [0.1, 1.0], [0.1, 1.0], [0.3, 5.0], [0.3, 5.0]])
    a = rank_zscore(r, num_generations=2)
    assert torch.isfinite(a).all()
    assert a[:, 0].abs().sum() == 0  # constant columns: exactly 0, not a rounding residue
    assert a[2:, 1].abs().sum() == 0
    s = statistics.stdev([1.0, 0.0])
    assert a[0, 1].item() == pytest.approx(0.5 / (s + 1e-4), rel=1e-6)
    with pytest.raises(ValueError):
        rank_zscore(r[:5], num_generations=2)
    # advantage-mode tail: raw constants, unnormalised
    tail = torch.tensor([-0.1, 0.0, -0.2, -0.2, 0.0, 0.0])
    adv = build_advantages(r, tail, 2, 1e-4, "advantage")
    assert torch.equal(adv[:, -1], tail)
    adv = build_advantages(r, tail, 2, 1e-4, "reward")
    assert adv[2, -1] == 0 and adv[0, -1] < 0 < adv[1, -1]
    # rank_center: r - group mean on the ranks and on the tail reward (hand values: group 1 has [1, 0] at rank 2)
    adv = build_advantages(r, tail, 2, 1e-4, "reward", "rank_center")
    assert adv[0, 1].item() == pytest.approx(0.5) and adv[1, 1].item() == pytest.approx(-0.5)
    assert adv[0, -1].item() == pytest.approx(-0.05) and adv[1, -1].item() == pytest.approx(0.05)
    assert adv[:, 0].abs().sum() == 0
    with pytest.raises(ValueError, match="rank_advantage"):
        RankGRPOConfig(output_dir="/tmp/x", use_cpu=True, report_to="none", rank_advantage="rank_std")


def test_length_shaping_reward():
    kw = dict(n_items=20, overflow_penalty=-0.1, early_stop_penalty=-0.1, eos_bonus=0.1)
    assert length_shaping_reward(20, False, True, **kw) == pytest.approx(0.1)  # EOS after exactly N: bonus
    assert length_shaping_reward(20, False, False, **kw) == 0.0  # truncated right at N
    assert length_shaping_reward(12, False, True, **kw) == pytest.approx(-0.1)  # early stop
    assert length_shaping_reward(12, False, False, **kw) == 0.0  # truncated before N: no penalty
    assert length_shaping_reward(23, True, True, **kw) == pytest.approx(-0.1)  # overflow
    assert length_shaping_reward(20, True, False, **kw) == pytest.approx(-0.1)  # outro text after item N


def test_config_presets():
    kw = dict(output_dir="/tmp/x", use_cpu=True, bf16=False, report_to="none")
    c = RankGRPOConfig(**kw)
    assert (c.reward_func, c.epsilon, c.epsilon_high, c.beta) == ("exp_inf", 0.06, 0.08, 1e-3)
    c = RankGRPOConfig(algorithm="grpo", **kw)
    assert (c.reward_func, c.epsilon, c.epsilon_high, c.loss_type, c.importance_sampling_level) == \
        ("ndcg", 0.2, 0.26, "grpo", "token")
    c = RankGRPOConfig(algorithm="gspo", **kw)
    assert (c.epsilon, c.epsilon_high, c.importance_sampling_level) == (3e-4, 4e-4, "sequence")
    c = RankGRPOConfig(algorithm="gspo", epsilon=0.01, **kw)
    assert c.epsilon == 0.01
    with pytest.raises(ValueError):
        RankGRPOConfig(reward_func="exp_banana", **kw)
    with pytest.raises(ValueError):
        RankGRPOConfig(algorithm="ppo", **kw)
    with pytest.raises(ValueError):
        RankGRPOConfig(reward_func="ndcg", **kw)


def test_non_byte_level_tokenizer_uses_the_slow_fallback(tmp_path, caplog):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    corpus = ["The Matrix (1999)\nFargo (1996)\nAlien (1979)\nRecommend 20 movies, one per line as Title (Year)."] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<unk>", name_or_path="tiny-metaspace",
                                  chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                                                "{% endfor %}<|im_start|>")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model = _tiny_model(len(tok), eos, tok.pad_token_id)
    inputs = [{"prompt": PROMPT, "groundtruth": [0, 4], "seen": []}] * 2
    with caplog.at_level("WARNING"):
        trainer = CannedTrainer(model=model, args=_config(tmp_path, n_items=3, num_generations=2,
                                                          per_device_train_batch_size=2),
                                train_dataset=_dataset(inputs), processing_class=tok, catalog=_toy_catalog())
    assert trainer._byte_table is None and "SLOW" in caplog.text
    trainer.canned = [tok.encode("Here:\nThe Matrix (1999)\nFargo (1996)") + [eos], tok.encode("Alien (1979)")]
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)
    idx = out["item_index"]
    # row 0: preamble -> -1, then items 0 and 1, EOS -> tail (3); row 1: one miss, truncated
    for b, ids in enumerate(trainer.canned):
        pieces = {}
        for t, tid in enumerate(ids):
            pieces.setdefault(int(idx[b, t]), []).append(tid)
        if b == 0:
            # (this BPE merges across newlines: a token straddling two items goes to the first)
            assert "The Matrix (1999)" in tok.decode(pieces[0]) and "(1996)" in tok.decode(pieces[1])
            assert 3 in pieces and pieces[3][-1] == eos
            assert -1 in pieces  # the preamble line
        else:
            assert "Alien" in tok.decode(pieces[0])
    assert out["advantages"][0, 0] > 0 > out["advantages"][1, 0]


def test_a_batch_with_zero_reward_variance_is_warned_about(tiny_bpe, tmp_path, caplog):
    """Every rollout of the batch gets the same rewards -> a warning naming the step, and a count; a batch with
    different rewards -> none."""
    import logging

    path, tok = tiny_bpe
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    same = tok.encode("The Matrix (1999)\nFargo (1996)") + [eos]
    other = tok.encode("Alien (1979)") + [eos]
    inputs = [{"prompt": PROMPT, "groundtruth": [0], "seen": []}] * 4
    cfg = _config(tmp_path, n_items=3, num_generations=4, per_device_train_batch_size=4)
    trainer = CannedTrainer(model=str(path), args=cfg, train_dataset=_dataset(inputs), processing_class=tok,
                            catalog=_toy_catalog())
    trainer.model.train()
    with caplog.at_level(logging.WARNING, logger="trainers.base"):
        trainer.canned, trainer._pos = [same, other], 0
        trainer._generate_and_score_completions(inputs)
        assert "same rewards" not in caplog.text
        trainer.canned, trainer._pos = [same], 0
        trainer._generate_and_score_completions(inputs)
    assert "all 4 rollouts of the batch got the same rewards" in caplog.text
    assert trainer.zero_reward_variance_batches == 1
