"""methods/rank_grpo/list_judge.py: the list rewards as TRL reward functions -- one judgement per batch shared by all of
them, the sums they return against hand-computed values, the one require_year rule, and the trainer's wiring."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rewards.catalog import Catalog, resolve_require_year
from methods.rank_grpo.list_judge import (
    ListJudge,
    length_shaping_func,
    rank_reward_sum_func,
    sequence_reward_func,
)

MOVIES = Catalog([{"id": 0, "title": "Heat", "year": 1995}, {"id": 1, "title": "Alien", "year": 1979},
                  {"id": 2, "title": "Fargo", "year": 1996}, {"id": 3, "title": "Casablanca", "year": 1942}])
PRODUCTS = Catalog([{"id": 0, "title": "Super Mario Odyssey", "year": None},
                    {"id": 1, "title": "Halo 5 Guardians", "year": None},
                    {"id": 2, "title": "Tetris Effect", "year": None}])


def _args(**kw):
    base = dict(n_items=3, overflow_penalty=-0.1, early_stop_penalty=-0.1, eos_bonus=0.0, reward_func="exp_inf")
    base.update(kw)
    return SimpleNamespace(**base)


def _judge(catalog, args, eos=99):
    text_of = {}

    def decode(ids):
        return text_of[tuple(i for i in ids if i != eos)]

    j = ListJudge(catalog, args, resolve_require_year(catalog, None), decode, {eos})
    return j, text_of


def test_reward_functions_share_one_judgement_and_return_the_hand_computed_values():
    args = _args()
    judge, text_of = _judge(MOVIES, args)
    texts = ["Heat (1995)\nAlien (1979)\nFargo (1996)", "Casablanca (1942)\nNot A Movie (2001)",
             "Fargo (1996)\nHeat (1995)\nAlien (1979)\nCasablanca (1942)"]
    ids = [[i + 1] for i in range(3)]
    for row, t in zip(ids, texts):
        text_of[tuple(row)] = t
    ids[1] = ids[1] + [99]  # ended with EOS after 2 items: early stop
    gt, seen = [[0, 2], [3], [1]], [[], [], [2]]
    calls = []
    funcs = [rank_reward_sum_func(judge, "exp_inf"), length_shaping_func(judge), sequence_reward_func(judge, "ndcg")]
    assert [f.__name__ for f in funcs] == ["rank_exp_inf", "length_shaping", "ndcg"]
    out = [f(prompts=[None] * 3, completions=texts, completion_ids=ids, groundtruth=gt, seen=seen,
             log_metric=lambda n, v: calls.append((n, v))) for f in funcs]
    # rank sums: hits = [Heat, Fargo] / [Casablanca] / [Alien at rank 3] (Fargo is seen)
    assert out[0] == [2.0, 1.0, 1.0]
    # tail: sample 1 stopped early; sample 2 has text after item N=3 (overflow)
    assert out[1] == [0.0, pytest.approx(-0.1), pytest.approx(-0.1)]
    ndcg = [(1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), 1.0, (1 / math.log2(4)) / 1.0]
    assert out[2] == pytest.approx(ndcg)
    # judged once: each statistic logged once per completion, whatever the number of reward functions
    names = [n for n, _ in calls]
    assert names.count("hit_rate") == 3 and names.count("ndcg") == 3
    cat = [v for n, v in calls if n == "items/catalog_ratio"]
    assert cat == [1.0, 0.5, 1.0]  # Judgement.catalog_hit_ratio over the first N parsed items
    scores, taken_ids = judge.take()
    assert len(scores) == 3 and taken_ids == ids
    with pytest.raises(RuntimeError, match="did not run"):
        judge.take()


def test_missing_groundtruth_column_is_a_clear_error():
    judge, _ = _judge(MOVIES, _args())
    with pytest.raises(KeyError, match="groundtruth"):
        sequence_reward_func(judge, "ndcg")(prompts=[], completions=[], completion_ids=[])


def test_require_year_follows_the_catalog_like_evaluation():
    assert resolve_require_year(MOVIES) is True and resolve_require_year(PRODUCTS) is False
    assert resolve_require_year(PRODUCTS, True) is True and resolve_require_year(MOVIES, False) is False
    judge, text_of = _judge(PRODUCTS, _args(n_items=2))
    text_of[(1,)] = "1. Tetris Effect\n2. Halo 5 Guardians"
    r = rank_reward_sum_func(judge, "exp_inf")(prompts=[None], completions=[None], completion_ids=[[1]],
                                               groundtruth=[[1]], seen=[[]])
    assert r == [1.0]  # yearless product titles are items: the Amazon case training used to get wrong
