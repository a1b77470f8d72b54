"""Evaluation: every recommender scored through `rewards` and written to metrics.json / predictions.jsonl.

* `evaluate` -- scoring and the one entry point, `evaluate_recommender`;
* `recommenders` -- what is scored (text generation, predictions files, the baselines, the TRM alone);
* `registry` -- recommenders by name, each registered where it is defined (eval_test.py builds from it);
* `predictions` -- the split and its subset in, the predictions file out (and back);
* `backends` -- text generation (transformers, vLLM, fixed texts); `options` -- the eval scripts' flags;
* `checkpoints`, `plots` -- eval_val.py's checkpoint series and its curves.

Import the submodules; heavy dependencies (torch, transformers, vllm, datasets) are imported only when used.
"""
