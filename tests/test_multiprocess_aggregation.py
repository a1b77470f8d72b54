"""MULTI-PROCESS test: every loss-aggregation option of every RL trainer gives the 1-process result under 2
processes (gloo DDP). tests/test_multiprocess.py's parity test runs each trainer's DEFAULT option (Rank-GRPO
``rank_normalization="paper"``, RecPO ``policy_loss_aggregation="sequence"``, DeepRec ``loss_aggregation="token"``);
this one runs the other option of each (``token``, ``token``, ``sequence``) through the same probe, data and checks:
each process's rows and advantages are the 1-process run's, and the logged losses and the weights after each of the
two SGD updates equal the 1-process run's (tolerances of tests/test_multiprocess.py).

The canned completions differ in length by global row, so the two processes hold different numbers of tokens
(asserted): a token mean taken per process and averaged by data parallelism weighs the process with fewer tokens
more, which is what ``RecRLTrainer.global_token_mean`` corrects. Runtime: ~35 s (1 process) + ~45 s (2 processes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_multiprocess import (  # noqa: F401  (parity_setup is a fixture)
    ADV_TOL,
    B_PARITY,
    N_PROC,
    RL_METHODS,
    STEPS_PARITY,
    _assert_same_losses,
    _assert_same_updates,
    _launch,
    _rl_probe,
    _skip_unless_launchable,
    parity_setup,
)

# the non-default option of each method (flag of tests/mp_parity_probe.py -> value)
OTHER_AGGREGATIONS = {"rank_grpo": ("--rank_grpo_aggregation", "token"),
                      "recpo": ("--recpo_aggregation", "token"),
                      "deeprec": ("--deeprec_aggregation", "sequence")}


def _probe(root, out, batch: int) -> list[str]:
    return _rl_probe(root, out, batch) + [x for method in RL_METHODS for x in OTHER_AGGREGATIONS[method]]


@pytest.mark.multiprocess
def test_two_process_other_aggregations_equal_one_process(parity_setup, tmp_path):
    _skip_unless_launchable("cpu_2proc.yaml")
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    _launch(_probe(parity_setup, one_dir, 2 * B_PARITY), tmp_path, None)
    _launch(_probe(parity_setup, two_dir, B_PARITY), tmp_path, "cpu_2proc.yaml")
    for method in RL_METHODS:
        what = f"{method} ({'='.join(OTHER_AGGREGATIONS[method])})"
        one = json.loads((one_dir / "records" / method / "rank0.json").read_text())
        two = [json.loads((two_dir / "records" / method / f"rank{r}.json").read_text()) for r in range(N_PROC)]
        assert one["num_processes"] == 1 and [t["num_processes"] for t in two] == [N_PROC, N_PROC]
        for s in range(STEPS_PARITY):
            o = one["steps"][s]
            tokens = [sum(t["steps"][s]["completion_tokens"]) for t in two]
            assert tokens[0] != tokens[1], (what, s, tokens)  # uneven token counts across the processes
            for r, t in enumerate(two):
                x, mine = t["steps"][s], slice(r * B_PARITY, (r + 1) * B_PARITY)
                assert x["sample_ids"] == o["sample_ids"][mine], (what, s, r)
                assert x["completion_tokens"] == o["completion_tokens"][mine], (what, s, r)
                np.testing.assert_allclose(np.asarray(x["advantages"], dtype=float),
                                           np.asarray(o["advantages"], dtype=float)[mine],
                                           atol=ADV_TOL * (1 if s == 0 else 10), rtol=0, err_msg=f"{what} step {s}")
        for t in two:
            _assert_same_losses([h["loss"] for h in t["log_history"] if "loss" in h],
                                [h["loss"] for h in one["log_history"] if "loss" in h], what)
        _assert_same_updates(parity_setup / "model", one_dir / "out" / method, two_dir / "out" / method, what)
