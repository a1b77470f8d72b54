"""Evaluation: recommenders (text generation + the one matcher, predictions files, baselines) scored through
`rewards` and written to metrics.json / predictions.jsonl.

    from evaluation import TextRecommender, evaluate_recommender, make_backend, load_split

Heavy dependencies (torch, transformers, vllm, datasets) are imported only when used.
"""
from evaluation.backends import (
    GenerationBackend,
    HFBackend,
    StaticBackend,
    VLLMBackend,
    make_backend,
    prompt_key,
    resolve_backend_name,
)
from evaluation.evaluate import (
    DEFAULT_KS,
    PROTOCOLS,
    LoadedSplit,
    Predictions,
    PredictionsError,
    evaluate,
    format_metrics,
    generate_completions,
    groundtruth_completions,
    load_split,
    metric_keys,
    popularity_completions,
    read_prediction_records,
    read_predictions,
    score_completions,
    subset_rows,
    take_subset,
    write_outputs,
)
from evaluation.recommenders import (
    GroundtruthRecommender,
    PopularityRecommender,
    Recommendation,
    Recommender,
    StaticPredictions,
    TextRecommender,
    evaluate_recommender,
    score_recommendations,
    text_item_ids,
)

__all__ = [
    "DEFAULT_KS", "PROTOCOLS", "GenerationBackend", "GroundtruthRecommender", "HFBackend", "LoadedSplit",
    "PopularityRecommender", "Predictions", "PredictionsError", "Recommendation", "Recommender", "StaticBackend",
    "StaticPredictions", "TextRecommender", "VLLMBackend", "evaluate", "evaluate_recommender", "format_metrics",
    "generate_completions", "groundtruth_completions", "load_split", "make_backend", "metric_keys",
    "popularity_completions", "prompt_key", "read_prediction_records", "read_predictions", "resolve_backend_name",
    "score_completions", "score_recommendations", "subset_rows", "take_subset", "text_item_ids", "write_outputs",
]
