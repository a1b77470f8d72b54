"""The TRM (retrieval/): model formulas against slow references, retrieval rules, save/load, training, the
preference input, the seam recommender, and (slow, real ML-100k) that it beats popularity.

Fast tests use a stand-in text encoder (hashed bag of words -> a fixed random projection, normalised) with the
interface of `modeling.text_encoder.TextEncoder`, so nothing loads MiniLM here."""
from __future__ import annotations

import json
import math
import re
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.recommenders import TRMRecommender
from retrieval.model import TRM, TRMConfig
from retrieval.retriever import TRMRetriever
from retrieval.text import encode_texts, item_text
from retrieval.training import PreferenceBank, next_item_loss, next_item_samples, retrieve_split, score_split

from conftest import REPO


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster (and far faster on a shared machine); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class HashingEncoder:
    """Deterministic stand-in encoder: each word adds a fixed random vector; rows L2-normalised."""

    name = "test-hashing-encoder"

    def __init__(self, dim: int = 48, buckets: int = 2048, seed: int = 0):
        self.dim, self.buckets = dim, buckets
        self.projection = np.random.default_rng(seed).standard_normal((buckets, dim)).astype(np.float32)
        self.calls = 0

    def encode(self, texts, batch_size: int = 64):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i] += self.projection[zlib.crc32(word.encode()) % self.buckets]
            if not out[i].any():
                out[i] = self.projection[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)


GENRES = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]


def toy_catalog(n: int = 40) -> list[dict]:
    return [{"id": 100 + i, "title": f"Item {i} {GENRES[i % 6]} story", "year": 1990 + i % 10,
             "genres": [GENRES[i % 6]]} for i in range(n)]


def tiny_retriever(n: int = 40, seed: int = 0, **config) -> TRMRetriever:
    config = {"hidden_size": 16, "num_heads": 2, "ffn_size": 32, "num_experts": 4, "max_history": 6,
              "dropout": 0.0, **config}
    return TRMRetriever.build(toy_catalog(n), HashingEncoder(), seed=seed, **config)


# ------------------------------------------------------------------------------------------------ formulas
def test_moe_gate_sums_to_one_and_adaptor_matches_a_loop():
    model = tiny_retriever().model
    text = torch.randn(7, model.config.text_dim)
    gate = model.adaptor.gate_probs(text)
    assert gate.shape == (7, model.config.num_experts)
    assert torch.allclose(gate.sum(-1), torch.ones(7), atol=1e-6)
    assert (gate > 0).all()
    # slow reference: softmax of the gate logits, then a weighted sum of each expert's affine map, one row at a time
    a = model.adaptor
    for row in range(7):
        logits = a.gate.weight @ text[row] + a.gate.bias
        g = torch.exp(logits - logits.max())
        g = g / g.sum()
        expected = sum(g[e] * (text[row] @ a.expert_weight[e] + a.expert_bias[e]) for e in range(len(g)))
        assert torch.allclose(a(text[row: row + 1])[0], expected, atol=1e-5)


def test_user_vector_is_layernorm_of_h_last_plus_adaptor():
    model = tiny_retriever().model.eval()
    rows = torch.tensor([[0, 0, 0, 3, 5, 9], [0, 0, 0, 0, 0, 0]])
    pref = torch.randn(2, model.config.text_dim)
    with torch.no_grad():
        h = model.history_state(rows)
        u = model.user_vectors(rows, pref, torch.tensor([True, True]))
        u_none = model.user_vectors(rows, pref, torch.tensor([False, True]))
        expected = F.layer_norm(h + model.adaptor(pref), (model.config.hidden_size,),
                                model.user_norm.weight, model.user_norm.bias)
    assert torch.allclose(u, expected, atol=1e-5)
    assert torch.allclose(u_none[0], model.user_norm(h[0]), atol=1e-5)  # no preference: no MoE term
    assert torch.equal(h[1], torch.zeros_like(h[1]))  # empty history: h_last = 0 (not NaN)
    assert torch.isfinite(u).all()


def test_history_state_ignores_what_padding_would_hold():
    """Left padding is masked: a history's state is the same whatever the padded slots' item vectors are."""
    model = tiny_retriever().model.eval()
    rows = torch.tensor([[0, 0, 0, 3, 5, 9]])
    with torch.no_grad():
        items = model.item_vectors()
        changed = items.clone()
        changed[0] = torch.randn_like(changed[0]) * 10
        assert torch.allclose(model.history_state(rows, items), model.history_state(rows, changed), atol=1e-6)


def test_next_item_loss_matches_a_per_sample_reference():
    retriever = tiny_retriever()
    model = retriever.model.eval()
    rows = torch.tensor([[0, 0, 0, 3, 5, 9], [0, 0, 2, 2, 7, 11], [0, 0, 0, 0, 1, 4]])
    targets = torch.tensor([12, 7, 30])  # row 1 repeats a history item as its target: it stays a class
    pref = torch.randn(3, model.config.text_dim)
    has = torch.tensor([True, False, True])
    with torch.no_grad():
        loss = next_item_loss(retriever, rows, targets, pref, has)
        users = model.user_vectors(rows, pref, has)
        items = model.item_vectors()
    total = 0.0
    for b in range(3):
        history = set(rows[b].tolist()) - {targets[b].item()}
        classes = [r for r in range(1, model.config.num_items + 1) if r not in history]
        logit = {r: float(F.cosine_similarity(users[b], items[r], dim=0)) / model.config.temperature
                 for r in classes}
        log_z = math.log(sum(math.exp(v) for v in logit.values()))
        total += log_z - logit[targets[b].item()]
    assert loss.item() == pytest.approx(total / 3, rel=1e-4)


# ------------------------------------------------------------------------------------------------ retrieval
def test_retrieve_shapes_order_and_cosine_range():
    retriever = tiny_retriever()
    histories = [[100, 101, 102], [105], []]
    ids, scores = retriever.retrieve(histories, ["an action story", None, ""], k=10)
    assert ids.shape == (3, 10) and ids.dtype == np.int64
    assert scores.shape == (3, 10) and scores.dtype == np.float32
    assert set(ids.ravel().tolist()) <= set(retriever.catalog_ids.tolist())
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first
    assert all(len(set(row)) == 10 for row in ids.tolist())
    full = retriever.score(histories)
    finite = full[torch.isfinite(full)]
    assert finite.numel() > 0 and finite.min() >= -1 - 1e-5 and finite.max() <= 1 + 1e-5


def test_history_seen_and_aliases_are_never_retrieved():
    catalog = toy_catalog(30)
    catalog[4]["duplicate_of"] = 100  # an alias of item 100
    retriever = TRMRetriever.build(catalog, HashingEncoder(), hidden_size=16, num_heads=2, ffn_size=32,
                                   num_experts=4, max_history=4)
    history = [100, 101, 102, 103, 105, 106, 107]  # longer than max_history: ALL of it is excluded
    seen = [110, 111]
    k = 30 - len(history) - len(seen) - 1  # every item that is left
    ids, scores = retriever.retrieve([history], k=k, exclude=[seen])
    assert np.isfinite(scores).all()
    assert not set(ids[0].tolist()) & (set(history) | set(seen) | {104})
    with pytest.raises(ValueError, match="more than the items left"):
        retriever.retrieve([history], k=k + 1, exclude=[seen])


def test_retrieve_batched_equals_one_by_one():
    retriever = tiny_retriever()
    histories = [[100, 101, 102], [105, 120, 121, 122, 123, 124, 125, 126], [], [139]]
    prefs = ["sci-fi", None, "a horror story", ""]
    ids, scores = retriever.retrieve(histories, prefs, k=8)
    for b in range(len(histories)):
        one_ids, one_scores = retriever.retrieve([histories[b]], [prefs[b]], k=8)
        assert one_ids[0].tolist() == ids[b].tolist()
        np.testing.assert_allclose(one_scores[0], scores[b], atol=1e-5)


def test_preference_embeddings_equal_preference_texts():
    retriever = tiny_retriever()
    texts = ["romance", None]
    emb = np.zeros((2, retriever.config.text_dim), np.float32)
    emb[0] = retriever.encoder.encode(["romance"])[0]
    a = retriever.retrieve([[100], [101]], texts, k=5)
    b = retriever.retrieve([[100], [101]], preference_embeddings=emb, k=5)
    assert a[0].tolist() == b[0].tolist()
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_bad_inputs_raise_clear_errors(tmp_path):
    retriever = tiny_retriever()
    with pytest.raises(ValueError, match="history 1: item id 9999"):
        retriever.retrieve([[100], [9999]], k=3)
    with pytest.raises(TypeError, match="list of id lists"):
        retriever.retrieve([100, 101], k=3)
    with pytest.raises(ValueError, match="2 preference texts for 1 histories"):
        retriever.retrieve([[100]], ["a", "b"], k=3)
    no_encoder = TRMRetriever(retriever.model, retriever.catalog_ids, encoder=None, text_encoder_name="x")
    with pytest.raises(ValueError, match="no text encoder"):
        no_encoder.retrieve([[100]], ["comedy"], k=3)
    no_encoder.retrieve([[100]], [""], k=3)  # an empty preference needs no encoder
    with pytest.raises(FileNotFoundError, match="not a TRM checkpoint"):
        TRMRetriever.load(tmp_path)
    with pytest.raises(ValueError, match="divisible"):
        TRMConfig(num_items=3, text_dim=4, hidden_size=10, num_heads=3)


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    retriever = tiny_retriever()
    with torch.no_grad():  # move the weights off their init so the check means something
        for p in retriever.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    retriever.refresh()
    retriever.save(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "trm_config.json").read_text())
    assert saved["text_encoder"] == "test-hashing-encoder" and len(saved["catalog_ids"]) == 40
    loaded = TRMRetriever.load(tmp_path / "ckpt", encoder=HashingEncoder())
    histories, prefs = [[100, 101], [130, 131, 132], []], ["drama", None, "comedy"]
    assert torch.equal(retriever.score(histories, prefs), loaded.score(histories, prefs))
    np.testing.assert_array_equal(retriever.item_embeddings([100, 120]), loaded.item_embeddings([100, 120]))
    assert not any(p.suffix in (".pkl", ".pt", ".bin") for p in (tmp_path / "ckpt").iterdir())


def test_item_text_embeddings_are_frozen_and_cached(tmp_path):
    encoder = HashingEncoder()
    texts = [item_text(it) for it in toy_catalog(10)]
    first = encode_texts(encoder, texts, tmp_path)
    second = encode_texts(encoder, texts, tmp_path)
    assert encoder.calls == 1 and np.array_equal(first, second)
    retriever = tiny_retriever()
    names = [n for n, _ in retriever.model.named_parameters()]
    assert "item_text" not in names and all("item_text" not in n for n in names)


# ------------------------------------------------------------------------------------------------ training
def _toy_sequences(n_samples: int, n_items: int = 40, seed: int = 0):
    """Users walk the catalog in steps of 1 from a random start: the next item is learnable from the last."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_samples):
        start, length = int(rng.integers(n_items)), int(rng.integers(2, 7))
        seq = [100 + (start + j) % n_items for j in range(length + 1)]
        rows.append({"history": seq[:-1], "target": seq[-1], "groundtruth": [seq[-1]], "seen": seq[:-1]})
    return {key: [r[key] for r in rows] for key in rows[0]}


def _train(retriever, samples, steps: int, bank=None, prob: float = 0.0, lr: float = 3e-3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(retriever.model.parameters(), lr=lr)
    retriever.model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(samples), (64,), generator=gen)
        pref = has = None
        if bank is not None:
            pref, has = bank.sample(samples.target_rows[idx], prob, gen)
        loss = next_item_loss(retriever, samples.history_rows[idx], samples.target_rows[idx], pref, has)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    retriever.model.eval()
    retriever.refresh()
    return losses


def test_short_training_lowers_the_loss_and_learns_the_sequence():
    torch.manual_seed(0)
    retriever = tiny_retriever()
    data = _toy_sequences(400)
    samples = next_item_samples(data, retriever)
    assert len(samples) == 400 and samples.history_rows.shape == (400, 6)
    losses = _train(retriever, samples, 100)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    test = _toy_sequences(100, seed=1)
    metrics = score_split(retrieve_split(retriever, test, k=10), test, ks=(10,), n_items=10)
    assert metrics["recall@10"] > 0.5  # random would be ~10 / 35


def test_relevant_preference_text_raises_the_target_rank():
    """Trained with the proxy preference (the target's own text, or part of it), a preference that describes
    the target moves it up on average; an unrelated item's text does not."""
    torch.manual_seed(0)
    catalog = toy_catalog()
    encoder = HashingEncoder()
    retriever = TRMRetriever.build(catalog, encoder, hidden_size=16, num_heads=2, ffn_size=32, num_experts=4,
                                   max_history=6, dropout=0.0)
    rng = np.random.default_rng(3)
    data = {"history": [], "target": []}
    for _ in range(600):  # histories say little about the target here: the preference must carry it
        data["history"].append([100 + int(i) for i in rng.choice(40, size=3, replace=False)])
        data["target"].append(100 + int(rng.integers(40)))
    samples = next_item_samples(data, retriever)
    bank = PreferenceBank.build(retriever, catalog, encoder, variants=2, word_keep=0.5)
    _train(retriever, samples, 200, bank=bank, prob=0.5, lr=1e-2)

    by_id = {it["id"]: it for it in catalog}
    histories, targets = data["history"][:100], data["target"][:100]

    def mean_rank(prefs):
        scores = retriever.score(histories, prefs)
        ranks = [(scores[b] > scores[b, retriever.row_of[t]]).sum().item() for b, t in enumerate(targets)]
        return float(np.mean(ranks))

    no_pref = mean_rank(None)
    relevant = mean_rank([f"{by_id[t]['title']}" for t in targets])
    unrelated = mean_rank([by_id[100 + (t - 100 + 17) % 40]["title"] for t in targets])
    print(f'mean target rank: no preference {no_pref:.1f}, relevant {relevant:.1f}, unrelated {unrelated:.1f}')
    assert relevant < 0.5 * no_pref, (relevant, no_pref)
    assert relevant < unrelated, (relevant, unrelated)


def test_trm_recommender_through_the_evaluation_seam(tmp_path):
    from evaluation.evaluate import evaluate_recommender
    from evaluation.recommenders import Recommendation, Recommender
    from rewards.catalog import Catalog

    retriever = tiny_retriever()
    rec = TRMRecommender(retriever, n_items=10)
    assert isinstance(rec, Recommender)
    data = _toy_sequences(20)
    rows = [{k: data[k][i] for k in data} for i in range(20)]
    out = rec.recommend(rows)
    assert len(out) == 20 and all(isinstance(r, Recommendation) and len(r.item_ids) == 10 for r in out)
    assert all(not set(r.item_ids) & set(row["seen"]) for r, row in zip(out, rows))
    metrics = evaluate_recommender(rec, rows, Catalog(toy_catalog()), tmp_path, ks=(5, 10), protocol="strict",
                                   n_items=10)
    expected = score_split([r.item_ids for r in out], data, ks=(5, 10), n_items=10)
    assert metrics["recall@10"] == pytest.approx(expected["recall@10"])
    assert (tmp_path / "metrics.json").is_file()
    retriever.save(tmp_path / "ckpt")
    again = TRMRecommender.from_pretrained(tmp_path / "ckpt", n_items=10).recommend(rows)
    assert [r.item_ids for r in again] == [r.item_ids for r in out]


# ------------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    pytest.importorskip("recbole", reason="ML-100k comes from the recbole wheel (INSTALL.sh)")
    from preprocess import movielens

    out = tmp_path_factory.mktemp("ml100k")
    # a seeded 8,000-row sample per split keeps the build short; popularity is counted on the same train rows
    movielens.build(None, out, max_samples_per_split=8000, seed=0, progress=False, quiet=True)
    return out


def test_trm_beats_popularity_on_ml100k_test(ml100k, tmp_path):
    """train_trm.py end to end (stand-in encoder, a short run of the default architecture): its test Recall@10
    beats the popularity baseline's on the same rows, both from `rewards.metrics`."""
    sys.path.insert(0, str(REPO))
    import train_trm

    results = train_trm.main(["--dataset_path", str(ml100k), "--output_dir", str(tmp_path / "trm"),
                              "--max_steps", "40", "--batch_size", "128", "--max_eval_samples", "1000",
                              "--eval_splits", "test", "--embedding_cache_dir", str(tmp_path / "cache"),
                              "--no_progress", "--log_every", "10"], encoder=HashingEncoder(dim=128))
    losses = results["train_losses"]
    assert np.mean(losses[-10:]) < np.mean(losses[:5])
    metrics = json.loads((tmp_path / "trm" / "metrics_test.json").read_text())
    assert metrics["num_samples"] == 1000 and metrics["protocol"] == "strict"
    popularity = metrics["baselines"]["popularity"]
    assert metrics["recall@10"] > popularity["recall@10"] > 0, (metrics["recall@10"], popularity["recall@10"])
    loaded = TRMRetriever.load(tmp_path / "trm")
    assert loaded.config.hidden_size == 128 and loaded.config.num_experts == 8 and loaded.config.num_layers == 2


def test_encoder_layers_match_torch_transformer_encoder_layer():
    """The hand-written pre-norm layers give what `nn.TransformerEncoderLayer(norm_first=True, gelu)` gives with
    the same weights; the last layer's `last_only` shortcut gives the last position of the full output."""
    from torch import nn

    torch.manual_seed(0)
    model = tiny_retriever(max_history=6, num_layers=2).model.eval()
    d, H = model.config.hidden_size, model.config.num_heads
    x = torch.randn(3, 6, d)
    padding = torch.tensor([[True, True, False, False, False, False], [False] * 6, [True] * 5 + [False]])
    ref = x
    with torch.no_grad():
        for layer in model.layers:
            torch_layer = nn.TransformerEncoderLayer(d, H, model.config.ffn_size, 0.0, activation="gelu",
                                                     batch_first=True, norm_first=True).eval()
            torch_layer.self_attn.in_proj_weight.copy_(layer.qkv.weight)
            torch_layer.self_attn.in_proj_bias.copy_(layer.qkv.bias)
            torch_layer.self_attn.out_proj.weight.copy_(layer.attn_out.weight)
            torch_layer.self_attn.out_proj.bias.copy_(layer.attn_out.bias)
            for mine, theirs in ((layer.attn_norm, torch_layer.norm1), (layer.ffn_norm, torch_layer.norm2),
                                 (layer.ffn_in, torch_layer.linear1), (layer.ffn_out, torch_layer.linear2)):
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
            expected = torch_layer(ref, src_key_padding_mask=padding)
            full = layer(ref, padding)
            last = layer(ref, padding, last_only=True)
            keep = ~padding  # outputs at padded positions are never read
            assert torch.allclose(full[keep], expected[keep], atol=1e-5)
            assert torch.allclose(last[:, 0], expected[:, -1], atol=1e-5)
            ref = expected
