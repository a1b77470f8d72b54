"""Trainers built on TRL: Rank-GRPO (plus the GRPO / GSPO baselines) and the token -> item map it relies on.

    from trainers.rank_grpo import RankGRPOConfig, RankGRPOTrainer
    from trainers.token_map import assign_tokens_to_items, build_byte_table, decode_bytes

Names are re-exported lazily so that importing ``trainers.token_map`` does not import TRL.
"""
from __future__ import annotations

_EXPORTS = {
    "RankGRPOConfig": "trainers.rank_grpo",
    "RankGRPOTrainer": "trainers.rank_grpo",
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
