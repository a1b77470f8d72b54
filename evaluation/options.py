"""The command-line options of the evaluation scripts (eval_test.py, eval_val.py): the scoring and generation flags and
the output folder name (`evaluation.backends.backend_options` turns the generation flags into a backend)."""
from __future__ import annotations

from evaluation.evaluate import DEFAULT_KS, PROTOCOLS
from evaluation.predictions import normalize_split

DECODINGS = ("greedy", "item_aware")  # modeling/item_decoding.py


def add_evaluation_arguments(parser) -> None:
    """Scoring and generation options of eval_test.py and eval_val.py (their data options, shared with the
    training scripts, come from `cli.args.add_common_script_arguments`)."""
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--protocol", choices=PROTOCOLS, default="packed",
                         help="packed (default; the released Rank-GRPO evaluation: seen and out-of-catalog items are "
                              "removed and the rest packed upward) or strict (positions as generated)")
    scoring.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="cut-offs K (default 5 10 15 20)")

    gen = parser.add_argument_group("generation (greedy)")
    gen.add_argument("--backend", choices=("hf", "vllm", "auto"), default="auto",
                     help="auto = vllm when importable and CUDA is available, else hf (transformers)")
    gen.add_argument("--decoding", choices=DECODINGS, default="greedy",
                     help="greedy, or item_aware: greedy that never emits an item already in the list or in the "
                          "row's seen items (modeling/item_decoding.py; hf backend, one token per title). Written "
                          "to its own <tag>_item_aware folder, beside the plain greedy one")
    gen.add_argument("--max_new_tokens", type=int, default=512)
    gen.add_argument("--batch_size", type=int, default=16, help="hf backend: prompts per generate call")
    gen.add_argument("--max_prompt_length", type=int, default=None,
                     help="cut the history (oldest first, never the instruction) so the templated prompt has at most this "
                          "many tokens")
    gen.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    gen.add_argument("--trust_remote_code", action="store_true")
    gen.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm backend")
    gen.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vllm backend")
    gen.add_argument("--max_model_len", type=int, default=None, help="vllm backend")
    gen.add_argument("--no_progress", action="store_true", help="no progress bars")


def output_tag(split: str, protocol: str, decoding: str = "greedy") -> str:
    """Folder / file stem of an evaluation: `eval_<split>` (packed) or `eval_<split>_<protocol>`, plus
    `_item_aware` for that decoding (so its numbers sit beside plain greedy's, never in their place)."""
    split = normalize_split(split)
    tag = f"eval_{split}" if protocol == "packed" else f"eval_{split}_{protocol}"
    return tag if decoding == "greedy" else f"{tag}_{decoding}"
