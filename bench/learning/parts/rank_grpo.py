"""The RL parts trained by train_rank_grpo.py (GRPO, Rank-GRPO with two reward functions, GSPO), each scored at
its validation-best checkpoint."""
from __future__ import annotations

from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, reward_curve, sft_start, text_eval_args, val_curve
from bench.learning.schedule import PY, Ctx


# RL on the tiny SFT model (ML-100k parts only; ReDial has its own config): configs/tiny/rank_grpo_ml100k.yaml
# (temperature 0.7, G 4, beta 1e-3) with 8 prompts a step instead of 4 and lr 1e-4 instead of 5e-5, tuned on
# ML-100k validation rows (docs/results/NOTES.md item 9: 3 seeds rose steadily, where 4 prompts at 5e-5 or 8 at
# 5e-5 did not); part of each RL part's cache key. --quick keeps the config's 4 prompts a step: it checks the
# pipeline in 20 minutes, and 8 prompts a step doubled its RL parts.
RL_OVERRIDES: dict[str, list[str]] = {
    "full": ["--per_device_train_batch_size", "32", "--learning_rate", "1e-4", "--max_train_samples", "4000"],
    "quick": []}
RL_METHODS = {  # part -> (label, train_rank_grpo.py arguments)
    "grpo": ("GRPO", ["--algorithm", "grpo"]),
    "rank_grpo_exp_inf": ("Rank-GRPO (exp_inf)", ["--algorithm", "rank_grpo", "--reward_func", "exp_inf"]),
    "rank_grpo_log": ("Rank-GRPO (log)", ["--algorithm", "rank_grpo", "--reward_func", "log"]),
    "gspo": ("GSPO", ["--algorithm", "gspo"]),
}


def rl_overrides(mode: str) -> list[str]:
    """The RL_OVERRIDES of a mode ("full", "quick", or either with --set suffixes)."""
    return list(RL_OVERRIDES[mode.split("-")[0]])


def _rl_part(name: str):
    label, algo_args = RL_METHODS[name]

    def run_part(ctx: Ctx) -> dict:
        s = ctx.settings
        rows, curves = [], {}
        for seed in s.seeds:
            start = sft_start(ctx, seed)
            out = ctx.root / f"seed{seed}" / "model"
            ctx.run([PY, "train_rank_grpo.py", "--config", "configs/tiny/rank_grpo_ml100k.yaml",
                     "--model_name", str(start), "--dataset_path", ML_DATA, "--output_dir", str(out),
                     "--seed", str(seed), "--max_steps", str(s.rl_steps), "--save_steps", str(s.rl_save_steps),
                     *algo_args, *rl_overrides(ctx.mode)],
                    out.parent / "train.log", done=out / "config.json")
            # model selection on validation rows only: the checkpoint with the best validation NDCG@10 is scored on
            # test (one RL seed's curve goes up and down by 20%: docs/results/NOTES.md items 7-9)
            val = val_curve(ctx, out)
            step = best_checkpoint(val, s.rl_steps)
            model = out if step == s.rl_steps else out / f"checkpoint-{step}"
            rows.append({"method": label, "seed": seed, "selected_step": step,
                         **ctx.evaluate(out.parent / f"eval_test_step{step}", text_eval_args(str(model)))})
            curves[seed] = {"val": val, "reward": reward_curve(out)}
        return {"rows": rows, "curves": curves}

    return run_part


def best_checkpoint(val_rows: list[dict], last_step: int, key: str = "ndcg@10") -> int:
    """The step of the best validation score (the earliest on a tie); the last step when there is no curve."""
    scored = [(r[key], -int(r["step"])) for r in val_rows if isinstance(r.get(key), float)]
    return -max(scored)[1] if scored else last_step


# start order: Rank-GRPO (exp_inf) first, the longest of them (the order parts start in when several are ready)
for _i, (_name, _start) in enumerate((("grpo", 7), ("rank_grpo_exp_inf", 6), ("rank_grpo_log", 8), ("gspo", 9))):
    part(_name, order=40 + _i, start=_start, after=["sft"], label=RL_METHODS[_name][0], overrides=rl_overrides)(
        _rl_part(_name))
