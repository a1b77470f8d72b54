"""DeepRec's warm-start gate: is a format-warm-started model (SFT on ``preprocess.deeprec_data.warmstart_records``)
ready for stage 1? It runs the evaluation loop (``methods.deeprec.rollout.DeepRecRecommender``) on validation rows,
greedily and sampled, and measures how often the episodes are valid.
"""
from __future__ import annotations

import torch

from methods.deeprec.rollout import DeepRecRecommender, HFTokenGenerator, rollout_sampling

#: A warm-started model is ready for stage 1 when its episodes are valid this often on validation rows: greedy
#: (what evaluation sees) and sampled at the stage's rollout temperature (what RL needs: a group with some valid
#: episodes has a non-zero advantage).
GATE_MIN_GREEDY_VALID = 0.9
GATE_MIN_SAMPLED_VALID = 0.3


class WarmstartGateError(RuntimeError):
    """``--warmstart_gate require`` and the gate did not pass (a project error: one line, exit status 2)."""


def warmstart_gate(model, tokenizer, rows, catalog, retriever, args,
                   min_greedy: float = GATE_MIN_GREEDY_VALID, min_sampled: float = GATE_MIN_SAMPLED_VALID,
                   batch_size: int = 16, generators=None) -> dict:
    """Run DeepRec episodes (the evaluation loop, ``methods.deeprec.rollout.DeepRecRecommender``) on ``rows``
    greedily and sampled with ``rollout_sampling(args)``; return the share of valid episodes of each, every failing check's
    share, and ``passed`` (greedy >= min_greedy and sampled >= min_sampled). ``generators``: an optional
    (greedy, sampled) pair of token generators (tests); default HF ``generate`` on ``model``."""
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("the warm-start gate needs validation rows (give --eval_split)")
    if generators is None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None
        generators = (HFTokenGenerator(model, tokenizer, do_sample=False, eos_token_ids=eos),
                      HFTokenGenerator(model, tokenizer, do_sample=True, eos_token_ids=eos, **rollout_sampling(args)))
    out = {"rows": len(rows), "temperature": args.temperature, "min_greedy": min_greedy, "min_sampled": min_sampled}
    for name, generator in zip(("greedy", "sampled"), generators):
        rec = DeepRecRecommender(model, tokenizer, retriever, catalog, args.episode_settings, args.prompt_style,
                                 args.category, args.require_year, batch_size, args.max_history, generator)
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            rec.recommend(rows)
        stats = rec.episode_stats
        out[f"{name}_valid"] = stats["deeprec/valid_format_rate"]
        out[f"{name}_calls"] = stats["deeprec/calls_per_episode"]
        out[f"{name}_failures"] = {k[len("deeprec/fail_"):-len("_rate")]: v for k, v in stats.items()
                                   if k.startswith("deeprec/fail_")}
    out["passed"] = out["greedy_valid"] >= min_greedy and out["sampled_valid"] >= min_sampled
    return out


def format_gate(result: dict) -> str:
    """One line for the console."""
    def fails(d):
        return ", ".join(f"{k} {v:.2f}" for k, v in d.items() if v) or "none"

    return (f"[deeprec] warm-start gate on {result['rows']} validation rows: greedy valid {result['greedy_valid']:.2f} "
            f"(need >= {result['min_greedy']:.2f}; failing: {fails(result['greedy_failures'])}), sampled at T "
            f"{result['temperature']:g} valid {result['sampled_valid']:.2f} (need >= {result['min_sampled']:.2f}; "
            f"failing: {fails(result['sampled_failures'])}) -> {'PASSED' if result['passed'] else 'NOT PASSED'}")
