"""One package per training method, each standing on the shared floors (``trainers`` for the RL layer,
``evaluation``, ``rewards``, ``preprocess``, ``modeling``, ``retrieval``):

* ``methods.rank_grpo`` -- Rank-GRPO and the GRPO / GSPO list baselines;
* ``methods.recpo`` -- RecPO (R²ec): reasoning policy + item head;
* ``methods.deeprec`` -- DeepRec: multi-turn rollouts that call the TRM.
"""
