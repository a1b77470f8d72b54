"""The one shared scoring layer: catalog matching, completion parsing, relevance judgement, ranking
metrics and rank-level rewards. Used by training (rewards) and evaluation (metrics) alike; imports
nothing else of the project's. Import the submodules (``rewards.catalog``, ``rewards.judge``, ``rewards.metrics``,
``rewards.parse``, ``rewards.rank_rewards``, ...)."""
