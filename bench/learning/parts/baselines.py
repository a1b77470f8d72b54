"""The baselines: popularity (list and next-item protocols) and the TRM alone (next item)."""
from __future__ import annotations

from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, trm_dir
from bench.learning.schedule import PY, Ctx


@part("popularity", order=10, start=3, after=["data"])
def part_popularity(ctx: Ctx) -> dict:
    rows = [{"method": "Popularity", "seed": None,
             **ctx.evaluate(ctx.root / "eval_list", ["--baseline", "popularity", "--dataset_path", ML_DATA])},
            {"method": "Popularity", "seed": None,
             **ctx.evaluate(ctx.root / "eval_next", ["--baseline", "popularity", "--dataset_path", ML_DATA,
                                                     "--target_only"])}]
    return {"rows": rows}


@part("trm", order=20, start=2, after=["data"])
def part_trm(ctx: Ctx) -> dict:
    model = trm_dir(ctx)
    ctx.run([PY, "train_trm.py", "--config", "configs/tiny/trm_ml100k.yaml", "--output_dir", str(model)],
            ctx.root / "train.log", done=model / "model.safetensors")
    rows = [{"method": "TRM alone", "seed": None,
             **ctx.evaluate(ctx.root / "eval_next", ["--recommender", "trm", "--model_path", str(model),
                                                     "--dataset_path", ML_DATA, "--target_only"])}]
    return {"rows": rows}
