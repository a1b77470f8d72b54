"""RecPO (R²ec): h_T positions against plain forwards (real Qwen vocabulary, left and right padding), the joint
forward against separate ones, rewards / advantages / both recommendation losses against slow references written
from the equations (real Amazon-2018 Games titles), full-catalog evaluation against a slow reference, and short CPU
runs of train_recpo.py that resume from a checkpoint."""
from __future__ import annotations

import math
import random

import pytest
import torch

from conftest import AMAZON_DIR, require
from modeling.hidden_states import (
    capture_last_hidden_state,
    chat_ids,
    encode_id_rows,
    encode_last_token,
    end_with_marker,
    left_pad,
    marker_cut,
)
from preprocess.recpo_prompts import ANSWER_MARKER, item_prompt, user_prompt
from rewards.embedding_rewards import cosine_scores, rank_ndcg, target_ranks, target_softmax_prob, top_k_items
from trainers.core_algos import group_zscore
from methods.recpo.head import recommendation_loss, recommendation_weights
from references import ref_rec_loss

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    from modeling.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("recpo_qwen") / "model"
    model, tok = build_tiny_model(path, tokenizer="qwen", hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                                  intermediate_size=32)
    from modeling.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(path)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def games_catalog():
    from rewards.catalog import load_catalog

    return load_catalog(require(AMAZON_DIR / "Games.item"))


def _plain_last_hidden(model, ids: list[int]) -> torch.Tensor:
    """The reference: an unpadded forward of one sequence, the backbone's output at its last token."""
    with torch.no_grad(), capture_last_hidden_state(model) as captured:
        model(input_ids=torch.tensor([ids]))
    return captured[0][0, -1]


# ------------------------------------------------------------------------------------------- positions
def test_answer_marker_is_several_qwen_tokens_and_the_cut_ends_on_it(qwen_model):
    _, tok = qwen_model
    marker_ids = tok(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
    assert len(marker_ids) > 1  # the case where "one token early" bites
    ids = tok("I think a racing game fits. <answer> Forza", add_special_tokens=False)["input_ids"]
    decode = lambda x: tok.decode(x, skip_special_tokens=True)  # noqa: E731
    keep = marker_cut(ids, decode, ANSWER_MARKER)
    assert ANSWER_MARKER in decode(ids[:keep])
    assert ANSWER_MARKER not in decode(ids[:keep - 1])  # the last kept token completes the marker
    cut, forced = end_with_marker(ids, decode, ANSWER_MARKER, marker_ids, {tok.eos_token_id})
    assert (cut, forced) == (ids[:keep], 0)
    no_marker = tok("no answer here", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    cut, forced = end_with_marker(no_marker, decode, ANSWER_MARKER, marker_ids, {tok.eos_token_id})
    assert cut == no_marker[:-1] + marker_ids and forced == len(marker_ids)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_last_token_hidden_state_equals_a_plain_forward(qwen_model, padding):
    model, tok = qwen_model
    rows = [chat_ids(tok, user_prompt(["Halo 5", "Tetris Effect"], "video games"), "Reasoning. " + ANSWER_MARKER),
            chat_ids(tok, item_prompt({"title": "Forza Horizon 4", "description": "racing"}, "video games"),
                     ANSWER_MARKER),
            tok("short " + ANSWER_MARKER, add_special_tokens=False)["input_ids"]]
    assert len({len(r) for r in rows}) == 3  # the longest row is one of three different lengths
    if padding == "left":
        ids, mask = left_pad(rows, tok.pad_token_id)
    else:
        S = max(len(r) for r in rows)
        ids = torch.full((3, S), tok.pad_token_id)
        mask = torch.zeros(3, S, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        got = encode_last_token(model, ids, mask)
    for b, r in enumerate(rows):
        torch.testing.assert_close(got[b], _plain_last_hidden(model, r), atol=1e-5, rtol=1e-5)
    # the batched table encoder (sorted by length, chunked) gives the same vectors in input order
    torch.testing.assert_close(encode_id_rows(model, rows, tok.pad_token_id, batch_size=2, progress=False), got,
                               atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- rewards
def test_rewards_match_slow_references_on_real_games_titles(games_catalog):
    V, B, d, tau = 300, 6, 8, 0.02
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(B, d, generator=gen, dtype=torch.float64), torch.randn(V, d, generator=gen,
                                                                                       dtype=torch.float64)
    rng = random.Random(0)
    targets = torch.tensor([rng.randrange(V) for _ in range(B)])
    exclude = torch.zeros(B, V, dtype=torch.bool)
    for b in range(B):
        for j in rng.sample([j for j in range(V) if j != targets[b]], 20):
            exclude[b, j] = True
    # the item vectors of the real titles' prompts are random here; the titles fix the catalog's size and order
    assert len(games_catalog) > V
    scores = cosine_scores(users, items, tau)
    for b in range(B):  # slow: by hand from the definitions
        cos = [sum(users[b, k] * items[v, k] for k in range(d)) / (users[b].norm() * items[v].norm())
               for v in range(V)]
        s = [c.item() / tau for c in cos]
        t = int(targets[b])
        assert scores[b].tolist() == pytest.approx(s, abs=1e-9)
        allowed = [v for v in range(V) if not exclude[b, v]]
        rank = 1 + sum(1 for v in allowed if s[v] > s[t] or (s[v] == s[t] and v < t))
        assert target_ranks(scores, targets, exclude)[b].item() == rank
        for cutoff in (1000, 5):
            want = 1 / math.log2(rank + 1) if rank <= cutoff else 0.0
            assert rank_ndcg(target_ranks(scores, targets, exclude), cutoff)[b].item() == pytest.approx(want)
        z = sum(math.exp(s[v] - max(s)) for v in allowed)
        assert target_softmax_prob(scores, targets, exclude)[b].item() == pytest.approx(math.exp(s[t] - max(s)) / z)
    # the evaluation's top-k never returns an excluded item and agrees with the rank
    top = top_k_items(scores, 10, exclude)
    ranks = target_ranks(scores, targets, exclude)
    for b in range(B):
        assert not exclude[b, top[b]].any()
        assert (int(targets[b]) in top[b].tolist()) == (ranks[b].item() <= 10)
    with pytest.raises(ValueError, match="own excluded"):
        target_ranks(scores, targets, exclude.clone().index_put_((torch.arange(B), targets), torch.tensor(True)))


def test_recommendation_weights_take_positive_max_advantage_paths_only():
    rewards = torch.tensor([0.1, 0.5, 0.5, 0.2,   0.3, 0.3, 0.3, 0.3,   0.9, 0.0, 0.0, 0.0])
    adv = group_zscore(rewards, 4)
    w = recommendation_weights(adv, 4)
    # group 1: the two tied best paths; group 2: constant -> advantage 0 -> nothing; group 3: the single best
    assert (w > 0).tolist() == [False, True, True, False, False, False, False, False, True, False, False, False]
    assert w[1].item() == pytest.approx(adv[1].item()) and w[8].item() == pytest.approx(adv[8].item())
    assert recommendation_weights(adv, 4, reasoning=False).tolist() == [1.0] * 12


@pytest.mark.parametrize("kind", ["infonce", "released"])
def test_recommendation_loss_and_gradient_equal_a_hand_written_version(kind):
    B, C, d, tau = 5, 4, 6, 0.02
    gen = torch.Generator().manual_seed(1)
    hu = torch.randn(B, d, generator=gen, dtype=torch.float64, requires_grad=True)
    hc = torch.randn(C, d, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([0, 2, 2, 3, 1])
    w = torch.tensor([0.7, 0.0, 1.3, 0.0, 0.4], dtype=torch.float64)
    got = recommendation_loss(hu, hc, pos, w, tau, kind)
    g_hu, g_hc = torch.autograd.grad(got, [hu, hc])

    hu2, hc2 = hu.detach().clone().requires_grad_(), hc.detach().clone().requires_grad_()
    total = 0.0
    for i in range(B):  # by hand: p_i = exp(s_i,pos) / sum_c exp(s_i,c), s = cos / tau
        if w[i] == 0:
            continue
        s = [torch.dot(hu2[i], hc2[c]) / (hu2[i].norm() * hc2[c].norm()) / tau for c in range(C)]
        log_p = s[pos[i]] - torch.logsumexp(torch.stack(s), dim=0)
        total = total + w[i] * (-log_p if kind == "infonce" else -torch.exp(log_p))
    want = total / B
    r_hu, r_hc = torch.autograd.grad(want, [hu2, hc2])
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g_hu, r_hu, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(g_hc, r_hc, atol=1e-10, rtol=1e-8)
    # rows with no positive advantage contribute exactly nothing
    assert g_hu[1].abs().max().item() == 0.0 and g_hu[3].abs().max().item() == 0.0


# ------------------------------------------------------------------------------------------- negatives
@pytest.mark.parametrize("kind", ["infonce", "released"])
def test_recommendation_loss_with_logit_offsets_matches_a_slow_reference(kind):
    gen = torch.Generator().manual_seed(3)
    B, C, d, tau = 5, 9, 6, 0.05
    hu = torch.randn(B, d, generator=gen, dtype=torch.float64, requires_grad=True)
    hc = torch.randn(C, d, generator=gen, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([0, 2, 2, 4, 1])
    w = torch.tensor([0.7, 0.0, 1.2, 0.4, 0.9], dtype=torch.float64)
    offset = torch.randn(C, generator=gen, dtype=torch.float64)
    offset[[6, 8]] = math.inf  # columns left out (a negative repeating a target)
    got = recommendation_loss(hu, hc, pos, w, tau, kind, logit_offset=offset)
    g_hu, g_hc = torch.autograd.grad(got, [hu, hc])
    hu2, hc2 = hu.detach().clone().requires_grad_(), hc.detach().clone().requires_grad_()
    want = ref_rec_loss(hu2, hc2, pos, w, tau, kind, offset.tolist())
    r_hu, r_hc = torch.autograd.grad(want, [hu2, hc2])
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g_hu, r_hu, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(g_hc, r_hc, atol=1e-10, rtol=1e-8)
    assert g_hc[[6, 8]].abs().max().item() == 0.0  # a left-out column gets no gradient
    # no offset = the plain loss; a constant offset changes nothing (softmax shift)
    plain = recommendation_loss(hu, hc, pos, w, tau, kind)
    assert recommendation_loss(hu, hc, pos, w, tau, kind, logit_offset=torch.full((C,), 2.5)).item() == \
        pytest.approx(plain.item(), abs=1e-12)


def test_target_shares_logq_offsets_and_uniform_negatives_match_slow_references():
    from methods.recpo.head import logq_offsets, target_shares, uniform_negatives

    index_of = {100 + i: i for i in range(6)}
    targets = [100, 100, 103, 105, 100, 103]
    p = target_shares(targets, index_of)
    counts = [1 + sum(t == 100 + i for t in targets) for i in range(6)]  # add-one smoothing, by hand
    assert p.tolist() == pytest.approx([c / sum(counts) for c in counts], abs=1e-15)
    ids = torch.tensor([0, 3, 1, 5])
    got = logq_offsets(ids, p, n_rows=8, n_uniform=4)
    assert got.tolist() == pytest.approx([math.log(8 * p[i].item() + 4 / 6) for i in ids.tolist()], abs=1e-6)

    V, K, draws = 20, 5, 4000
    seen = torch.zeros(V)
    for k in range(draws):
        neg = uniform_negatives(V, K, torch.Generator().manual_seed(k))
        assert neg.numel() == K and len(set(neg.tolist())) == K and 0 <= neg.min() and neg.max() < V
        seen[neg] += 1
    # each item is drawn with probability K / V = 0.25 per draw: counts 1000 +- 3 sd (sd = sqrt(4000 .25 .75) = 27)
    assert (seen - draws * K / V).abs().max().item() < 3 * 27.4 + 10
    assert torch.equal(uniform_negatives(V, K, torch.Generator().manual_seed(7)),
                       uniform_negatives(V, K, torch.Generator().manual_seed(7)))  # one seed, one draw
    assert sorted(uniform_negatives(V, 50, torch.Generator().manual_seed(0)).tolist()) == list(range(V))


# ------------------------------------------------------------------------------------------- trainer
TITLES = [f"Game {c}" for c in "ABCDEFGHIJKLMNOPQRST"]


@pytest.fixture(scope="module")
def tiny_recpo(tmp_path_factory):
    """A sequential contract data set over 20 yearless items + a tiny random Qwen3 with a small byte-level BPE."""
    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    root = tmp_path_factory.mktemp("recpo_run")
    catalog = [{"id": 100 + i, "title": t, "year": None, "description": f"a {t.lower()} adventure"}
               for i, t in enumerate(TITLES)]
    recs = []
    for s in range(12):
        hist = [100 + (s + j) % 20 for j in range(3 + s % 3)]
        tgt = 100 + (s + 5) % 20
        recs.append(dict(sample_id=f"s{s}", prompt=build_prompt("history", n_items=1),
                         completion=format_completion([TITLES[tgt - 100]]), groundtruth=[tgt], seen=hist,
                         history=hist, target=tgt, timestamp=None))
    data = root / "data"
    save_processed(data, {"train": recs[:8], "validation": recs[8:10], "test": recs[10:]}, catalog,
                   {"name": "tiny"}, quiet=True, progress=False)
    model = root / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    return root, data, model


def _trainer(tiny_recpo, tmp_path, canned=None, **kw):
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from methods.recpo.trainer import RecPOConfig, RecPOTrainer

    _, data, model = tiny_recpo
    tok = load_tokenizer(model)
    dsd, catalog = load_processed(data)
    base = dict(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4, max_steps=1,
                max_completion_length=12, learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none",
                use_cpu=True, bf16=False, activation_checkpointing=False, dataloader_num_workers=0, seed=0,
                category="video games")
    base.update(kw)

    class Canned(RecPOTrainer):
        def _sample(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            return [list(canned[i % len(canned)]) for i in range(len(prompt_ids))], None

    cls = Canned if canned is not None else RecPOTrainer
    trainer = cls(model=str(model), args=RecPOConfig(**base), train_dataset=dsd["train"], processing_class=tok,
                  catalog=catalog)
    return trainer, tok


def test_batch_rewards_advantages_and_joint_forward_against_separate_passes(tiny_recpo, tmp_path):
    """Canned completions (one writes <answer> mid-text, one never does): the rewards equal a slow reference from
    plain forwards and the item table, the advantages equal Eq. 2 of Eq. 5, and the loss forward's log-probs, h_T
    and target vectors equal separate passes."""
    from modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_recpo[2])
    canned = [tok("Racing fans like speed. <answer> Game X", add_special_tokens=False)["input_ids"],
              tok("I am not sure", add_special_tokens=False)["input_ids"]]
    trainer, tok = _trainer(tiny_recpo, tmp_path, canned=canned, reward_beta=0.3)
    trainer.model.train()
    inputs = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]  # 2 users x G = 2
    out = trainer._generate_and_score_completions(inputs)
    model = trainer.model
    marker = tok(ANSWER_MARKER, add_special_tokens=False)["input_ids"]

    # completions: cut right after the marker, or the marker appended (masked out of the policy loss)
    comp = [row[m.bool()].tolist() for row, m in zip(out["completion_ids"], out["completion_mask"])]
    assert ANSWER_MARKER in tok.decode(comp[0]) and not tok.decode(comp[0]).endswith("Game X")
    assert comp[1] == canned[1] + marker
    assert out["policy_mask"][1].sum().item() == len(canned[1])
    assert out["policy_mask"][0].sum().item() == len(comp[0])

    # slow reference of the rewards: plain forwards, the trainer's table, loops
    catalog_ids = trainer.item_ids
    table = torch.stack([_plain_last_hidden(model, r) for r in trainer._item_rows])
    torch.testing.assert_close(trainer.item_table, table, atol=1e-5, rtol=1e-5)
    prompts = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"])]
    rewards = []
    for b, x in enumerate(inputs):
        h = _plain_last_hidden(model, prompts[b] + comp[b])
        s = [(torch.dot(h, table[v]) / (h.norm() * table[v].norm())).item() / 0.02 for v in range(len(table))]
        t = catalog_ids.index(x["target"])
        allowed = [v for v in range(len(table)) if catalog_ids[v] not in set(x["history"]) | set(x["seen"])]
        rank = 1 + sum(1 for v in allowed if s[v] > s[t] or (s[v] == s[t] and v < t))
        r_d = 1 / math.log2(rank + 1)
        r_c = math.exp(s[t] - max(s)) / sum(math.exp(s[v] - max(s)) for v in allowed)
        rewards.append(0.3 * r_c + 0.7 * r_d)
    logged = trainer._metrics["train"]
    assert logged["reward"][-1] == pytest.approx(sum(rewards) / 4, abs=1e-4)
    want_adv = group_zscore(torch.tensor(rewards, dtype=torch.float64), 2)
    torch.testing.assert_close(out["advantages"].double(), want_adv, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out["rec_weight"].double(), recommendation_weights(want_adv, 2), atol=1e-4, rtol=1e-3)

    # the loss forward: one pass over user rows + target item rows
    logps, ent, h_user, h_items, h_neg, uniq, pos = trainer._joint_forward(model, out)
    assert h_neg is None  # in-batch negatives only (the default)
    T = out["completion_ids"].size(1)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        ref_logps = trainer._get_per_token_logps_and_entropies(model, ids, mask, T)[0]
    cm = out["completion_mask"].bool()
    torch.testing.assert_close(logps[cm], ref_logps[cm], atol=1e-5, rtol=1e-5)
    for b in range(4):
        torch.testing.assert_close(h_user[b], _plain_last_hidden(model, prompts[b] + comp[b]), atol=1e-5, rtol=1e-5)
    assert h_items.requires_grad and h_user.requires_grad
    for j, col in enumerate(uniq.tolist()):
        torch.testing.assert_close(h_items[j], table[col], atol=1e-5, rtol=1e-5)
    assert [catalog_ids[uniq[p]] for p in pos.tolist()] == [x["target"] for x in inputs]
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    loss = trainer._compute_loss(model, out)
    assert torch.isfinite(loss) and loss.requires_grad


def test_train_recpo_runs_updates_the_table_and_resumes(tiny_recpo, tmp_path):
    import train_recpo

    _, data, model = tiny_recpo
    out = tmp_path / "run"
    common = ["--dataset_path", str(data), "--model_name", str(model), "--output_dir", str(out),
              "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
              "--learning_rate", "5e-2", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
              "--report_to", "none", "--activation_checkpointing", "false", "--dataloader_num_workers", "0",
              "--seed", "0", "--refresh_steps", "1", "--category", "video games"]
    trainer = train_recpo.main(common + ["--max_steps", "2"])
    first_table = trainer.item_table.clone()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert all(k in logs[0] for k in ("rewards/recpo_ndcg/mean", "rewards/recpo_softmax/mean", "loss/rec",
                                      "recpo/item_table_age", "recpo/forced_answer_rate"))
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    resumed = train_recpo.main(common + ["--max_steps", "3", "--resume_from_checkpoint", "last"])
    assert resumed.state.global_step == 3
    assert not torch.allclose(resumed.item_table, first_table)  # re-encoded by the updated model

    import json

    import eval_test  # the inference script: a RecPO run evaluated through the seam

    metrics = eval_test.main(["--recommender", "recpo", "--model_path", str(out), "--dataset_path", str(data),
                              "--category", "video games", "--max_new_tokens", "4", "--n_items", "5",
                              "--ks", "1", "5", "--protocol", "strict"])
    assert metrics["num_samples"] == 2 and 0.0 <= metrics["recall@5"] <= 1.0
    rows = [json.loads(line) for line in (out / "eval_test_strict" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["item_ids"]) == 5 and "completion" in r for r in rows)


def test_recpo_recommender_equals_a_slow_full_catalog_reference_and_never_ranks_history(tiny_recpo):
    from evaluation.evaluate import evaluate_recommender
    from methods.recpo.recommender import RecPORecommender
    from preprocess.contract import load_processed
    from preprocess.recpo_prompts import record_user_prompt

    _, data, model_path = tiny_recpo
    dsd, catalog = load_processed(data)
    rows = [dsd["train"][i] for i in range(5)]
    rec = RecPORecommender.from_pretrained(str(model_path), catalog, category="video games", n_items=10,
                                           max_new_tokens=6, progress=False)
    got = rec.recommend(rows)
    model, tok = rec.model, rec.tokenizer
    ids = catalog.ids
    table = torch.stack([_plain_last_hidden(model, chat_ids(tok, item_prompt(catalog[i], "video games"),
                                                                  ANSWER_MARKER)) for i in ids])
    marker = tok(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
    for r, g in zip(rows, got):
        prompt = chat_ids(tok, record_user_prompt(r, catalog, "video games"))
        seq = list(prompt)
        with torch.no_grad():  # greedy by hand, one token at a time
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                if nxt in rec.stop_ids:
                    break
                seq.append(nxt)
        completion = seq[len(prompt):]
        text = tok.decode(completion, skip_special_tokens=True)
        if ANSWER_MARKER in text:
            keep = next(k for k in range(1, len(completion) + 1) if ANSWER_MARKER in tok.decode(completion[:k]))
            completion = completion[:keep]
        else:
            completion = completion + marker
        h = _plain_last_hidden(model, prompt + completion)
        banned = set(r["history"]) | set(r["seen"])
        s = {i: (torch.dot(h, table[j]) / (h.norm() * table[j].norm())).item() for j, i in enumerate(ids)
             if i not in banned}
        want = sorted(s, key=lambda i: (-s[i], ids.index(i)))[:10]
        assert g.item_ids == want
        assert not banned & set(g.item_ids)
    metrics = evaluate_recommender(rec, rows, catalog, ks=(5, 10), protocol="strict", n_items=10)
    hits = [sum(i in r["groundtruth"] for i in g.item_ids[:10]) for r, g in zip(rows, got)]
    assert metrics["num_samples"] == 5 and metrics["recall@10"] == pytest.approx(sum(hits) / 5)


@pytest.mark.parametrize("path", ["configs/recpo_gemma2_2b.yaml", "configs/recpo_qwen25_3b.yaml",
                                  "configs/tiny/recpo_ml100k.yaml"])
def test_recpo_configs_parse_with_the_released_settings(path):
    from trl import TrlParser

    from conftest import REPO
    from train_recpo import ScriptArguments
    from methods.recpo.trainer import RecPOConfig

    extra = [] if "tiny" in path else ["--use_cpu", "true", "--bf16", "false"]  # parse the GPU file on CPU
    script, cfg = TrlParser((ScriptArguments, RecPOConfig)).parse_args_and_config(
        ["--config", str(REPO / path), *extra])
    assert cfg.reward_weights == [cfg.reward_beta, 1 - cfg.reward_beta] and cfg.reward_beta == 0.05
    assert (cfg.num_generations, cfg.tau, cfg.epsilon, cfg.epsilon_high, cfg.beta) == (4, 0.02, 0.2, 0.28, 0.0)
    if "tiny" not in path:  # the released setup: LoRA r 4 / alpha 128, lr 1e-5 constant, 4 users x G 4 a device
        assert (script.lora_r, script.lora_alpha, cfg.learning_rate, cfg.lr_scheduler_type.value) == \
            (4, 128, 1e-5, "constant")
        assert cfg.per_device_train_batch_size == 4 * cfg.num_generations and cfg.num_train_epochs == 3
        assert cfg.use_vllm and cfg.vllm_mode == "colocate" and cfg.generation_kwargs["stop"] == ["<answer>"]


def test_learned_projection_is_trained_saved_and_used_by_evaluation(tiny_recpo, tmp_path):
    import train_recpo
    from methods.recpo.recommender import PROJECTION_FILE, RecPORecommender
    from preprocess.contract import load_processed
    from methods.recpo.head import make_projection

    eye = make_projection(6, 6).weight
    assert torch.equal(eye, torch.eye(6))
    w = make_projection(6, 3).weight  # (3, 6), orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(3), atol=1e-6, rtol=0)

    _, data, model = tiny_recpo
    out = tmp_path / "proj"
    trainer = train_recpo.main(["--dataset_path", str(data), "--model_name", str(model), "--output_dir", str(out),
                                "--num_generations", "2", "--per_device_train_batch_size", "4",
                                "--max_completion_length", "6", "--learning_rate", "5e-2", "--max_steps", "2",
                                "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                                "--activation_checkpointing", "false", "--dataloader_num_workers", "0", "--seed", "0",
                                "--projection_dim", "16", "--category", "video games"])
    learned = trainer.projection.weight.detach().cpu()
    assert learned.shape == (16, 32) and not torch.allclose(learned, make_projection(32, 16).weight)
    rec = RecPORecommender.from_pretrained(str(out), load_processed(data)[1], category="video games",
                                           max_new_tokens=2, progress=False)
    assert rec.projection is not None and torch.equal(rec.projection.cpu(), learned)
    assert (out / PROJECTION_FILE).is_file()


@pytest.mark.dist
@pytest.mark.multiprocess
def test_projection_is_saved_whole_and_resumes_under_zero3(tiny_recpo, tmp_path):
    """train_recpo.py --projection_dim on 2 gloo processes under DeepSpeed ZeRO-3, where every process holds an
    EMPTY slice of W: the saved recpo_projection.safetensors (checkpoint and final) is the whole trained W -- equal
    to DeepSpeed's own consolidated copy in model.safetensors, moved from its initialisation -- and a resume from
    the checkpoint loads it back and trains on. (Before the gather, the file held a (0,) tensor.) ~50 s."""
    import json

    import yaml
    from safetensors.torch import load_file
    from test_multiprocess import REPO, _launch, _skip_unless_launchable

    from methods.recpo.head import make_projection

    _skip_unless_launchable("cpu_2proc_zero2.yaml")  # gloo and deepspeed
    # ZeRO-3 leaves parameters under stage3_param_persistence_threshold (1e5 elements) whole on every process; this
    # W has 512, a real one (d x d) far more: threshold 0 partitions it as at scale
    ds_config = tmp_path / "zero3.json"
    ds_config.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": True},
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto"}))
    launch = yaml.safe_load((REPO / "configs" / "accelerate" / "cpu_2proc_zero2.yaml").read_text())
    launch.pop("mixed_precision")  # accelerate refuses it beside a deepspeed_config_file
    launch["deepspeed_config"] = {"deepspeed_config_file": str(ds_config), "zero3_init_flag": True,
                                  "deepspeed_multinode_launcher": "standard"}
    zero3 = tmp_path / "cpu_2proc_zero3.yaml"
    zero3.write_text(yaml.safe_dump(launch))
    _, data, model = tiny_recpo
    out = tmp_path / "out"
    common = [str(REPO / "train_recpo.py"), "--dataset_path", str(data), "--model_name", str(model),
              "--output_dir", str(out), "--num_generations", "2", "--per_device_train_batch_size", "2",
              "--max_completion_length", "6", "--learning_rate", "5e-2", "--logging_steps", "1",
              "--lr_scheduler_type", "constant",  # a decayed lr would be restored as 0 by the resume
              "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none",
              "--activation_checkpointing", "false", "--dataloader_num_workers", "0", "--seed", "0",
              "--projection_dim", "16", "--category", "video games"]

    def saved(folder):
        w = load_file(str(folder / "recpo_projection.safetensors"))["weight"]
        assert w.shape == (16, 32), (folder, w.shape)
        torch.testing.assert_close(w, load_file(str(folder / "model.safetensors"))["recpo_projection.weight"],
                                   atol=0, rtol=0)
        return w

    _launch(common + ["--max_steps", "1"], tmp_path, str(zero3))
    first = saved(out / "checkpoint-1")
    assert (first - make_projection(32, 16).weight).abs().max() > 1e-3  # trained
    torch.testing.assert_close(saved(out), first, atol=0, rtol=0)
    _launch(common + ["--max_steps", "2", "--resume_from_checkpoint", "last"], tmp_path, str(zero3))
    assert (out / "checkpoint-2").is_dir()
    assert (saved(out) - first).abs().max() > 1e-4  # resumed from checkpoint-1 and updated again


def test_uniform_negatives_and_logq_in_the_trainer_match_a_slow_reference(tiny_recpo, tmp_path):
    """rec_negatives=in_batch+uniform with logq_correction: the trainer's recommendation loss (joint forward, draw,
    repeat masking, offsets) equals one written by hand from plain forwards: candidates = the distinct targets + the
    drawn items that are no target, logits cos / tau - log(N p_c + K / V)."""
    from modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_recpo[2])
    canned = [tok("Racing fans like speed. <answer> Game X", add_special_tokens=False)["input_ids"],
              tok("I am not sure", add_special_tokens=False)["input_ids"]]
    K = 10
    trainer, tok = _trainer(tiny_recpo, tmp_path, canned=canned, rec_negatives="in_batch+uniform",
                            num_uniform_negatives=K, logq_correction=True, tau=0.05)
    model = trainer.model
    model.train()
    inputs = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]
    out = trainer._generate_and_score_completions(inputs)
    out["rec_weight"] = torch.tensor([0.8, 0.0, 0.0, 1.1])  # two rows train the head (whatever the advantages)
    V, ids = len(trainer.item_ids), trainer.item_ids
    train_targets = trainer.train_dataset["target"]
    p = [(1 + sum(t == ids[v] for t in train_targets)) / (V + len(train_targets)) for v in range(V)]

    negatives = trainer._draw_negatives()
    assert negatives.numel() == K and trainer._negative_draws == 1
    _, _, h_user, h_items, h_neg, uniq, pos = trainer._joint_forward(model, out, negatives)
    got = trainer._rec_loss(h_user, h_items, uniq, pos, out["rec_weight"], h_neg, negatives)

    targets = sorted({trainer.index_of[x["target"]] for x in inputs})
    extra = [n for n in negatives.tolist() if n not in targets]
    assert len(extra) < K, "pick a draw where a negative repeats a target"  # so the masking is used
    cols = targets + extra
    prompts = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"])]
    comp = [row[m.bool()].tolist() for row, m in zip(out["completion_ids"], out["completion_mask"])]
    total = 0.0
    for b, x in enumerate(inputs):  # by hand
        w = out["rec_weight"][b].item()
        if w == 0:
            continue
        h = _plain_last_hidden(model, prompts[b] + comp[b])
        logits = []
        for c in cols:
            v = _plain_last_hidden(model, trainer._item_rows[c])
            logits.append((torch.dot(h, v) / (h.norm() * v.norm())).item() / 0.05 - math.log(4 * p[c] + K / V))
        t = cols.index(trainer.index_of[x["target"]])
        m = max(logits)
        total += w * -(logits[t] - m - math.log(sum(math.exp(z - m) for z in logits)))
    assert got.item() == pytest.approx(total / 4, rel=1e-4)
    # the next micro-step draws anew, deterministically from the seed
    assert not torch.equal(trainer._draw_negatives(), negatives)


def test_negative_options_are_checked():
    from methods.recpo.trainer import RecPOConfig

    common = dict(output_dir="unused", use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(ValueError, match="rec_negatives"):
        RecPOConfig(rec_negatives="uniform", **common)
    with pytest.raises(ValueError, match="num_uniform_negatives"):
        RecPOConfig(rec_negatives="in_batch+uniform", num_uniform_negatives=0, **common)


def test_rec_warmup_steps_train_the_rec_loss_alone_then_reason(tiny_recpo, tmp_path):
    """rec_warmup_steps=1: step 0's rows are the no-reasoning rows (no sampling; the completion is the marker, all
    forced, so the policy term is 0 and every row weighs 1 in the rec loss); step 1 samples and reasons."""
    canned_calls = []
    trainer, tok = _trainer(tiny_recpo, tmp_path, canned=[[5, 6, 7]], max_steps=2, rec_warmup_steps=1)
    sample = trainer._sample

    def counting(prompt_ids, *a, **kw):
        canned_calls.append(trainer.state.global_step)
        return sample(prompt_ids, *a, **kw)

    trainer._sample = counting
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert canned_calls and set(canned_calls) == {1}  # no sampling during the warm-up step
    assert logs[0]["recpo/rec_warmup"] == 1.0 and logs[1]["recpo/rec_warmup"] == 0.0
    assert logs[0]["loss/policy"] == 0.0 and logs[0]["recpo/forced_answer_rate"] == 1.0
    assert logs[0]["loss/rec"] > 0  # the marker alone at step 0; 3 sampled tokens + the marker at step 1
    assert logs[0]["completions/mean_length"] + 3 == logs[1]["completions/mean_length"]
    with pytest.raises(ValueError, match="rec_warmup_steps must be >= 0"):
        _trainer(tiny_recpo, tmp_path, rec_warmup_steps=-1)
