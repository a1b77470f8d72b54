"""Probe for tests/test_multiprocess.py's non-finite-loss test (``accelerate launch``): tests/mp_parity_probe.py
(Rank-GRPO, canned completions, plain SGD, a checkpoint per step) with the loss made NaN at step 0 on process 1
ONLY, to exercise ``RecRLTrainer.compute_loss``'s guard (trainers/base.py): every process must skip that step
together (the weights after it are the initial ones) and train normally on the next. Writes
``<record_dir>/nonfinite_rank<r>.json`` (each process's skip count) next to the parity probe's records."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mp_parity_probe  # noqa: E402
import methods.rank_grpo.trainer as rg  # noqa: E402

_orig = rg.RankGRPOTrainer._compute_loss
SKIP_COUNTS: dict = {}


def _nan_on_process_1_at_step_0(self, model, inputs):
    loss = _orig(self, model, inputs)
    if self.state.global_step == 0 and self.accelerator.process_index == 1:
        loss = loss * float("nan")  # a NaN that reaches back into the graph (its backward is NaN, too)
    return loss


rg.RankGRPOTrainer._compute_loss = _nan_on_process_1_at_step_0
_orig_train = rg.RankGRPOTrainer.train


def _train(self, *a, **kw):
    out = _orig_train(self, *a, **kw)
    rank = self.accelerator.process_index
    record_dir = sys.argv[sys.argv.index("--record_dir") + 1]
    os.makedirs(record_dir, exist_ok=True)
    with open(os.path.join(record_dir, f"nonfinite_rank{rank}.json"), "w") as fh:
        json.dump({"process_index": rank, "skipped": getattr(self, "nonfinite_loss_skipped", 0),
                   "log_history": self.state.log_history}, fh)
    return out


rg.RankGRPOTrainer.train = _train

if __name__ == "__main__":
    mp_parity_probe.main()
