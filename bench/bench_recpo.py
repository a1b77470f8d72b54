"""RecPO (R²ec) costs: reward computation, item-table refresh throughput, and step time vs stock GRPOTrainer.

1. Rewards (``rewards``): 48 trajectories ranked against the whole Amazon-2018 Games catalog (16,859 items, the
   size of ``../shared/data/amazon18_games_llmrank/Games.item``) with d = 576 (SmolLM2-135M's hidden size), random
   unit-free vectors, 20 excluded history items per row. Batch path (what
   ``methods.recpo.head.ItemHead.score_batch`` runs): ``cosine_scores`` + ``target_ranks`` + ``rank_ndcg`` +
   ``target_softmax_prob``. Naive path: a Python loop over trajectories, numpy per row (normalise, score the
   catalog, count the allowed items above the target, NDCG, a float64 softmax). Both float32 scores, as in the
   trainer. Asserted identical: every rank and every NDCG value; the softmax probabilities to 1e-5 relative (the
   two paths sum the float32 dot products in different orders).
2. Item-table refresh (``refresh``): ``modeling.hidden_states.encode_id_rows`` over the RecPO item prompts
   (``preprocess.recpo_prompts.item_prompt`` + ``chat_ids``, assistant turn pre-filled with ``<answer>``) of the
   first N Games catalog items (processed_datasets/amazon18-games, titles only: the LLMRank atomic files carry
   no descriptions), batch 32 (``item_batch_size``' default), for the tiny demo model (4 x 128, BPE trained on the
   Games data) and for SmolLM2-135M-Instruct (models/smollm2-135m-instruct). Items/s; the full-catalog refresh time
   is extrapolated from it.
3. Step time (``step``): ``RecPOTrainer`` / stock ``trl.GRPOTrainer`` on the same tiny model (4 x 128, BPE trained on
   ML-100k), the same ML-100k batch (8 completions = 2 users x G 4), the same max_completion_length, generation
   forced to the full length (``min_new_tokens``; RecPO then appends its ``<answer>`` marker: a random model never
   writes it, so every RecPO completion carries the forced marker tokens too). Stock GRPO gets a trivial reward
   function (a constant). Both beta = 0 (R²ec has no KL, so no reference forward on either side). RecPO's extra
   work per step: the rewards forward (h_T of every trajectory, no grad), the catalog scoring, and the distinct
   targets' item rows in the loss forward; and every ``refresh_steps`` steps a full item-table refresh (1,682
   ML-100k items), timed separately and amortised at the tiny config's refresh_steps (5) and the default (50).
   Steady-state step = median over steps after the first (the first step holds the initial refresh and cache
   warm-up); the trainers run alternately (stock, recpo, stock, ...), best of 3 rounds, as in bench_step_time.
   CPU time of the process (1 torch thread) is reported next to wall time: the machine is shared.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, RESULTS_DIR, SHARED_DATA, StepClock, cores_and_load, machine

# bench/run_all.py runs it and writes its section
REPORT = {"order": 5, "section": "## RecPO: rewards, item-table refresh, step time"}

N_TRAJ, DIM, N_HISTORY, TAU, CUTOFF = 48, 576, 20, 0.02, 1000
GAMES_ITEMS = SHARED_DATA / "amazon18_games_llmrank" / "Games.item"
GAMES_DATA = REPO / "processed_datasets" / "amazon18-games"
SMOLLM = REPO / "models" / "smollm2-135m-instruct"
REFRESH_ITEMS_TINY, REFRESH_ITEMS_135M, ITEM_BATCH = 512, 128, 32
STEPS, BATCH, G, COMPLETION, ROUNDS = 6, 8, 4, 64, 3


def _cpu_wall(fn, repeat: int = 5, warmup: int = 1) -> tuple[float, float, object]:
    """Best process-CPU seconds and best wall seconds of ``fn()`` over ``repeat`` runs (after ``warmup``)."""
    out = None
    for _ in range(warmup):
        out = fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall), out


# ================================================================================================ 1. rewards
def _catalog_size() -> tuple[int, str]:
    if GAMES_ITEMS.exists():
        n = sum(1 for line in GAMES_ITEMS.read_text(encoding="utf-8").splitlines()[1:] if line.strip())
        return n, "Amazon-2018 Games catalog size (Games.item)"
    return 16859, "16,859 items (Games.item absent: its published size)"


def naive_rewards(users: np.ndarray, items: np.ndarray, targets: np.ndarray, exclude: list[list[int]], tau: float,
                  cutoff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One trajectory at a time: ranks (1-based, ties by index), R_d and R_c. (B, d), (V, d) float32."""
    items_n = items / np.linalg.norm(items, axis=1, keepdims=True)
    idx = np.arange(items.shape[0])
    ranks, ndcg, prob = [], [], []
    for u, t, ex in zip(users, targets, exclude):
        s = items_n @ (u / np.linalg.norm(u)) / np.float32(tau)
        allowed = np.ones(items.shape[0], dtype=bool)
        allowed[ex] = False
        above = allowed & ((s > s[t]) | ((s == s[t]) & (idx < t)))
        r = 1 + int(above.sum())
        ranks.append(r)
        ndcg.append(1.0 / np.log2(r + 1.0) if r <= cutoff else 0.0)
        s64 = s.astype(np.float64)[allowed]
        m = s64.max()
        prob.append(float(np.exp(float(s[t]) - m) / np.exp(s64 - m).sum()))
    return np.array(ranks), np.array(ndcg), np.array(prob)


def bench_rewards() -> dict:
    from rewards.embedding_rewards import cosine_scores, rank_ndcg, target_ranks, target_softmax_prob

    V, source = _catalog_size()
    rng = np.random.default_rng(0)
    users = rng.standard_normal((N_TRAJ, DIM)).astype(np.float32)
    items = rng.standard_normal((V, DIM)).astype(np.float32)
    # make some targets rank high, as a trained model does: the user vector near its target
    targets = rng.choice(V, size=N_TRAJ, replace=False)
    users[: N_TRAJ // 2] += 2.0 * items[targets[: N_TRAJ // 2]]
    exclude = [[int(x) for x in rng.choice(np.setdiff1d(np.arange(V), [t]), size=N_HISTORY, replace=False)]
               for t in targets]
    u_t, v_t, t_t = torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(targets)
    mask = torch.zeros(N_TRAJ, V, dtype=torch.bool)
    for b, ex in enumerate(exclude):
        mask[b, ex] = True

    def batch():
        scores = cosine_scores(u_t, v_t, TAU)
        ranks = target_ranks(scores, t_t, mask)
        return ranks, rank_ndcg(ranks, CUTOFF), target_softmax_prob(scores, t_t, mask)

    fast_cpu, fast_wall, (ranks, ndcg, prob) = _cpu_wall(batch, repeat=9, warmup=2)
    slow_cpu, slow_wall, (n_ranks, n_ndcg, n_prob) = _cpu_wall(
        lambda: naive_rewards(users, items, targets, exclude, TAU, CUTOFF), repeat=3, warmup=1)
    same_ranks = bool(np.array_equal(ranks.numpy(), n_ranks))
    same_ndcg = bool(np.array_equal(ndcg.numpy(), n_ndcg))
    close_prob = bool(np.allclose(prob.numpy(), n_prob, rtol=1e-5, atol=1e-12))
    assert same_ranks and same_ndcg and close_prob, (same_ranks, same_ndcg, close_prob)
    return {
        "shape": f"{N_TRAJ} trajectories x {V:,} items, d {DIM}, {N_HISTORY} excluded per row, tau {TAU}",
        "source": source,
        "batch_cpu_ms": 1e3 * fast_cpu, "batch_wall_ms": 1e3 * fast_wall,
        "naive_cpu_ms": 1e3 * slow_cpu, "naive_wall_ms": 1e3 * slow_wall,
        "speedup_cpu": slow_cpu / fast_cpu,
        "identical_ranks_and_ndcg": same_ranks and same_ndcg, "softmax_prob_rtol_1e-5": close_prob,
        "median_rank": float(np.median(n_ranks)),
    }


# ================================================================================================ 2. refresh
def _games_item_rows(tok, n: int) -> tuple[list[list[int]], str]:
    from modeling.hidden_states import chat_ids
    from preprocess.recpo_prompts import ITEM_PREFILL, item_prompt
    from rewards.catalog import load_catalog

    catalog = load_catalog(GAMES_DATA / "catalog.json")
    ids = list(catalog.ids)[:n]
    return [chat_ids(tok, item_prompt(catalog[i], "video games"), ITEM_PREFILL) for i in ids], len(catalog.ids)


def _refresh_rate(model, tok, rows, repeat: int) -> dict:
    from modeling.hidden_states import encode_id_rows

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encode_id_rows(model, rows[:ITEM_BATCH], pad, ITEM_BATCH, progress=False)  # warm-up: one batch
    cpu, wall, _ = _cpu_wall(lambda: encode_id_rows(model, rows, pad, ITEM_BATCH, progress=False), repeat=repeat,
                             warmup=0)
    n_tokens = sum(len(r) for r in rows)
    return {"items": len(rows), "mean_tokens": n_tokens / len(rows), "cpu_s": cpu, "wall_s": wall,
            "items_per_cpu_s": len(rows) / cpu, "items_per_wall_s": len(rows) / wall}


def bench_refresh(workdir: Path) -> dict:
    from modeling.loading import load_model_and_tokenizer
    from modeling.tiny import build_tiny_model

    if not (GAMES_DATA / "catalog.json").exists():
        return {"skipped": f"{GAMES_DATA} absent (python -m preprocess.amazon --format atomic ... --category Games)"}
    out = {}
    tiny_dir = workdir / "tiny_games"
    build_tiny_model(tiny_dir, dataset_path=str(GAMES_DATA), hidden_size=128, num_layers=4, intermediate_size=256,
                     max_corpus_samples=5000)
    model, tok = load_model_and_tokenizer(tiny_dir, padding_side="left")
    rows, V = _games_item_rows(tok, REFRESH_ITEMS_TINY)
    out["tiny_4x128"] = _refresh_rate(model, tok, rows, repeat=3)
    if (SMOLLM / "config.json").exists():
        model, tok = load_model_and_tokenizer(SMOLLM, padding_side="left")
        rows, V = _games_item_rows(tok, REFRESH_ITEMS_135M)
        out["smollm2_135m"] = _refresh_rate(model, tok, rows, repeat=1)
    else:
        out["smollm2_135m"] = {"skipped": f"{SMOLLM} absent (python -m modeling.pretrained --name "
                                          "smollm2-135m-instruct --output_dir models/smollm2-135m-instruct)"}
    for r in out.values():
        if "items_per_cpu_s" in r:
            r["full_catalog_cpu_s"] = V / r["items_per_cpu_s"]
    out["catalog_items"] = V
    return out


# ================================================================================================ 3. step time
def _timed(cls, parts: dict):
    """A subclass of trainer ``cls`` adding the CPU seconds of its phases to ``parts`` (lists, one per call)."""

    def wrap(name, key):
        base = getattr(cls, name)

        def timed(self, *a, **kw):
            c0 = time.process_time()
            try:
                return base(self, *a, **kw)
            finally:
                parts.setdefault(key, []).append(time.process_time() - c0)
        return timed

    methods = {"_generate_and_score_completions": wrap("_generate_and_score_completions", "rollout_and_rewards"),
               "_generate_single_turn": wrap("_generate_single_turn", "generation"),
               "_calculate_rewards": wrap("_calculate_rewards", "rewards")}
    if hasattr(cls, "refresh_item_table"):
        methods["refresh_item_table"] = wrap("refresh_item_table", "item_table_refresh")
        methods["_user_vectors"] = wrap("_user_vectors", "rewards_forward")
    return type(f"Timed{cls.__name__}", (cls,), methods)


def bench_step(workdir: Path) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from bench.bench_step_time import _data
    from modeling.loading import load_model_and_tokenizer
    from preprocess.contract import load_processed
    from methods.recpo.trainer import RecPOConfig, RecPOTrainer

    _, catalog, model_dir = _data(workdir)  # bench_step_time's ML-100k slice and tiny model (built once)
    splits, _ = load_processed(RESULTS_DIR / "ml100k_bench")
    raw = splits["train"].select(range(BATCH * STEPS // G * 2)).select_columns(["history", "target", "seen"])
    # both trainers see the SAME prompts: the R²ec user prompt RecPO renders (stock GRPO gets it pre-rendered)
    render = RecPOTrainer._render_user_prompt_fn(catalog, RecPOConfig(output_dir=str(workdir / "x"), use_cpu=True,
                                                                      category="movies"))
    stock_train = raw.map(render)
    common = dict(use_cpu=True, report_to="none", max_steps=STEPS, seed=0, per_device_train_batch_size=BATCH,
                  gradient_accumulation_steps=1, num_generations=G, max_completion_length=COMPLETION,
                  generation_kwargs={"min_new_tokens": COMPLETION}, learning_rate=1e-5, beta=0.0, logging_steps=1,
                  save_strategy="no", disable_tqdm=True, epsilon=0.2, epsilon_high=0.28)

    def constant_reward(completions, **kw):
        return [0.0 for _ in completions]

    def run_one(kind: str) -> dict:
        parts: dict = {}
        model, tok = load_model_and_tokenizer(model_dir, padding_side="left")
        if kind == "stock":
            trainer = _timed(GRPOTrainer, parts)(
                model=model, reward_funcs=[constant_reward], train_dataset=stock_train, processing_class=tok,
                args=GRPOConfig(output_dir=str(workdir / kind), **common))
        else:  # refresh only before step 1 (timed on its own); amortised below at the configured refresh_steps
            trainer = _timed(RecPOTrainer, parts)(
                model=model, train_dataset=raw, processing_class=tok, catalog=catalog,
                args=RecPOConfig(output_dir=str(workdir / kind), refresh_steps=10_000, item_batch_size=64,
                                 category="movies", **common))
        timer = StepClock()
        trainer.add_callback(timer)
        trainer.train()
        steady = {k: statistics.median(v[1:]) for k, v in parts.items() if len(v) > 1}
        step_cpu = statistics.median(timer.cpu[1:])
        steady["update"] = step_cpu - steady["rollout_and_rewards"]  # loss forward + backward + optimizer
        return {"cpu_s": step_cpu, "wall_s": statistics.median(timer.wall[1:]),
                "parts_cpu_s": steady, "refresh_cpu_s": parts.get("item_table_refresh", [None])[0],
                "completion_tokens": COMPLETION}

    rounds = {"stock": [], "recpo": []}
    for _ in range(ROUNDS):
        for kind in ("stock", "recpo"):
            rounds[kind].append(run_one(kind))
    best = {k: min(v, key=lambda r: r["cpu_s"]) for k, v in rounds.items()}
    s, r = best["stock"], best["recpo"]
    refresh = min(x["refresh_cpu_s"] for x in rounds["recpo"])
    return {
        "setup": (f"tiny Qwen3 4x128 (BPE on ML-100k), batch {BATCH} = {BATCH // G} users x G {G}, {COMPLETION} "
                  f"completion tokens (forced), beta 0, best of {ROUNDS} alternating runs x {STEPS} steps, "
                  f"CPU 1 thread"),
        "catalog_items": len(catalog.ids),
        "stock_cpu_s": s["cpu_s"], "recpo_cpu_s": r["cpu_s"], "stock_wall_s": s["wall_s"], "recpo_wall_s": r["wall_s"],
        "ratio_cpu": r["cpu_s"] / s["cpu_s"], "ratio_wall": r["wall_s"] / s["wall_s"],
        "stock_parts_cpu_s": s["parts_cpu_s"], "recpo_parts_cpu_s": r["parts_cpu_s"],
        "refresh_cpu_s": refresh,
        "amortised": {str(n): {"recpo_cpu_s": r["cpu_s"] + refresh / n,
                               "ratio": (r["cpu_s"] + refresh / n) / s["cpu_s"]}
                      for n in (5, 50)},
        "rounds": {k: [x["cpu_s"] for x in v] for k, v in rounds.items()},
    }


def section(r: dict, heading: str) -> str:
    """The BENCHMARKS.md section of a ``run()`` result (bench/run_all.py)."""
    from bench.bench_scoring import cpu_model

    lines = [heading, "",
             f"`python -m bench.run_all --only recpo` ({r.get('run_at', '-')}, {cpu_model()}, {cores_and_load(r)}; "
             f"{r['machine']}). CPU seconds of the process are the numbers to "
             "read (wall seconds, in brackets, include any wait for a core). Method: `bench/bench_recpo.py`.", ""]
    w = r.get("rewards")
    if w:
        lines += ["| reward computation | naive per-trajectory numpy loop | batch (`rewards.embedding_rewards`) "
                  "| speedup | identical |", "|---|---|---|---|---|",
                  f"| {w['shape']} ({w['source']}): rank, R_d (NDCG@{CUTOFF}), R_c (softmax) | "
                  f"{w['naive_cpu_ms']:.1f} ms ({w['naive_wall_ms']:.1f} ms) | **{w['batch_cpu_ms']:.1f} ms** "
                  f"({w['batch_wall_ms']:.1f} ms) | {w['speedup_cpu']:.1f}x | ranks and NDCG bit for bit: "
                  f"{w['identical_ranks_and_ndcg']}; R_c to 1e-5: {w['softmax_prob_rtol_1e-5']} |", ""]
    f = r.get("refresh")
    if f and "skipped" not in f:
        lines += ["| item-table refresh (`encode_id_rows`, batch 32) | items | tokens / item | CPU s (wall s) | "
                  "items / CPU s | full Games catalog |", "|---|---|---|---|---|---|"]
        for key, label in (("tiny_4x128", "tiny Qwen3 4 x 128 (BPE on Games)"),
                           ("smollm2_135m", "SmolLM2-135M-Instruct (d 576, 30 layers)")):
            x = f.get(key, {})
            if "skipped" in x or not x:
                lines.append(f"| {label} | skipped: {x.get('skipped', 'not run')} | | | | |")
                continue
            lines.append(f"| {label} | {x['items']} | {x['mean_tokens']:.0f} | {x['cpu_s']:.2f} ({x['wall_s']:.2f}) | "
                         f"**{x['items_per_cpu_s']:,.1f}** | {f['catalog_items']:,} items: "
                         f"{x['full_catalog_cpu_s'] / 60:,.1f} CPU min |")
        lines.append("")
    elif f:
        lines += [f"Item-table refresh: {f['skipped']}", ""]
    st = r.get("step")
    if st:
        sp, rp = st["stock_parts_cpu_s"], st["recpo_parts_cpu_s"]
        gen_s, gen_r = sp.get("generation", 0.0), rp.get("generation", 0.0)
        lines += [
            f"Step time, RecPOTrainer / stock GRPOTrainer ({st['setup']}; RecPO's {st['catalog_items']:,}-item "
            "ML-100k table). Per steady-state step, CPU seconds:", "",
            "| | stock GRPOTrainer (constant reward) | RecPOTrainer | ratio |", "|---|---|---|---|",
            f"| step (wall) | {st['stock_cpu_s']:.3f} s ({st['stock_wall_s']:.3f} s) | {st['recpo_cpu_s']:.3f} s "
            f"({st['recpo_wall_s']:.3f} s) | **{st['ratio_cpu']:.3f}x** ({st['ratio_wall']:.3f}x wall) |",
            f"| generation (+ RecPO's cut at `<answer>`) | {gen_s:.3f} s | {gen_r:.3f} s | |",
            f"| rewards (RecPO: h_T forward {rp.get('rewards_forward', 0.0):.3f} s + catalog scoring) | "
            f"{sp.get('rewards', 0.0):.4f} s | {rp.get('rewards', 0.0):.3f} s | |",
            f"| rest of TRL's batch preparation | {sp['rollout_and_rewards'] - gen_s - sp.get('rewards', 0.0):.3f} s | "
            f"{rp['rollout_and_rewards'] - gen_r - rp.get('rewards', 0.0):.3f} s | |",
            f"| update (loss forward + backward + optimizer; RecPO: + the distinct targets' item rows, rec loss) | "
            f"{sp['update']:.3f} s | {rp['update']:.3f} s | {rp['update'] / sp['update']:.3f}x |",
            f"| item-table refresh ({st['catalog_items']:,} items, every refresh_steps) | - | "
            f"{st['refresh_cpu_s']:.2f} s per refresh | |",
            *(f"| step with the refresh amortised, refresh_steps {n} | {st['stock_cpu_s']:.3f} s | "
              f"{a['recpo_cpu_s']:.3f} s | **{a['ratio']:.3f}x** |" for n, a in st["amortised"].items()),
            "",
            "RecPO's completions are the stock ones plus the forced `<answer>` marker tokens (a random model never "
            "writes it), so its generation, rewards forward and loss rows are slightly longer. refresh_steps 5 is "
            "configs/tiny/recpo_ml100k.yaml, 50 the default; the refresh scales with the catalog (see the table "
            "above for the 16.9k Games items).", ""]
    return "\n".join(lines)


def run(parts=("rewards", "refresh", "step")) -> dict:
    torch.set_num_threads(1)
    out = {"name": "recpo", "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "rewards" in parts:
            out["rewards"] = bench_rewards()
        if "refresh" in parts:
            out["refresh"] = bench_refresh(tmp)
        if "step" in parts:
            out["step"] = bench_step(tmp)
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(tuple(sys.argv[1:]) or ("rewards", "refresh", "step")), indent=2))
