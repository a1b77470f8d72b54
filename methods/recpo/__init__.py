"""RecPO / R²ec (You et al. 2025): ``trainer`` (config + trainer: reasoning policy and item head trained jointly),
``recommender`` (the evaluation recommender that ranks the catalog with the head)."""
