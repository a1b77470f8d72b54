"""Trainers built on TRL: the method layer (``core_algos``: advantage estimators, ratios, loss pieces), the shared
trainer base (``base``), list rewards as TRL reward functions (``list_rewards``), Rank-GRPO plus the GRPO / GSPO
baselines (``rank_grpo``) and the token -> item map it relies on.

    from trainers.rank_grpo import RankGRPOConfig, RankGRPOTrainer, trainer_class
    from trainers.token_map import assign_tokens_to_items, build_byte_table, decode_bytes

Names are re-exported lazily so that importing ``trainers.token_map`` does not import TRL.
"""
from __future__ import annotations

_EXPORTS = {
    "RankGRPOConfig": "trainers.rank_grpo",
    "RankGRPOTrainer": "trainers.rank_grpo",
    "ListGRPOTrainer": "trainers.rank_grpo",
    "trainer_class": "trainers.rank_grpo",
    "RecRLConfig": "trainers.base",
    "RecRLTrainer": "trainers.base",
    "assign_tokens_to_items": "trainers.token_map",
    "build_byte_table": "trainers.token_map",
    "decode_bytes": "trainers.token_map",
    "token_byte_lengths": "trainers.token_map",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
