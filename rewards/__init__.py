"""The one shared scoring layer: catalog matching, completion parsing, relevance judgement, ranking
metrics and rank-level rewards. Used by training (rewards) and evaluation (metrics) alike; imports
nothing else of the project's."""
from .catalog import (
    MAX_YEAR,
    MIN_YEAR,
    Catalog,
    CatalogError,
    RestrictedUnpickler,
    display_title,
    load_catalog,
    normalize_title,
    restricted_pickle_loads,
    split_title_year,
    resolve_require_year,
    validate_year,
)
from .judge import DUPLICATE, HIT, MISS, OUT_OF_CATALOG, SEEN, STATUSES, Judgement, judge, judge_items
from .metrics import PROTOCOLS, hit_at_k, mean_metrics, ndcg_at_k, ranking_metrics, recall_at_k
from .parse import ParsedItem, parse_items
from .rank_rewards import (
    VALID_SCHEMES,
    RewardScheme,
    batch_rank_rewards,
    batch_sequence_ndcg,
    parse_scheme,
    rank_rewards,
    sequence_ndcg,
)

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "Catalog",
    "CatalogError",
    "RestrictedUnpickler",
    "display_title",
    "load_catalog",
    "normalize_title",
    "restricted_pickle_loads",
    "split_title_year",
    "resolve_require_year",
    "validate_year",
    "DUPLICATE",
    "HIT",
    "MISS",
    "OUT_OF_CATALOG",
    "SEEN",
    "STATUSES",
    "Judgement",
    "judge",
    "judge_items",
    "PROTOCOLS",
    "hit_at_k",
    "mean_metrics",
    "ndcg_at_k",
    "ranking_metrics",
    "recall_at_k",
    "ParsedItem",
    "parse_items",
    "VALID_SCHEMES",
    "RewardScheme",
    "batch_rank_rewards",
    "batch_sequence_ndcg",
    "parse_scheme",
    "rank_rewards",
    "sequence_ndcg",
]
