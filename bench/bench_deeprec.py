"""DeepRec costs: TRM retrieval latency (64 queries, Games catalog) and a short tiny-model DeepRec rollout/step,
split into generation / retrieval / scoring / update, with retrieval's share of the rollout.

1. Retrieval latency: ``bench.bench_retrieval.run()`` (helper-6's benchmark, called as it is: 64 queries, top 20,
   16,859 Games items, warm item matrix; target <= 20 ms on CPU).
2. Rollout and step: ``DeepRecTrainer`` (stage cold: R_fmt + R_inv + R_div) on the first Amazon-2018 Games
   training rows (processed_datasets/amazon18-games), a tiny random Qwen3 (4 x 128, BPE trained on the Games data),
   a TRM of the default architecture over the whole 16,859-item Games catalog (random weights and item text
   embeddings: the cost is the same) with the REAL all-MiniLM-L6-v2 encoder for the preference texts (the TRM's
   query side and R_div both encode them). 8 trajectories per step (2 users x G 4), as configs/tiny.
   A random model never writes DeepRec's markers, so the policy's TEXT is scripted while its COST is real: each
   turn, the model really samples (``generate``, ``min_new_tokens`` = ``max_new_tokens``) as many tokens as the
   scripted turn has, on the real growing context (prompt + everything so far), and the scripted turn's tokens are
   what the episode appends: ``N_CALLS`` reasoning turns of ~``TURN_WORDS`` words each ending in a preference
   (``games like <a history title>``) and a TRM call, then a closing turn with the first 10 titles of the last item
   list as the answer -- a valid trajectory, so every reward path runs. Timed per step (process CPU seconds, 1
   torch thread, and wall): generation and retrieval inside ``run_episodes`` (the retriever and generator are
   wrapped), scoring (``_calculate_rewards``: parse, R_fmt / R_inv, the MiniLM encoding of R_div), the rest of
   TRL's batch preparation, and the update (loss forward + backward + optimizer = step - rollout - scoring).
   Medians over the steps after the first. Target (issue #8): retrieval <= 5% of the rollout.
3. Step time vs stock ``trl.GRPOTrainer`` on the same tiny model, the same rendered DeepRec prompts and batch: the
   stock trainer samples ONE turn forced (``min_new_tokens``) to the DeepRec rows' mean length (generated +
   injected tokens, from the batch's completion mask: its loss forward covers as many tokens; TRL's
   ``completions/mean_length`` counts the policy's tokens only), with a constant reward. The ratio is what the
   multi-turn episode costs over a single-turn completion of the same length: a prefill per turn, retrieval, the
   rewards' MiniLM encoding and the episode bookkeeping (the method's cost, not a wrapper's).
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, StepClock, cores_and_load, machine

# bench/run_all.py runs it and writes its section
REPORT = {"order": 6, "section": "## DeepRec: retrieval latency and rollout split"}

GAMES_DATA = REPO / "processed_datasets" / "amazon18-games"
STEPS, BATCH, G, N_CALLS, TURN_WORDS, TEXT_DIM = 4, 8, 4, 3, 40, 384
MAX_TRAJECTORY_TOKENS = 4096  # three 20-title Games lists are ~1.5k tiny-BPE tokens
COMPLETION_START = "Assistant:\n<think>\n"  # where the completion-style prompt ends


class TimedRetriever:
    """The retriever, with ``retrieve`` timed (everything else delegated)."""

    def __init__(self, retriever, clock: StepClock):
        self._r, self._clock = retriever, clock

    def retrieve(self, *a, **kw):
        return self._clock.timed("retrieval", self._r.retrieve, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._r, name)


class ScriptedCostGenerator:
    """Real sampling cost, scripted text (module docstring). ``generate(rows, max_new_tokens)`` -> scripted ids."""

    def __init__(self, model, tok, clock: StepClock, titles_of_history, decode):
        self.model, self.tok, self.clock, self.decode = model, tok, clock, decode
        self.titles_of_history = titles_of_history  # prompt text -> history titles
        self.encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]

    def _segment(self, text: str) -> str:
        from preprocess.deeprec_prompts import BEGIN_ITEM_LIST, END_ITEM_LIST

        opener, boundary = "\n" + BEGIN_ITEM_LIST + "\n", END_ITEM_LIST + "\n"
        completion = text.split(COMPLETION_START, 1)[1]
        turn = completion.count(opener)
        # the part of this turn already written (a turn cut by max_turn_tokens continues where it stopped)
        done = completion[completion.rfind(boundary) + len(boundary):] if turn else completion
        segment = self._full_segment(text, completion, turn, opener)
        return segment[len(done):] if segment.startswith(done) else segment

    def _full_segment(self, text: str, completion: str, turn: int, opener: str) -> str:
        from preprocess.deeprec_prompts import BEGIN_PREFERENCE, END_ITEM_LIST, END_PREFERENCE, THINK_CLOSE, answer_text

        filler = " ".join(["the user keeps coming back to long story-driven games with open worlds"] * 4)
        filler = " ".join(filler.split()[:TURN_WORDS])
        if turn < N_CALLS:
            titles = self.titles_of_history(text)
            anchor = titles[-1 - turn % len(titles)] if titles else "recent releases"
            return f"Step {turn + 1}: {filler}.\n{BEGIN_PREFERENCE}games like {anchor}{END_PREFERENCE}"
        last = completion[completion.rfind(opener) + len(opener):]
        last = last[: last.find("\n" + END_ITEM_LIST)]
        answer = [line.split(". ", 1)[1] for line in last.splitlines()[:10]]
        return f"So: {filler}.\n{THINK_CLOSE}\n{answer_text(answer)}"

    def generate(self, rows, max_new_tokens):
        if not rows:
            return []
        segments = [self.encode(self._segment(self.decode(r))) for r in rows]
        n = max(min(len(s), cap) for s, cap in zip(segments, max_new_tokens))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r)
            mask[b, width - len(r):] = 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.clock.timed("generation", self.model.generate, input_ids=ids, attention_mask=mask,
                                 max_new_tokens=n, min_new_tokens=n, do_sample=True, pad_token_id=pad)
        finally:
            self.model.train(was_training)
        self.clock.add("generated_tokens", 0.0, float(n * len(rows)))
        return [(s[:cap], None) for s, cap in zip(segments, max_new_tokens)]


def _random_trm(catalog_ids, encoder):
    from retrieval.model import TRM, TRMConfig
    from retrieval.retriever import TRMRetriever

    rng = np.random.default_rng(0)
    text = rng.standard_normal((len(catalog_ids) + 1, TEXT_DIM)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    text[0] = 0
    torch.manual_seed(0)
    retriever = TRMRetriever(TRM(TRMConfig(num_items=len(catalog_ids), text_dim=TEXT_DIM), torch.from_numpy(text)),
                             catalog_ids, encoder=encoder)
    retriever.model.eval()
    return retriever


def bench_rollout(workdir: Path) -> dict:
    from modeling.loading import load_model_and_tokenizer
    from modeling.text_encoder import load_text_encoder
    from modeling.tiny import build_tiny_model
    from preprocess.contract import load_processed
    from methods.deeprec.trainer import DeepRecConfig, DeepRecTrainer

    if not (GAMES_DATA / "catalog.json").exists():
        return {"skipped": f"{GAMES_DATA} absent (python -m preprocess.amazon --format atomic ... --category Games)"}
    splits, catalog = load_processed(GAMES_DATA)
    train = splits["train"].select(range(BATCH // G * (STEPS + 1))).select_columns(["history", "target", "seen"])
    encoder = load_text_encoder()
    clock = StepClock()
    retriever = TimedRetriever(_random_trm(list(catalog.ids), encoder), clock)
    model_dir = workdir / "tiny_games"
    build_tiny_model(model_dir, dataset_path=str(GAMES_DATA), hidden_size=128, num_layers=4, intermediate_size=256,
                     max_corpus_samples=5000)
    model, tok = load_model_and_tokenizer(model_dir, padding_side="left")
    display = {catalog.display(i): i for i in catalog.ids}

    def titles_of_history(text):  # the prompt's numbered history lines, by their catalog titles
        user = text.split("oldest first:\n", 1)[-1].split("\nAssistant:", 1)[0]
        return [t for t in (line.split(". ", 1)[-1] for line in user.splitlines()) if t in display]

    class Timed(DeepRecTrainer):
        def _generator(self):
            return ScriptedCostGenerator(self.model, self._tokenizer, clock, titles_of_history, self.decode_completion)

        def _rollout(self, prompts, trainer=None):
            return clock.timed("rollout", super()._rollout, prompts, trainer)

        def _calculate_rewards(self, *a, **kw):
            return clock.timed("scoring", super()._calculate_rewards, *a, **kw)

        def _generate_and_score_completions(self, inputs):
            out = clock.timed("batch", super()._generate_and_score_completions, inputs)
            # the rows the loss runs over: generated AND injected tokens (TRL's completions/*_length metrics count
            # only the policy's own tokens, tool_mask = 1)
            widths = out["completion_mask"].sum(dim=1).float()
            clock.add("trajectory_tokens", 0.0, widths.mean().item())
            clock.add("longest_trajectory_tokens", 0.0, widths.max().item())
            policy = (out["completion_mask"] * out["tool_mask"]).sum(dim=1).float()
            clock.add("policy_tokens", 0.0, policy.mean().item())
            return out

    args = DeepRecConfig(output_dir=str(workdir / "deeprec"), stage="cold", prompt_style="completion",
                         category="video games", max_calls=8, retrieve_k=20,
                         max_trajectory_tokens=MAX_TRAJECTORY_TOKENS, max_turn_tokens=256, difficulty_selection=False,
                         num_generations=G,
                         per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=STEPS,
                         learning_rate=2e-5, beta=0.0, use_cpu=True, bf16=False, activation_checkpointing=False,
                         logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True)
    trainer = Timed(model=model, args=args, train_dataset=train, processing_class=tok, catalog=catalog,
                    retriever=retriever)
    trainer.add_callback(clock)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/format/mean" in h]
    steady = clock.steps[1:]
    tokens = {k: int(round(statistics.median(s[k][1] for s in steady)))
              for k in ("trajectory_tokens", "longest_trajectory_tokens", "policy_tokens")}
    stock = _stock_step(model_dir, list(trainer.train_dataset["prompt"]), tokens["trajectory_tokens"], workdir)

    def med(name, which):  # which: 0 cpu, 1 wall
        return statistics.median(s.get(name, (0.0, 0.0))[which] for s in steady)

    out = {}
    for which, label in ((0, "cpu_s"), (1, "wall_s")):
        step, batch, rollout = med("step", which), med("batch", which), med("rollout", which)
        gen, ret, score = med("generation", which), med("retrieval", which), med("scoring", which)
        out[label] = {"step": step, "generation": gen, "retrieval": ret, "rollout_other": rollout - gen - ret,
                      "scoring": score, "batch_other": batch - rollout - score, "update": step - batch,
                      "rollout": rollout, "retrieval_share_of_rollout": ret / rollout}
    calls = [s.get("retrieval", (0, 0)) for s in steady]
    return {
        "setup": (f"tiny Qwen3 4x128 (BPE on Games), stage cold, {BATCH} trajectories/step ({BATCH // G} users x G "
                  f"{G}), {N_CALLS} TRM calls + answer per trajectory (scripted text, real sampling cost), TRM over "
                  f"{len(catalog.ids):,} Games items, MiniLM preference encoder, {STEPS} steps (first excluded), "
                  "CPU 1 thread"),
        "generated_tokens_per_step": statistics.median(s.get("generated_tokens", (0, 0))[1] for s in steady),
        "retrieval_calls_per_step": BATCH * N_CALLS,
        "format_reward_mean": [h["rewards/format/mean"] for h in logs],
        "invocation_reward_mean": [h.get("rewards/invocation/mean") for h in logs],
        "trainer_rollout_timings_s": dict(trainer.rollout_timings),
        **out,
        "n_steady_steps": len(calls),
        **tokens,
        "stock": stock,
        "ratio_cpu": out["cpu_s"]["step"] / stock["cpu_s"], "ratio_wall": out["wall_s"]["step"] / stock["wall_s"],
    }


def _stock_step(model_dir: Path, prompts: list[str], completion_tokens: int, workdir: Path) -> dict:
    """Median steady-state step of stock GRPOTrainer: same model and prompts, one forced turn (module docstring)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from modeling.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, padding_side="left")
    clock = StepClock()

    class TimedStock(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            return clock.timed("batch", super()._generate_and_score_completions, inputs)

    trainer = TimedStock(
        model=model, reward_funcs=[lambda completions, **kw: [0.0 for _ in completions]],
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
        args=GRPOConfig(output_dir=str(workdir / "stock"), num_generations=G, per_device_train_batch_size=BATCH,
                        gradient_accumulation_steps=1, max_steps=STEPS, max_completion_length=completion_tokens,
                        generation_kwargs={"min_new_tokens": completion_tokens}, learning_rate=2e-5, beta=0.0,
                        use_cpu=True, bf16=False, activation_checkpointing=False, logging_steps=1,
                        save_strategy="no", report_to="none", seed=0, disable_tqdm=True))
    trainer.add_callback(clock)
    trainer.train()
    steady = clock.steps[1:]
    med = lambda name, which: statistics.median(s[name][which] for s in steady)  # noqa: E731
    return {"cpu_s": med("step", 0), "wall_s": med("step", 1), "completion_tokens": completion_tokens,
            "batch_cpu_s": med("batch", 0)}


def section(r: dict, heading: str) -> str:
    """The BENCHMARKS.md section of a ``run()`` result (bench/run_all.py)."""
    from bench.bench_scoring import cpu_model

    lines = [heading, "",
             f"`python -m bench.run_all --only deeprec` ({r.get('run_at', '-')}, {cpu_model()}, {cores_and_load(r)}; "
             f"{r['machine']}). CPU seconds of the process are the numbers to read (wall "
             "seconds, in brackets, include any wait for a core). Method: `bench/bench_deeprec.py`.", ""]
    t = r.get("retrieval") or {}
    if t:
        one = t["retrieve"].get("1_threads", {})
        enc = t.get("encode_64_preferences_ms")
        enc = f"{enc:.1f} ms" if isinstance(enc, (int, float)) else str(enc)
        lines += [f"TRM retrieval (`bench/bench_retrieval.py`: {t['shape']}; {t['source']}): warm call "
                  f"**{t.get('retrieve_cpu_ms_1_thread', one.get('warm_cpu_ms', float('nan'))):.1f} ms CPU** on one "
                  f"thread ({one.get('warm_ms', float('nan')):.1f} ms wall; best wall over thread counts "
                  f"{t['retrieve_ms']:.1f} ms), cold call (item matrix recomputed) "
                  f"{one.get('cold_ms', float('nan')):.1f}"
                  f" ms; MiniLM encoding of the 64 preference texts {enc}. Target <= 20 ms: "
                  f"{t.get('meets_target_cpu_time', t.get('meets_target'))} (CPU time).", ""]
    o = r.get("rollout") or {}
    if "skipped" in o:
        lines += [f"Rollout: {o['skipped']}", ""]
    elif o:
        c, w = o["cpu_s"], o["wall_s"]

        def row(label, k):
            return f"| {label} | {c[k]:.3f} s ({w[k]:.3f} s) | {100 * c[k] / c['step']:.1f}% |"
        lines += [f"DeepRec step ({o['setup']}; {o['generated_tokens_per_step']:,.0f} sampled tokens and "
                  f"{o['retrieval_calls_per_step']} TRM queries per step; rewards: format "
                  f"{o['format_reward_mean'][-1]:+.0f}, invocation {o['invocation_reward_mean'][-1]:.1f}). Median "
                  "steady-state step, CPU s (wall s):", "",
                  "| part | time | share of step |", "|---|---|---|",
                  row("generation (HF sampling, all turns)", "generation"),
                  row("retrieval (TRM + MiniLM query encoding, all calls)", "retrieval"),
                  row("rest of the rollout loop (stop cuts, tokenising injected lists)", "rollout_other"),
                  row("scoring (parse, R_fmt, R_inv, R_div's MiniLM encoding)", "scoring"),
                  row("rest of TRL's batch preparation", "batch_other"),
                  row("update (loss forward + backward + optimizer)", "update"),
                  row("**step**", "step"), "",
                  f"Retrieval's share of the rollout (generation + retrieval + loop): "
                  f"**{100 * c['retrieval_share_of_rollout']:.1f}% CPU** ({100 * w['retrieval_share_of_rollout']:.1f}%"
                  " wall); target <= 5%. The tiny model makes generation cheap, so on a real LLM the share is smaller "
                  "still.", ""]
        if "stock" in o:
            st = o["stock"]
            lines += [f"Step time, DeepRecTrainer / stock GRPOTrainer (same model, prompts and batch; stock samples "
                      f"one turn forced to the DeepRec rows' mean length, {st['completion_tokens']:,} tokens = the "
                      f"{o['policy_tokens']:,} the policy wrote + the injected item lists, so both losses run over "
                      f"rows of the same length; constant reward): {c['step']:.3f} s vs {st['cpu_s']:.3f} s CPU "
                      f"({w['step']:.3f} s vs {st['wall_s']:.3f} s wall), **{o['ratio_cpu']:.3f}x** CPU "
                      f"({o['ratio_wall']:.3f}x wall); target <= 1.10x. Of that, rollout + scoring "
                      f"{c['step'] - c['update']:.3f} s vs {st['batch_cpu_s']:.3f} s (stock samples every token in "
                      "one batched `generate`; DeepRec samples only its own tokens, one `generate` per turn that "
                      "re-reads the grown context, and injects the lists) and update (median step - median batch) "
                      f"{c['update']:.3f} s vs {st['cpu_s'] - st['batch_cpu_s']:.3f} s (DeepRec's rows are padded to "
                      f"the batch's longest, {o['longest_trajectory_tokens']:,} tokens). The stock run comes second "
                      "in the process, not alternated.", ""]
    return "\n".join(lines)


def run() -> dict:
    torch.set_num_threads(1)
    from bench import bench_retrieval

    out = {"name": "deeprec", "machine": machine()}
    out["retrieval"] = bench_retrieval.run()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out["rollout"] = bench_rollout(Path(tmp))
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["rollout"]:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bench_rollout(Path(tmp)), indent=2))
    else:
        print(json.dumps(run(), indent=2))
