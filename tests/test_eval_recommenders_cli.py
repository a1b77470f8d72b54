"""eval_test.py evaluates every kind of recommender through the one seam: the TRM alone and the DeepRec loop (a tiny
random LLM + a TRM trained by train_trm.py with the real offline text encoder on a small catalog), scored on the next item only
(--target_only, DeepRec's protocol) and written to the same metrics.json / predictions.jsonl."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def trm_setup(tmp_path_factory):
    pytest.importorskip("sentence_transformers", reason="the offline text encoder is installed by INSTALL.sh")
    import train_trm
    from modeling.tiny import build_tiny_model

    import random

    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

    root = tmp_path_factory.mktemp("eval_cli")
    genres = ["space opera", "heist thriller", "romantic comedy", "monster horror", "animated musical"]
    catalog = [{"id": i, "title": f"Film {i} of the {genres[i % 5]}", "year": 1980 + i, "genres": [genres[i % 5]]}
               for i in range(40)]
    rng = random.Random(0)
    splits = {"train": [], "validation": [], "test": []}
    for u in range(60):  # users who stay within one genre: a sequence the TRM can learn
        g = u % 5
        items = rng.sample([i for i in range(40) if i % 5 == g], 7)
        split = "train" if u < 40 else ("validation" if u < 50 else "test")
        hist, tgt = items[:6], items[6]
        splits[split].append(dict(
            sample_id=f"u{u}", prompt=build_prompt("history", n_items=10),
            completion=format_completion([f"{catalog[tgt]['title']} ({catalog[tgt]['year']})"]),
            groundtruth=[tgt], seen=hist, history=hist, target=tgt, timestamp=None))
    data = root / "data"
    save_processed(data, splits, catalog, {"name": "genres"}, quiet=True, progress=False)
    train_trm.main(["--dataset_path", str(data), "--output_dir", str(root / "trm"), "--max_steps", "20",
                    "--batch_size", "16", "--eval_splits", "test", "--embedding_cache_dir", str(root / "cache"),
                    "--no_progress"])
    llm = root / "llm"
    build_tiny_model(llm, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    return root, data, root / "trm", llm


def test_eval_test_scores_the_trm_alone_on_the_next_item(trm_setup):
    import eval_test

    root, data, trm, _ = trm_setup
    out = root / "eval_trm"
    metrics = eval_test.main(["--recommender", "trm", "--model_path", str(trm), "--dataset_path", str(data),
                              "--target_only", "--ks", "1", "5", "10", "--n_items", "10",
                              "--protocol", "strict", "--output_dir", str(out)])
    assert metrics["num_samples"] == 10 and metrics["groundtruth"] == "target" and metrics["recommender"] == "trm"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["item_ids"]) == 10 for r in rows)
    # one target: recall@10 is the share of rows whose target is in the top 10
    from preprocess.contract import load_processed

    test = load_processed(data)[0]["test"]
    hit = [test[r["index"]]["target"] in r["item_ids"] for r in rows]
    assert metrics["recall@10"] == pytest.approx(sum(hit) / len(hit))


def test_eval_test_runs_the_deeprec_loop_with_a_trained_trm(trm_setup):
    import eval_test

    root, data, trm, llm = trm_setup
    out = root / "eval_deeprec"
    metrics = eval_test.main(["--recommender", "deeprec", "--model_path", str(llm), "--trm_path", str(trm),
                              "--dataset_path", str(data), "--max_samples", "3", "--target_only", "--max_calls", "2",
                              "--max_new_tokens", "24", "--ks", "1", "5", "10", "--n_items", "10",
                              "--protocol", "strict", "--output_dir", str(out)])
    assert metrics["num_samples"] == 3 and metrics["recommender"] == "deeprec"
    assert "deeprec/calls_per_episode" in metrics and "deeprec/valid_format_rate" in metrics
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("completion" in r for r in rows)  # the whole trajectory


def test_eval_test_deeprec_episode_budgets_reach_the_loop(trm_setup, monkeypatch):
    """--retrieve_k / --max_turn_tokens / --max_calls are the episode settings the loop runs with (a model trained
    with 10-item calls must be evaluated with 10-item calls), and are recorded in metrics.json."""
    import eval_test
    import methods.deeprec.rollout as deeprec

    seen = []
    real = deeprec.run_episodes
    monkeypatch.setattr(deeprec, "run_episodes", lambda *a, **kw: seen.append(a[-1]) or real(*a, **kw))
    root, data, trm, llm = trm_setup
    metrics = eval_test.main(["--recommender", "deeprec", "--model_path", str(llm), "--trm_path", str(trm),
                              "--dataset_path", str(data), "--max_samples", "2", "--target_only", "--max_calls", "2",
                              "--retrieve_k", "3", "--max_turn_tokens", "8", "--max_new_tokens", "24", "--ks", "1",
                              "5", "--n_items", "10", "--output_dir", str(root / "eval_deeprec_budgets")])
    assert seen and all((s.k, s.max_turn_tokens, s.max_calls, s.max_tokens) == (3, 8, 2, 24) for s in seen)
    assert (metrics["retrieve_k"], metrics["max_turn_tokens"]) == (3, 8)


def test_eval_test_episode_config_sets_the_trained_episode_and_flags_win(tmp_path, capsys):
    import eval_test

    base = ["--recommender", "deeprec", "--model_path", "m", "--dataset_path", "d"]
    a = eval_test.parse_args(base + ["--episode_config", "configs/tiny/deeprec_ml100k_stage2.yaml"])
    assert (a.prompt_style, a.category, a.max_calls, a.retrieve_k, a.max_turn_tokens, a.max_new_tokens) == \
        ("chat", "movies", 3, 10, 160, 768)  # = the YAML's fields (max_new_tokens <- max_trajectory_tokens)
    a = eval_test.parse_args(base + ["--retrieve_k", "4", "--episode_config",
                                     "configs/tiny/deeprec_ml100k_stage1.yaml"])
    assert a.retrieve_k == 4 and a.max_calls == 3  # an explicit flag wins, wherever it stands
    assert eval_test.parse_args(base).retrieve_k == 20  # no config: the paper's defaults
    partial = tmp_path / "partial.yaml"
    partial.write_text("max_calls: 2\nretrieve_k: 3\n")
    a = eval_test.parse_args(base + ["--episode_config", str(partial)])
    # the fields the file leaves out are what train_deeprec.py trained with: DeepRecConfig's defaults
    assert (a.max_calls, a.retrieve_k) == (2, 3)
    assert (a.prompt_style, a.category, a.max_turn_tokens, a.max_new_tokens) == ("completion", "items", None, 16384)
    assert "max_trajectory_tokens=16384" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"missing\.yaml: No such file"):
        eval_test.parse_args(base + ["--episode_config", str(tmp_path / "missing.yaml")])
