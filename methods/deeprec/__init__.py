"""DeepRec (Zheng et al. 2025): ``trainer`` (config + trainer), ``rollout`` (the multi-turn episode loop that calls
the TRM, and the evaluation recommender), ``rewards`` (trajectory parsing, format checks, the reward terms)."""

# imported for its side effect: DeepRecRecommender registers itself with evaluation.registry (eval_test.py's
# --recommender deeprec); cli.recommenders imports every method package to find them
from methods.deeprec import rollout  # noqa: F401,E402
