"""What the root scripts share: their arguments (`args`), how they end on one of the project's errors (`run`), their
logging (`run_logging`), the RL scripts' start and save (`training`) and the recommenders eval_test.py can build
(`recommenders`). Imported by the root scripts only: nothing below them imports cli/."""
