"""DeepRec: warm-start data and SFT, two RL stages with the TRM, scored on the next item with the episodes the
stage configs train."""
from __future__ import annotations

from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, sft_start, tiny_dir, trm_dir
from bench.learning.schedule import PY, Ctx, PartFailed


# DeepRec is evaluated with the episodes its stage configs train (chat prompts, 3 calls of 10 items, token budgets)
DEEPREC_EPISODE = ["--episode_config", "configs/tiny/deeprec_ml100k_stage2.yaml"]


@part("deeprec", order=60, start=5, after=["sft", "trm"])
def part_deeprec(ctx: Ctx) -> dict:
    s = ctx.settings
    trm = trm_dir(ctx)
    if not (trm / "model.safetensors").exists():
        raise PartFailed(f"needs the TRM {trm}: run --only trm first")
    ws_data = ctx.root / "warmstart_data"
    ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage1.yaml", "--trm_path", str(trm),
             "--dataset_path", ML_DATA, "--model_name", str(tiny_dir(ctx)), "--write_warmstart_data", str(ws_data),
             "--max_train_samples", "2000"], ctx.root / "warmstart_data.log", done=ws_data / "train")
    rows = []
    for seed in s.seeds:
        base = ctx.root / f"seed{seed}"
        # the format warm-start is SFT: trained once per SFT seed, from that seed's list SFT model (as SFT is shared)
        own_ws = seed in s.seeds[:s.n_sft_seeds]
        ws = (base if own_ws else ctx.root / f"seed{s.seeds[0]}") / "warmstart_sft"
        if own_ws:
            ctx.run([PY, "train_sft.py", "--config", "configs/tiny/deeprec_ml100k_warmstart_sft.yaml", "--model_name",
                     str(sft_start(ctx, seed)), "--dataset_path", str(ws_data), "--output_dir", str(ws), "--seed",
                     str(seed), "--max_steps", str(s.deeprec_ws_steps)], base / "warmstart_sft.log",
                    done=ws / "config.json")
        common = ["--model_name", str(ws), "--trm_path", str(trm), "--dataset_path", ML_DATA, "--seed", str(seed),
                  "--max_steps", str(s.deeprec_steps), "--save_steps", str(s.deeprec_steps)]
        st1, st2 = base / "stage1", base / "stage2"
        ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage1.yaml", *common,
                 "--output_dir", str(st1)], base / "stage1.log", done=st1 / "config.json")
        ctx.run([PY, "train_deeprec.py", "--config", "configs/tiny/deeprec_ml100k_stage2.yaml", *common,
                 "--init_from", str(st1), "--output_dir", str(st2)], base / "stage2.log", done=st2 / "config.json")
        for label, model in ([("DeepRec warm-start SFT", ws)] if own_ws else []) + [("DeepRec stage 2", st2)]:
            rows.append({"method": label, "seed": seed,
                         **ctx.evaluate(base / f"eval_next_{model.name}",
                                        ["--recommender", "deeprec", "--model_path", str(model), "--trm_path",
                                         str(trm), "--dataset_path", ML_DATA, "--target_only", "--batch_size", "16",
                                         *DEEPREC_EPISODE],
                                        n=s.n_test_agent)})
    return {"rows": rows}
