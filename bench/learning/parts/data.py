"""The data part: the ML-100k data set and the run's random-init tiny model."""
from __future__ import annotations

import json

from bench.common import REPO
from bench.learning.parts import part
from bench.learning.parts.helpers import ML_DATA, tiny_dir
from bench.learning.schedule import PY, Ctx


@part("data", order=0, start=0)
def part_data(ctx: Ctx) -> dict:
    if not (REPO / ML_DATA / "summary.json").exists():
        ctx.run([PY, "-m", "preprocess.movielens", "--output_dir", ML_DATA], ctx.root / "movielens.log")
    tiny = tiny_dir(ctx)
    ctx.run([PY, "-m", "modeling.tiny", "--output_dir", str(tiny), "--dataset_path", ML_DATA, "--hidden_size", "128",
             "--num_layers", "4", "--intermediate_size", "256", "--vocab_size", "4096"], ctx.root / "tiny.log",
            done=tiny / "config.json")
    summary = json.loads((REPO / ML_DATA / "summary.json").read_text())
    return {"ml100k_splits": {k: v["samples"] for k, v in summary["splits"].items()}}
