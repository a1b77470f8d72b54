"""DeepRec (Zheng et al. 2025): ``trainer`` (config + trainer), ``rollout`` (the multi-turn episode loop that calls
the TRM, its HF and vLLM generators, and the evaluation recommender), ``rewards`` (trajectory parsing, format checks,
the reward terms), ``judge`` (the terms as TRL reward functions over one judgement per batch; R_sim's item
embeddings), ``warmstart`` (the gate a format-warm-started model passes before stage 1). Its data (difficulty
selection, warm-start SFT rows) is built by ``preprocess.deeprec_data``, its prompt by
``preprocess.deeprec_prompts``."""

# imported for its side effect: DeepRecRecommender registers itself with evaluation.registry (eval_test.py's
# --recommender deeprec); cli.recommenders imports every method package to find them
from methods.deeprec import rollout  # noqa: F401,E402
