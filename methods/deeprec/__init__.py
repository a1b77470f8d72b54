"""DeepRec (Zheng et al. 2025): ``trainer`` (config + trainer), ``rollout`` (the multi-turn episode loop that calls
the TRM, and the evaluation recommender), ``rewards`` (trajectory parsing, format checks, the reward terms)."""
