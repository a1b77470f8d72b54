"""Item-aware decoding (modeling/item_decoding.py): the logits processor against a slow per-row loop written from
its rule, and end to end through ``model.generate`` on a tiny model whose titles are single tokens (ML-100k)."""
from __future__ import annotations

import random

import pytest
import torch

from modeling.item_decoding import ItemAwareLogitsProcessor, ItemTokens, item_aware_processor
from references import ref_item_aware_scores


def test_processor_equals_slow_reference_step_by_step():
    rng = random.Random(0)
    V, B, P = 60, 5, 4
    token_of = {i: 20 + i for i in range(30)}  # items 0..29 -> tokens 20..49; tokens 0..19 and 50..59 are text
    items = ItemTokens(token_of, V)
    seen = [rng.sample(range(30), k=rng.randint(0, 6)) + [999] for _ in range(B)]  # 999: not in the catalog
    proc = item_aware_processor(items, seen)
    banned_tokens = [set(items.tokens(s)) for s in seen]
    ids = torch.randint(0, V, (B, P))
    for step in range(12):
        scores = torch.randn(B, V)
        got = proc(ids, scores)
        want = ref_item_aware_scores(ids, scores, P, set(token_of.values()), banned_tokens)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), step
        assert torch.equal(got[~torch.isinf(got)], want[~torch.isinf(want)])
        if step > 2:  # something is banned by generation, not only by seen
            assert any(torch.isinf(got[b, t]) for b in range(B) for t in ids[b, P:].tolist() if 20 <= t < 50)
        ids = torch.cat([ids, torch.randint(0, V, (B, 1))], dim=1)


def test_processor_bans_blank_lines_at_a_line_start():
    """At the first completion token and after a token that ends a line, whitespace-only tokens are banned as
    well (a banned item's mass must not become blank lines); elsewhere they are allowed. Against a slow loop."""
    rng = random.Random(1)
    V, B, P = 40, 6, 3
    token_of = {i: 20 + i for i in range(10)}
    blank, line_end = {0, 1, 2}, {1, 5}  # 1: "\n" (blank and ends a line), 5: "x\n", 0 / 2: spaces
    items = ItemTokens(token_of, V, blank, line_end)
    seen = [rng.sample(range(10), k=2) for _ in range(B)]
    proc = item_aware_processor(items, seen)
    ids = torch.randint(0, V, (B, P))
    starts = 0
    for step in range(15):
        scores = torch.randn(B, V)
        got = proc(ids, scores)
        want = ref_item_aware_scores(ids, scores, P, set(token_of.values()), [set(items.tokens(s)) for s in seen])
        for b in range(B):
            gen = ids[b, P:].tolist()
            if not gen or gen[-1] in line_end:
                starts += 1
                for v in blank:
                    want[b, v] = float("-inf")
        assert torch.equal(torch.isinf(got), torch.isinf(want)), step
        ids = torch.cat([ids, torch.tensor([[rng.choice([1, 5, 0, 7, 20 + rng.randrange(10)])] for _ in range(B)])], 1)
    assert starts > B  # line starts happened after the first step too


def test_item_tokens_know_the_blank_and_line_end_tokens(unit_model):
    from preprocess.contract import catalog_items_of

    model, tok, dd, catalog = unit_model
    items = ItemTokens.from_catalog(tok, catalog_items_of(catalog), model.config.vocab_size)
    (newline,) = tok.encode("\n", add_special_tokens=False)
    assert items.is_blank[newline] and items.ends_line[newline]
    assert not (items.is_blank & items.is_item).any()
    assert not items.is_blank[tok.eos_token_id]  # EOS stays allowed at a line start


def test_processor_refuses_a_row_count_mismatch():
    proc = ItemAwareLogitsProcessor(ItemTokens({0: 3}, 8), [[3], []])
    with pytest.raises(ValueError, match="3 rows but banned items for 2"):
        proc(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 8))


def test_item_tokens_need_single_token_titles():
    from modeling.tiny import build_tokenizer

    tok = build_tokenizer("bpe", None, vocab_size=600)
    with pytest.raises(ValueError, match="2 of 2 titles are several tokens.*--catalog_tokens"):
        ItemTokens.from_catalog(tok, [{"id": 0, "title": "Toy Story", "year": 1995},
                                      {"id": 1, "title": "Heat", "year": 1995}])


@pytest.fixture(scope="module")
def unit_model(tmp_path_factory):
    from modeling.tiny import build_tiny_model
    from preprocess import movielens
    from preprocess.contract import load_processed

    root = tmp_path_factory.mktemp("itemdec")
    movielens.build(None, root / "ml", progress=False, quiet=True, max_samples_per_split=40)
    model, tok = build_tiny_model(root / "m", dataset_path=str(root / "ml"), vocab_size=800, catalog_tokens=True)
    dd, catalog = load_processed(root / "ml")
    return model, tok, dd, catalog


def test_generate_never_repeats_nor_recommends_seen_items(unit_model):
    """A random-init model's greedy lists repeat titles; with the processor no list holds a repeat or a seen item,
    read back through the one matcher."""
    from transformers import LogitsProcessorList

    from preprocess.contract import catalog_items_of
    from rewards.judge import match_texts

    model, tok, dd, catalog = unit_model
    items = ItemTokens.from_catalog(tok, catalog_items_of(catalog), model.config.vocab_size)
    rows = dd["validation"].select(range(8))
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    tok.padding_side = "left"
    batch = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    # a random model rarely writes a list on its own: push it to alternate item token / newline, so its greedy
    # lists are item lines (and, being greedy over a random model, repeat themselves)
    is_item = items.is_item[: model.config.vocab_size]
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1

    def biased(ids, scores):
        after_item = is_item[ids[:, -1]]
        scores = scores.clone()
        scores[after_item, newline[0]] += 100.0
        scores[~after_item] += 8.0 * is_item.to(scores.dtype)
        return scores

    def run(extra):
        out = model.generate(**batch, max_new_tokens=30, do_sample=False,
                             logits_processor=LogitsProcessorList([biased, *extra]))
        return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    plain = match_texts(run([]), catalog, require_year=True)
    aware = match_texts(run([item_aware_processor(items, rows["seen"])]), catalog, require_year=True)
    assert any(len(ids) != len(set(ids)) for ids in plain)  # the test can fail: greedy repeats here
    for ids, seen in zip(aware, rows["seen"]):
        ids = [i for i in ids if i is not None]
        assert len(ids) >= 5 and len(ids) == len(set(ids)) and not set(ids) & set(seen), (ids, seen)


def test_rank_grpo_rollouts_use_item_aware_decoding(unit_model, tmp_path, monkeypatch):
    """RecRLConfig.item_aware_decoding: every sampled rollout of a Rank-GRPO step holds no repeated item token and no
    seen item token (the item tokens are biased up, so without the processor 24 sampled tokens over a few hundred
    titles would repeat or hit the user's seen items: checked on the same trainer with the option off)."""
    from datasets import Dataset

    from preprocess.contract import catalog_items_of
    from trainers.base import RecRLTrainer
    from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

    model, tok, dd, catalog = unit_model
    items = ItemTokens.from_catalog(tok, catalog_items_of(catalog), model.config.vocab_size)
    rows = dd["train"].select(range(4))
    seen_pool = sorted({t for s in rows["seen"] for t in items.tokens(s)})
    # a strong bias on a few item tokens, most of them seen by the users: plain sampling keeps emitting them
    favourites = seen_pool[:20] + sorted(set(items.token_of.values()) - set(seen_pool))[:5]
    recorded = []
    plain_single_turn = RecRLTrainer._generate_single_turn

    def spy(self, prompt_ids, *a, **kw):
        out = plain_single_turn(self, prompt_ids, *a, **kw)
        recorded.append((list(self._rollout_seen or [[]] * len(prompt_ids)), out[0]))
        return out

    monkeypatch.setattr(RecRLTrainer, "_generate_single_turn", spy)

    def run(aware: bool):
        recorded.clear()
        cfg = RankGRPOConfig(output_dir=str(tmp_path / f"out{aware}"), use_cpu=True, bf16=False, report_to="none",
                             save_strategy="no", per_device_train_batch_size=4, num_generations=2,
                             max_completion_length=24, beta=0.0, gradient_checkpointing=False, logging_steps=1,
                             seed=0, dataloader_num_workers=0, max_steps=1, n_items=5, item_aware_decoding=aware,
                             generation_kwargs={"sequence_bias": [[[t], 12.0] for t in favourites]})
        trainer = RankGRPOTrainer(model=model, args=cfg, processing_class=tok, catalog=catalog,
                                  train_dataset=Dataset.from_list([dict(r) for r in rows]))
        trainer.train()
        assert recorded
        bad = 0
        for seen_rows, completions in recorded:
            for seen, ids in zip(seen_rows, completions):
                its = [t for t in ids if bool(items.is_item[t])]
                bad += len(its) != len(set(its)) or bool(set(its) & set(items.tokens(seen)))
        return bad

    assert run(aware=True) == 0
    assert run(aware=False) > 0  # the same rollouts without the processor repeat / recommend seen items


def test_eval_test_item_aware_decoding_end_to_end(unit_model, tmp_path):
    """eval_test.py --decoding item_aware: written to eval_test_item_aware/ beside plain greedy's eval_test/, named
    in metrics.json; its lists hold no repeat and no seen item while plain greedy's repeat. The saved model's
    generation config biases 30 item tokens up and a newline after each of them, so greedy writes item lines."""
    import json as _json

    import eval_test
    from preprocess.contract import catalog_items_of

    model, tok, dd, catalog = unit_model
    items = ItemTokens.from_catalog(tok, catalog_items_of(catalog), model.config.vocab_size)
    newline = tok.encode("\n", add_special_tokens=False)[0]
    favourites = sorted(items.token_of.values())[:30]
    model_dir = tmp_path / "biased"
    model.generation_config.sequence_bias = [[[t], 12.0] for t in favourites] + \
        [[[t, newline], 30.0] for t in favourites]
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    model.generation_config.sequence_bias = None
    from preprocess import movielens
    from preprocess.contract import load_processed

    movielens.build(None, tmp_path / "ml", progress=False, quiet=True, max_samples_per_split=40)
    common = ["--dataset_path", str(tmp_path / "ml"), "--model_path", str(model_dir), "--backend", "hf",
              "--max_samples", "6", "--max_new_tokens", "24", "--no_progress", "--n_items", "10"]
    eval_test.main(common)
    eval_test.main([*common, "--decoding", "item_aware"])
    plain = _json.loads((model_dir / "eval_test" / "metrics.json").read_text())
    aware = _json.loads((model_dir / "eval_test_item_aware" / "metrics.json").read_text())
    assert _json.dumps(plain).count('"item_aware"') == 0 and _json.dumps(aware).count('"item_aware"') >= 1

    def lists(folder):
        rows = [_json.loads(x) for x in (model_dir / folder / "predictions.jsonl").read_text().splitlines()]
        return [[i for i in r["item_ids"] if i is not None] for r in rows], rows

    plain_ids, _ = lists("eval_test")
    aware_ids, aware_rows = lists("eval_test_item_aware")
    assert any(len(x) != len(set(x)) for x in plain_ids)
    seen = {r["sample_id"]: r["seen"] for r in load_processed(tmp_path / "ml")[0]["test"]}
    for ids, row in zip(aware_ids, aware_rows):
        assert len(ids) >= 5 and len(ids) == len(set(ids)), ids
        assert not set(ids) & set(seen[row["sample_id"]]), row["sample_id"]


def test_item_aware_decoding_refused_where_it_does_not_apply(tmp_path):
    import eval_test

    with pytest.raises(SystemExit, match="--decoding item_aware applies to a text model"):
        eval_test.main(["--dataset_path", str(tmp_path), "--baseline", "popularity", "--decoding", "item_aware"])


def test_item_aware_rollouts_refused_where_they_do_not_apply(unit_model, tmp_path):
    """RecPO's completion is reasoning, not the list: the option is refused there (and with vLLM) before any
    model work, naming the trainer."""
    from datasets import Dataset

    from methods.recpo.trainer import RecPOConfig, RecPOTrainer

    model, tok, dd, catalog = unit_model
    cfg = RecPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                      per_device_train_batch_size=2, num_generations=2, max_steps=1, item_aware_decoding=True,
                      gradient_checkpointing=False, dataloader_num_workers=0)
    with pytest.raises(ValueError, match="not RecPOTrainer"):
        RecPOTrainer(model=model, args=cfg, processing_class=tok, catalog=catalog,
                     train_dataset=Dataset.from_list([dict(r) for r in dd["train"].select(range(2))]))


def test_item_aware_decoding_on_vllm_stops_or_falls_back_to_hf(unit_model, tmp_path, monkeypatch, capsys):
    """The vLLM twin of item-aware decoding is not built: an explicit --backend vllm stops with one line before any
    data or model work; --backend auto that would pick vLLM (a GPU with vllm installed) says so and uses hf."""
    import eval_test
    from evaluation import backends

    model, tok, dd, catalog = unit_model
    model_dir = tmp_path / "m"
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    common = ["--dataset_path", str(tmp_path / "absent"), "--model_path", str(model_dir), "--decoding", "item_aware"]
    with pytest.raises(SystemExit, match="hf backend only.*--backend hf"):
        eval_test.main([*common, "--backend", "vllm"])
    monkeypatch.setattr(backends, "resolve_backend_name", lambda name: "vllm")
    with pytest.raises(FileNotFoundError):  # past the backend choice: the (absent) data set is read next
        eval_test.main([*common, "--backend", "auto"])
    assert "using the hf backend" in capsys.readouterr().err


def test_freeze_token_embeddings_leaves_the_embeddings_out_of_the_optimizer(unit_model, tmp_path):
    """RecRLConfig.freeze_token_embeddings: the (tied) token embedding matrix gets requires_grad False before the
    optimizer is built, so the optimizer holds every other weight and not it; without the option it holds it too."""
    import copy

    from datasets import Dataset

    from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer
    from trainers.base import freeze_token_embeddings

    model, tok, dd, catalog = unit_model
    rows = Dataset.from_list([dict(r) for r in dd["train"].select(range(4))])

    def optimized(freeze: bool):
        m = copy.deepcopy(model)
        cfg = RankGRPOConfig(output_dir=str(tmp_path / f"out{freeze}"), use_cpu=True, bf16=False, report_to="none",
                             save_strategy="no", per_device_train_batch_size=4, num_generations=2,
                             max_completion_length=16, beta=0.0, gradient_checkpointing=False, dataloader_num_workers=0,
                             max_steps=1, n_items=5, freeze_token_embeddings=freeze)
        trainer = RankGRPOTrainer(model=m, args=cfg, processing_class=tok, catalog=catalog, train_dataset=rows)
        held = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
        emb = trainer.model.get_input_embeddings().weight
        others = [p for p in trainer.model.parameters() if p is not emb]
        return id(emb) in held, all(id(p) in held for p in others), emb.requires_grad

    assert optimized(freeze=True) == (False, True, False)
    assert optimized(freeze=False) == (True, True, True)
    m = copy.deepcopy(model)
    n_emb = m.get_input_embeddings().weight.numel()
    tied = m.get_output_embeddings().weight is m.get_input_embeddings().weight
    assert freeze_token_embeddings(m) == (n_emb if tied else n_emb + m.get_output_embeddings().weight.numel())
