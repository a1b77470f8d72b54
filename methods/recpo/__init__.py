"""RecPO / R²ec (You et al. 2025): ``trainer`` (config + trainer: reasoning policy and item head trained jointly),
``head`` (the item table, the learned projection, the user / item vectors, the reward terms scored against the table
and the recommendation loss's pieces), ``recommender`` (the evaluation recommender that ranks the catalog with the
head)."""
