"""Rank-GRPO (Zhu et al. 2026) and the GRPO / GSPO list baselines: ``trainer`` (config + trainers), ``list_judge``
(the list judgement as TRL reward functions)."""
