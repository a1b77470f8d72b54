"""SFT on ML-100k from the run's tiny model: the start of every RL part."""
from __future__ import annotations

from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, sft_dir, text_eval_args, tiny_dir, val_curve
from bench.learning.schedule import PY, Ctx


# it starts first: six parts start from its model
@part("sft", order=30, start=1, after=["data"], label="SFT")
def part_sft(ctx: Ctx) -> dict:
    s = ctx.settings
    rows, curves = [], {}
    for seed in s.seeds[:s.n_sft_seeds]:
        model = sft_dir(ctx, seed)
        # one epoch of fresh rows (16 a step) instead of the config's 4,000-row subset
        ctx.run([PY, "train_sft.py", "--config", "configs/tiny/sft_ml100k.yaml", "--model_name", str(tiny_dir(ctx)),
                 "--dataset_path", ML_DATA, "--output_dir", str(model), "--seed", str(seed),
                 "--max_train_samples", str(16 * s.sft_steps),
                 "--max_steps", str(s.sft_steps), "--save_steps", str(max(1, s.sft_steps // 2)),
                 "--eval_steps", str(max(1, s.sft_steps // 4))],
                model.parent / "train.log", done=model / "config.json")
        rows.append({"method": "SFT", "seed": seed,
                     **ctx.evaluate(model.parent / "eval_test", text_eval_args(str(model)))})
        val0 = ctx.evaluate(model.parent / "eval_val_final", text_eval_args(str(model)), split="validation",
                            n=s.n_val)
        curves[seed] = {"val": val_curve(ctx, model), "val_final": val0}
    return {"rows": rows, "curves": curves}
