"""RecPO from the SFT model, scored on the next item."""
from __future__ import annotations

from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, sft_start
from bench.learning.schedule import PY, Ctx


@part("recpo", order=50, start=10, after=["sft"])
def part_recpo(ctx: Ctx) -> dict:
    s = ctx.settings
    # the warm-up config (chosen on validation rows: docs/results/NOTES.md item 17) where the schedule has time for it
    config = "configs/tiny/recpo_ml100k_warmup.yaml" if s.recpo_warmup_steps else "configs/tiny/recpo_ml100k.yaml"
    steps = s.recpo_warmup_steps + s.recpo_steps
    rows = []
    for seed in s.seeds:
        start = sft_start(ctx, seed)
        out = ctx.root / f"seed{seed}" / "model"
        ctx.run([PY, "train_recpo.py", "--config", config, "--model_name", str(start),
                 "--dataset_path", ML_DATA, "--output_dir", str(out), "--seed", str(seed),
                 "--rec_warmup_steps", str(s.recpo_warmup_steps), "--max_steps", str(steps),
                 "--save_steps", str(steps)],
                out.parent / "train.log", done=out / "config.json")
        rows.append({"method": "RecPO", "seed": seed,
                     **ctx.evaluate(out.parent / "eval_next",
                                    ["--recommender", "recpo", "--model_path", str(out), "--dataset_path", ML_DATA,
                                     "--category", "movies", "--target_only", "--batch_size", "16",
                                     "--max_new_tokens", "48"])})  # = the config's max_completion_length
    return {"rows": rows}
