"""MULTI-PROCESS tests of DeepRec's collective rounds (2 CPU processes, gloo): under ZeRO-3 every ``generate`` is a
collective and TRL's vLLM server mode hands process r the completions ``r * len(prompts)`` onward of everyone's
prompts, so in every round every process must call ``generate`` once with the same number of rows
(``methods.deeprec.rollout.agree_round_rows``; ``methods.deeprec.rollout.run_episodes`` pads with dummy rows and drops them).

* DeepRecTrainer, one process's episodes 3 rounds long and the other's 1 round (tests/mp_deeprec_rounds_probe.py):
  both processes call ``generate`` 3 times with 4 rows each, and every row's episode is its own script's. Under DDP
  (the recorded counts; before the fix process 1 called it once) and, marked ``dist``, under DeepSpeed ZeRO-3 with
  the trainer's real HF ``generate`` under TRL's ``unwrap_model_for_generation`` (before the fix gloo aborted:
  "Received data size doesn't match expected size").
* TRL's real server-mode ``VLLMGeneration.generate`` with a fake client (tests/mp_deeprec_vllm_server_probe.py): with
  uneven row counts every row gets its own completion and the episodes equal a single-process run (before the fix:
  process 1's row got process 0's second row's completion, then the run deadlocked).
"""
from __future__ import annotations

import importlib.util
import json

import pytest
from test_multiprocess import REPO, _launch, _launch_impossible, parity_setup  # noqa: F401  (a fixture)

dist = pytest.mark.dist  # registered in conftest.py: DeepSpeed runs (make test-dist)


def _skip_unless_launchable(launch_config: str):
    reason = _launch_impossible()
    if reason:
        pytest.skip(f"multi-process launch impossible on this machine: {reason}")
    if "zero" in launch_config and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (requirements.txt); the ZeRO CPU runs need it")


def _rounds(parity_setup, tmp_path, launch_config, real_generate):  # noqa: F811
    args = [str(REPO / "tests" / "mp_deeprec_rounds_probe.py"), "--data", str(parity_setup / "data"),
            "--model", str(parity_setup / "model"), "--trm", str(parity_setup / "trm"),
            "--output_dir", str(tmp_path / "out"), "--record_dir", str(tmp_path / "records")]
    _launch(args + (["--real_generate"] if real_generate else []), tmp_path, launch_config, timeout=300)
    return [json.loads((tmp_path / "records" / f"rank{r}.json").read_text()) for r in range(2)]


def _check_rounds(recs):
    from methods.deeprec.rewards import parse_trajectory

    assert [r["process_index"] for r in recs] == [0, 1] and [r["script"] for r in recs] == [2, 0]
    # one generation batch of 4 rows per process; process 0's rows take 3 rounds (2 TRM calls), process 1's 1 round
    for r in recs:
        assert r["generate_rows"] == [4, 4, 4], (r["process_index"], r["generate_rows"])
    for r in recs:
        k = r["script"]
        assert len(r["episodes"]) == 4
        for e in r["episodes"]:  # every row got its own script's turns: k calls, then its answer
            assert e["n_calls"] == k and e["end_reason"] == "answer", e
            assert "junk" not in e["text"] and f"S{k} done" in e["text"]
            assert [f"S{k} think {i}" in e["text"] for i in range(3)] == [i < k for i in range(3)], e["text"]
            assert parse_trajectory(e["text"], real_calls=e["n_calls"]).n_calls == k
        losses = [h["loss"] for h in r["log_history"] if "loss" in h]
        assert len(losses) == 1 and losses[0] == losses[0], r["log_history"]  # one finite-or-zero logged loss


@pytest.mark.multiprocess
def test_deeprec_rounds_are_collective_and_padded_ddp(parity_setup, tmp_path):  # noqa: F811
    _skip_unless_launchable("cpu_2proc.yaml")
    _check_rounds(_rounds(parity_setup, tmp_path, "cpu_2proc.yaml", real_generate=False))


@pytest.mark.multiprocess
@dist
def test_deeprec_rounds_under_zero3_with_real_generate(parity_setup, tmp_path):  # noqa: F811
    _skip_unless_launchable("cpu_2proc_zero3.yaml")
    _check_rounds(_rounds(parity_setup, tmp_path, "cpu_2proc_zero3.yaml", real_generate=True))


@pytest.mark.multiprocess
def test_deeprec_vllm_server_rows_get_their_own_completions(tmp_path):
    _skip_unless_launchable("cpu_2proc.yaml")
    from mp_deeprec_vllm_server_probe import CASES

    _launch([str(REPO / "tests" / "mp_deeprec_vllm_server_probe.py"), "--record_dir", str(tmp_path / "records")],
            tmp_path, "cpu_2proc.yaml", timeout=180)
    recs = [json.loads((tmp_path / "records" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["process_index"] for r in recs] == [0, 1] and [r["num_processes"] for r in recs] == [2, 2]
    requests = []
    for case, per_process in CASES.items():
        refs = recs[0]["cases"][case]["reference"]
        assert refs == recs[1]["cases"][case]["reference"]  # deterministic: both processes computed the same
        a, b = (ref["rows_per_round"] for ref in refs)  # each process's active rows per round, alone
        assert len(a) != len(b), case  # one process finishes its episodes earlier
        agreed = [max(x, y) for x, y in zip(a + [0] * len(b), b + [0] * len(a)) if max(x, y)]
        requests += [2 * n for n in agreed]
        for r, rec in enumerate(recs):
            got, want = rec["cases"][case]["episodes"], refs[r]["episodes"]
            # every process called generate once per round of the busiest process, with the same row count
            assert rec["cases"][case]["generate_rows"] == agreed, (case, r)
            assert len(got) == len(per_process[r])
            for j, (g, w) in enumerate(zip(got, want)):  # each row: its own completions, as without vLLM
                for key in ("completion_ids", "env_mask", "text", "n_calls", "end_reason"):
                    assert g[key] == w[key], (case, r, j, key)
                assert g["n_calls"] == per_process[r][j] and g["end_reason"] == "answer", (case, r, j)
                # vLLM's log-probs on the policy tokens, 0.0 on the injected ones
                assert g["logprobs"] == [-0.5 if m else 0.0 for m in g["env_mask"]], (case, r, j)
    # the main process's client got every process's rows each round: the agreed count x 2 processes
    assert [q["prompts"] for q in recs[0]["client_requests"]] == requests
    assert recs[1]["client_requests"] == []
