"""Evaluation: greedy generation backends (HF / vLLM / static) and scoring through `rewards` (the one matcher).

    from evaluation import make_backend, evaluate, score_completions, read_predictions

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
    Predictions,
    PredictionsError,
    evaluate,
    format_metrics,
    generate_completions,
    groundtruth_completions,
    load_split,
    metric_keys,
    popularity_completions,
    read_predictions,
    score_completions,
    write_outputs,
)

__all__ = [
    "DEFAULT_KS", "PROTOCOLS", "GenerationBackend", "HFBackend", "Predictions", "PredictionsError", "StaticBackend",
    "VLLMBackend", "evaluate", "format_metrics", "generate_completions", "groundtruth_completions", "load_split",
    "make_backend", "metric_keys", "popularity_completions", "prompt_key", "read_predictions",
    "resolve_backend_name", "score_completions", "write_outputs",
]
