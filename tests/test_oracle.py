"""The ground-truth oracle scores the ideal value on every data set a builder produces.

`evaluation.evaluate.groundtruth_completions` writes each sample's ground-truth items in their catalog display
form (`Title (Year)`, or `Title` for a yearless catalog item), one per line. Scored by the one matcher, every K,
both protocols, it must give NDCG@K = 1 and Recall@K = min(|GT|, K) / |GT| on every sample with a ground truth:
any shortfall is a catalog item that no line can ever hit (ReDial's 616 yearless movies scored 0.93 before).

To add a data set (Amazon later): one entry in BUILDS naming its builder module and arguments.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import REDDIT_DIR, REDIAL_DIR, REPO, require

KS = (1, 5, 10, 15, 20)
MAX_ROWS = 10_000


def _recbole_ml100k():
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (it carries ML-100k)")
    return []


# name -> (builder module, function giving its extra CLI arguments; it may skip when its data is absent)
BUILDS = {
    "ml-100k": ("preprocess.movielens", _recbole_ml100k),
    "redial": ("preprocess.redial", lambda: ["--raw_dir", str(require(REDIAL_DIR))]),
    "reddit_v2": ("preprocess.reddit_v2", lambda: ["--raw_dir", str(require(REDDIT_DIR))]),
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request, tmp_path_factory):
    from preprocess.common import load_processed

    module, args = BUILDS[request.param]
    out = tmp_path_factory.mktemp(request.param.replace("-", "_"))
    cmd = [sys.executable, "-m", module, *args(), "--output_dir", str(out), "--no_progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    dd, catalog = load_processed(out)
    return request.param, dd, catalog


@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_groundtruth_oracle_scores_the_ideal_value(built, protocol):
    from evaluation.evaluate import groundtruth_completions, score_completions

    name, dd, catalog = built
    for split in dd:
        ds = dd[split]
        if len(ds) > MAX_ROWS:  # ML-100k's 76k train rows: the first MAX_ROWS say the same and keep the test short
            ds = ds.select(range(MAX_ROWS))
        metrics, rows = score_completions(ds, catalog, groundtruth_completions(ds, catalog), ks=KS,
                                          protocol=protocol, n_items=20)
        gts, seens = list(ds["groundtruth"]), list(ds["seen"])
        scored = [r for r in rows if r["num_groundtruth"] > 0]
        assert scored, f"{name}/{split}: no sample has a ground truth"
        for r in scored:  # the ideal needs a distinct, unseen ground truth; a builder writing anything else is a bug
            gt, seen = gts[r["index"]], set(seens[r["index"]] or [])
            assert len(set(gt)) == len(gt) and not seen & set(gt), (name, split, r["sample_id"], gt, seen)
            assert set(r["statuses"]) == {"hit"}, (name, split, r["sample_id"], r["statuses"], r["item_ids"])
        n_gt = np.array([r["num_groundtruth"] for r in scored])
        for k in KS:
            ndcg = np.array([r[f"ndcg@{k}"] for r in scored])
            recall = np.array([r[f"recall@{k}"] for r in scored])
            worst = int(np.argmin(ndcg))
            assert np.allclose(ndcg, 1.0, rtol=0, atol=1e-12), (name, split, k, scored[worst])
            assert np.allclose(recall, np.minimum(n_gt, min(k, 20)) / n_gt, rtol=0, atol=1e-12), (name, split, k)
            assert all(r[f"hr@{k}"] == 1.0 for r in scored)
