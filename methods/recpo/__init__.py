"""RecPO / R²ec (You et al. 2025): ``trainer`` (config + trainer: reasoning policy and item head trained jointly),
``head`` (the item table, the learned projection, the user / item vectors, the reward terms scored against the table
and the recommendation loss's pieces), ``recommender`` (the evaluation recommender that ranks the catalog with the
head)."""

# imported for its side effect: RecPORecommender registers itself with evaluation.registry (eval_test.py's
# --recommender recpo); cli.recommenders imports every method package to find them
from methods.recpo import recommender  # noqa: F401,E402
