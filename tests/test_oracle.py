"""The ground-truth oracle scores the ideal value on every data set a builder produces.

`evaluation.recommenders.GroundtruthRecommender.completions` writes each sample's ground-truth items in their catalog display
form (`Title (Year)`, or `Title` for a yearless catalog item), one per line. Scored by the one matcher, every K,
both protocols, it must give NDCG@K = 1 and Recall@K = min(|GT|, K) / |GT| on every sample that can be scored:
any shortfall is a catalog item that no line can ever hit (ReDial's 616 yearless movies scored 0.93 before; the
BIGRec/D3 CSV fixture's long product titles 0.4545). Rows that cannot be scored (an empty ground truth, or one that
is all in `seen`) are left out of the means and counted (`num_unscorable`).

Every builder's output: MovieLens 100k (RecBole's copy) / 1M / latest (small hand-written files with a.k.a. titles
and an NFD twin), ReDial and Reddit-v2 (../shared/data), Amazon 2023 (tests/fixtures/amazon2023), atomic (LLMRank's
Amazon-2018 Games, 300 users) and CSV (tests/fixtures/amazon_csv_long, and the same Games data rewritten in the
BIGRec/D3 CSV layout). To add a data set: one entry in BUILDS naming its builder module and arguments.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import AMAZON_DIR, REDDIT_DIR, REDIAL_DIR, REPO, require

KS = (1, 5, 10, 15, 20)
MAX_ROWS = 10_000


FIXTURES = REPO / "tests" / "fixtures"
ML_TITLES = ["Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", "Seven (a.k.a. Se7en) (1995)", "Usual Suspects, The (1995)",
             "L\u00e9on: The Professional (a.k.a. The Professional) (L\u00e9on) (1994)", "Am\u00e9lie (2001)",
             "Ame\u0301lie (2001)", "Heat (1995)", "Cit\u00e9 des enfants perdus, La (1995)"]


def _recbole_ml100k(tmp):
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (it carries ML-100k)")
    return []


def _ratings(n, n_users=6):
    """(user, movie, timestamp): user u rates the n movies in a rotated order, so targets differ between users."""
    return [(u, (u + k) % n + 1, 1000 * u + k) for u in range(1, n_users + 1) for k in range(n)]


def _ml_1m(tmp):
    titles = [t for t in ML_TITLES if "\u0301" not in t]  # ml-1m files are Latin-1: no combining accent
    (tmp / "movies.dat").write_bytes("".join(f"{i}::{t}::Drama\n" for i, t in enumerate(titles, 1)).encode("latin-1"))
    (tmp / "ratings.dat").write_text("".join(f"{u}::{m}::4::{t}\n" for u, m, t in _ratings(len(titles))),
                                     encoding="latin-1")
    return ["--raw_dir", str(tmp), "--min_history", "2", "--num_groundtruth", "3"]


def _ml_latest(tmp):
    (tmp / "movies.csv").write_text("movieId,title,genres\n" + "".join(f'{i},"{t}",Drama\n'
                                                                        for i, t in enumerate(ML_TITLES, 1)),
                                    encoding="utf-8")
    (tmp / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},4.0,{t}\n" for u, m, t in _ratings(len(ML_TITLES))), encoding="utf-8")
    return ["--raw_dir", str(tmp), "--min_history", "2", "--num_groundtruth", "3"]


def _amazon_csv_from_games(tmp, n_users=300):
    """LLMRank's Amazon-2018 Games (titles, leave-one-out sequences) rewritten in the BIGRec/D3 CSV layout: train =
    every prefix of the validation history, valid = (history, validation target), test = (history, test target)."""
    import csv

    def rows(name):
        lines = require(AMAZON_DIR / name).read_text(encoding="utf-8").splitlines()[1:]
        return [ln.split("\t") for ln in lines if ln.strip()]

    titles = {int(r[0]): r[1] for r in rows("Games.item")}
    seqs = {split: {r[0]: ([int(x) for x in r[1].split()], int(r[2])) for r in rows(f"Games-6k.{split}.inter")}
            for split in ("valid", "test")}
    users = sorted(seqs["valid"])[:n_users]
    samples = {"train": [(u, seqs["valid"][u][0][:i], seqs["valid"][u][0][i]) for u in users
                         for i in range(1, len(seqs["valid"][u][0]))],
               "valid": [(u, *seqs["valid"][u]) for u in users], "test": [(u, *seqs["test"][u]) for u in users]}
    for split, recs in samples.items():
        (tmp / split).mkdir()
        with open(tmp / split / "Games.csv", "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["user_id", "history_item_title", "item_title", "history_item_id", "item_id"])
            out.writerows([u, repr([titles[i] for i in h]), titles[t], repr(h), t] for u, h, t in recs)
    index = tmp / "Games.item.json"
    index.write_text(json.dumps({str(i): {"title": t} for i, t in titles.items()}), encoding="utf-8")
    return ["--format", "csv", "--raw_dir", str(tmp), "--category", "Games", "--item_index", str(index)]


# name -> (builder module, function of a scratch folder giving its extra CLI arguments; it may skip when its data is
# absent)
BUILDS = {
    "ml-100k": ("preprocess.movielens", _recbole_ml100k),
    "ml-1m": ("preprocess.movielens", _ml_1m),
    "ml-latest": ("preprocess.movielens", _ml_latest),
    "redial": ("preprocess.redial", lambda tmp: ["--raw_dir", str(require(REDIAL_DIR))]),
    "reddit_v2": ("preprocess.reddit_v2", lambda tmp: ["--raw_dir", str(require(REDDIT_DIR))]),
    "amazon-2023": ("preprocess.amazon", lambda tmp: [
        "--format", "2023", "--raw_dir", str(FIXTURES / "amazon2023"), "--category", "Video_Games",
        "--source_kcore", "0", "--min_items", "1"]),
    "amazon-atomic": ("preprocess.amazon", lambda tmp: [
        "--format", "atomic", "--raw_dir", str(require(AMAZON_DIR)), "--category", "Games", "--max_users", "300"]),
    "amazon-csv": ("preprocess.amazon", lambda tmp: [
        "--format", "csv", "--raw_dir", str(FIXTURES / "amazon_csv_long"), "--category", "Video_Games",
        "--item_index", str(FIXTURES / "amazon_csv_long" / "Video_Games.item.json")]),
    "amazon-csv-games": ("preprocess.amazon", _amazon_csv_from_games),
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request, tmp_path_factory):
    from preprocess.contract import load_processed

    module, args = BUILDS[request.param]
    raw = tmp_path_factory.mktemp(request.param.replace("-", "_") + "_raw")
    out = tmp_path_factory.mktemp(request.param.replace("-", "_"))
    cmd = [sys.executable, "-m", module, *args(raw), "--output_dir", str(out), "--no_progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    dd, catalog = load_processed(out)
    return request.param, dd, catalog


@pytest.mark.parametrize("protocol", ["packed", "strict"])
def test_groundtruth_oracle_scores_the_ideal_value(built, protocol):
    from evaluation.evaluate import score_completions
    from evaluation.recommenders import GroundtruthRecommender

    name, dd, catalog = built
    for split in dd:
        ds = dd[split]
        if len(ds) > MAX_ROWS:  # ML-100k's 76k train rows: the first MAX_ROWS say the same and keep the test short
            ds = ds.select(range(MAX_ROWS))
        metrics, rows = score_completions(ds, catalog, GroundtruthRecommender(catalog).completions(ds), ks=KS,
                                          protocol=protocol, n_items=20)
        gts, seens = list(ds["groundtruth"]), list(ds["seen"])
        scored = [r for r in rows if "unscorable" not in r]
        assert scored, f"{name}/{split}: no sample can be scored"
        assert metrics["num_samples"] == len(scored) and metrics["num_unscorable"] == len(rows) - len(scored)
        for r in rows:  # left out only when no list can reach the ground truth (empty, or all in seen)
            gt = {catalog.canonical_id(g) for g in gts[r["index"]]}
            seen = {catalog.canonical_id(i) for i in seens[r["index"]] or []}
            assert ("unscorable" in r) == (not gt or gt <= seen), (name, split, r["sample_id"], gt, seen)
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
