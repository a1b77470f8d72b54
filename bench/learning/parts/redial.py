"""ReDial with the pretrained SmolLM2-135M-Instruct: zero-shot, SFT, GRPO, Rank-GRPO (exp_inf)."""
from __future__ import annotations

from bench.common import REPO, SHARED_DATA
from bench.learning.parts import part
from bench.learning.parts.helpers import reward_curve, text_eval_args
from bench.learning.schedule import PY, Ctx, PartFailed


REDIAL_DATA = "processed_datasets/redial"
SMOL = "models/smollm2-135m-instruct"


# it needs only the data: it fills the other core while SFT runs
@part("redial", order=70, start=4, after=["data"])
def part_redial(ctx: Ctx) -> dict:
    """ReDial with the pretrained SmolLM2-135M-Instruct: zero-shot, SFT, GRPO, Rank-GRPO (exp_inf); seed 0 only."""
    s = ctx.settings
    n = s.redial_n_test
    if not (REPO / REDIAL_DATA / "summary.json").exists():
        raw = SHARED_DATA / "redial_official"
        if not raw.is_dir():
            raise PartFailed(f"needs the ReDial files in {raw} (see ../shared/data/SOURCES.md); not found")
        ctx.run([PY, "-m", "preprocess.redial", "--raw_dir", str(raw), "--output_dir", REDIAL_DATA],
                ctx.root / "preprocess.log")
    if not (REPO / SMOL / "config.json").exists():
        ctx.run([PY, "-m", "modeling.pretrained", "--name", "smollm2-135m-instruct", "--output_dir", SMOL],
                ctx.root / "smollm2.log")
    eval_args = lambda m: text_eval_args(m, REDIAL_DATA)  # noqa: E731
    rows = [{"method": "SmolLM2-135M zero-shot", "seed": 0,
             **ctx.evaluate(ctx.root / "eval_zero_shot", eval_args(SMOL), n=n)}]
    sft = ctx.root / "sft"
    ctx.run([PY, "train_sft.py", "--config", "configs/tiny/sft_ml100k.yaml", "--model_name", SMOL,
             "--dataset_path", REDIAL_DATA, "--output_dir", str(sft), "--max_steps", str(s.redial_sft_steps),
             "--learning_rate", "5.0e-5", "--per_device_train_batch_size", "4", "--max_train_samples", "2662",
             "--save_strategy", "no", "--eval_strategy", "no", "--seed", "0"],
            ctx.root / "sft.log", done=sft / "config.json")
    rows.append({"method": "SmolLM2-135M SFT", "seed": 0,
                 **ctx.evaluate(ctx.root / "eval_sft", eval_args(str(sft)), n=n)})
    curves = {}
    for label, tag, algo in (("SmolLM2-135M GRPO", "grpo", ["--algorithm", "grpo"]),
                             ("SmolLM2-135M Rank-GRPO (exp_inf)", "rank_grpo_exp_inf",
                              ["--algorithm", "rank_grpo", "--reward_func", "exp_inf"])):
        out = ctx.root / tag
        ctx.run([PY, "train_rank_grpo.py", "--config", "configs/tiny/rank_grpo_redial.yaml", "--model_name", str(sft),
                 "--dataset_path", REDIAL_DATA, "--output_dir", str(out), "--max_steps", str(s.redial_rl_steps),
                 "--max_completion_length", "192", "--save_strategy", "steps", "--save_steps",
                 str(s.redial_rl_steps), "--seed", "0", *algo],
                ctx.root / f"{tag}.log", done=out / "config.json")
        rows.append({"method": label, "seed": 0,
                     **ctx.evaluate(ctx.root / f"eval_{tag}", eval_args(str(out)), n=n)})
        curves[tag] = reward_curve(out)
    return {"rows": rows, "curves": {"reward": curves}}
