"""The RL layer every method stands on: ``base`` (``RecRLConfig`` / ``RecRLTrainer``, TRL's ``GRPOTrainer`` with the
catalog, prompt fitting, the shared loss template and named metrics), ``core_algos`` (advantage estimators, ratios,
policy losses and aggregations, registered by name), ``reward_adapter`` (``BatchJudge``: one judgement per batch,
its named terms as TRL reward functions), ``distributed`` (gather with gradient, collective maximum),
``checkpointing``, ``token_map`` (token -> item spans) and ``console`` (the compact log line). It imports nothing of
``cli/`` (the scripts' layer above it). The methods themselves are packages under ``methods/``."""
