"""MULTI-PROCESS test: a real 2-process CPU (gloo) Rank-GRPO run in which every prompt group is SPLIT across the
two processes, checked against a slow Eq. 7 reference in the parent process.

Setup: per_device_train_batch_size = 2, num_generations = G = 4, 2 processes -> each step's global batch is ONE
prompt group of 4 rows; process 0 holds rows 0-1 and process 1 rows 2-3. Generation is replaced by canned
completions (tests/mp_rank_grpo_probe.py) chosen from each row's global index, so the two processes' rows get
different, non-trivial rewards. The probe records what each process computed; this test checks that:

  (1) both processes ran and saw the same gathered (B_global, N) rank rewards and (B_global,) tail rewards, equal to
      the rewards expected for the canned completions, with process r's local rows at rows r*B..(r+1)*B-1;
  (2) each process's local (B_local, N+1) advantages equal the slow Eq. 7 reference of ITS rows of the gathered
      matrix;
  (3) some group has non-zero advantages on both processes, and process 1's rows differ from rows 0..B_local-1,
      so a wrong ``process_slice`` (e.g. every process keeping rows 0..B_local-1) fails (2);
  (4) the run finished with a finite logged loss.

Launch: ``accelerate launch --config_file configs/accelerate/cpu_2proc.yaml`` (``--cpu --num_processes 2`` silently
runs ONE process). Skipped, with the reason, only when a multi-process launch is impossible here (no
torch.distributed / gloo / accelerate, or no localhost TCP port for the rendezvous); a launch that fails is a FAIL.
Deselect with ``-m "not multiprocess"``. About 10-15 s on 2 CPU cores (the launch itself ~9 s).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from test_rank_grpo import ref_advantages  # the one slow Eq. 7 reference

multiprocess = pytest.mark.multiprocess  # registered in conftest.py

TITLES = [("The Matrix", 1999), ("Toy Story", 1995), ("Star Wars", 1977), ("Pulp Fiction", 1994), ("Fargo", 1996),
          ("The Godfather", 1972), ("Casablanca", 1942), ("Alien", 1979), ("Heat", 1995), ("Se7en", 1995),
          ("Twelve Monkeys", 1995), ("Jurassic Park", 1993), ("Titanic", 1997), ("Spirited Away", 2001)]
GROUNDTRUTH, SEEN = [0, 3, 4], [1]  # The Matrix, Pulp Fiction, Fargo; Toy Story was seen
N, G, B_LOCAL, N_PROC, STEPS, EPS = 5, 4, 2, 2, 2, 1e-4

# (completion text, ends with EOS, expected exp_inf rank rewards = strict relevance of the first N items, tail reward)
CANNED = [
    ("The Matrix (1999)\nToy Story (1995)\nFargo (1996)\nAlien (1979)\nHeat (1995)", True,
     [1, 0, 1, 0, 0], 0.0),  # hit, seen, hit, miss, miss; EOS after exactly N: no shaping
    ("Star Wars (1977)\nPulp Fiction (1994)", True,
     [0, 1, 0, 0, 0], -0.1),  # EOS with 2 < N items: early stop
    ("Pulp Fiction (1994)\nThe Matrix (1999)\nAlien (1979)\nHeat (1995)\nFargo (1996)\nSe7en (1995)", False,
     [1, 1, 0, 0, 1], -0.1),  # a 6th item after item N: overflow (truncated, no EOS)
    ("Here:\n\nAlien (1979)\nHeat (1995)\nFargo (1996)", True,
     [0, 0, 1, 0, 0], -0.1),  # preamble (no item), 3 items then EOS: early stop
]


def _launch_impossible() -> str | None:
    """Why a multi-process CPU launch cannot work on this machine (None: it can)."""
    if importlib.util.find_spec("accelerate") is None:
        return "accelerate is not installed"
    if not torch.distributed.is_available():
        return "this torch build has no torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "this torch build has no gloo backend (needed for multi-process CPU runs)"
    try:
        _free_port()
    except OSError as exc:
        return f"cannot open a localhost TCP port for the process-group rendezvous: {exc}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_mp_setup(tmp_path):
    """Processed data set (6 prompts sharing groundtruth/seen, N = 5) + tiny random Qwen3 with a small BPE."""
    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion, save_processed

    catalog = [{"id": i, "title": t, "year": y} for i, (t, y) in enumerate(TITLES)]
    recs = [{"sample_id": f"s{s}", "prompt": build_prompt(f"I liked {TITLES[5 + s][0]}.", n_items=N),
             "completion": format_completion(["The Matrix (1999)"]), "groundtruth": GROUNDTRUTH, "seen": SEEN,
             "history": [], "target": None, "timestamp": None} for s in range(6)]
    data = tmp_path / "data"
    save_processed(data, {"train": recs}, catalog, {"name": "tiny_mp"}, quiet=True, progress=False)
    model = tmp_path / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    canned = tmp_path / "canned.json"
    canned.write_text(json.dumps([[text, eos] for text, eos, _, _ in CANNED]))
    return data, model, canned


def _run_probe(tmp_path, data, model, canned, attempts=2):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    for attempt in range(attempts):
        record_dir = tmp_path / f"records{attempt}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
               "--main_process_port", str(_free_port()),
               str(REPO / "tests" / "mp_rank_grpo_probe.py"),
               "--data", str(data), "--model", str(model), "--canned", str(canned),
               "--output_dir", str(tmp_path / f"out{attempt}"), "--record_dir", str(record_dir),
               "--n_items", str(N), "--per_device_train_batch_size", str(B_LOCAL), "--num_generations", str(G),
               "--max_steps", str(STEPS), "--max_completion_length", "48"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the two workers it started
            out, _ = proc.communicate()
            pytest.fail(f"2-process run timed out after 240 s; output tail:\n{out[-4000:]}")
        port_taken = "address already in use" in out.lower() or "EADDRINUSE" in out
        if proc.returncode == 0 or not port_taken:
            break  # retry only when another program grabbed the port between _free_port() and the rendezvous
    assert proc.returncode == 0, f"2-process run failed (rc {proc.returncode}); output tail:\n{out[-6000:]}"
    files = sorted(p.name for p in record_dir.iterdir())
    assert files == ["rank0.json", "rank1.json"], (files, out[-3000:])
    return [json.loads((record_dir / f"rank{r}.json").read_text()) for r in range(N_PROC)]


@multiprocess
def test_two_process_rank_grpo_split_groups_get_their_own_rows_advantages(tiny_mp_setup, tmp_path):
    reason = _launch_impossible()
    if reason:
        pytest.skip(f"multi-process launch impossible on this machine: {reason}")
    data, model, canned = tiny_mp_setup
    recs = _run_probe(tmp_path, data, model, canned)

    # ---- (1) two distinct processes, same gathered rewards, equal to the canned completions' expected rewards
    assert [r["process_index"] for r in recs] == [0, 1]
    assert [r["num_processes"] for r in recs] == [N_PROC, N_PROC]
    assert [len(r["steps"]) for r in recs] == [STEPS, STEPS]
    nonzero_on_both = 0
    for s in range(STEPS):
        st = [r["steps"][s] for r in recs]
        assert [x["global_step"] for x in st] == [s, s]
        assert st[0]["gathered_rank_rewards"] == st[1]["gathered_rank_rewards"]
        assert st[0]["gathered_tail_rewards"] == st[1]["gathered_tail_rewards"]
        R = st[0]["gathered_rank_rewards"]
        tail = st[0]["gathered_tail_rewards"]
        assert len(R) == N_PROC * B_LOCAL == G and all(len(row) == N for row in R)
        for x in st:
            assert (x["num_generations"], x["adv_eps"], x["length_shaping"]) == (G, EPS, "reward")
        # the group really spans both processes: one prompt, 2 rows on each process
        prompts = st[0]["prompts"] + st[1]["prompts"]
        assert len(prompts) == G and len(set(prompts)) == 1, prompts
        for j in range(G):  # global row j holds canned[(j + s) % 4]: expected rewards, hand-derived
            _, _, rel, tail_want = CANNED[(j + s) % len(CANNED)]
            assert R[j] == pytest.approx(rel, abs=0) and tail[j] == pytest.approx(tail_want, abs=1e-7), (s, j)
        for r, x in enumerate(st):  # process r's local rows are gathered rows r*B .. (r+1)*B-1
            rows = range(r * B_LOCAL, (r + 1) * B_LOCAL)
            assert x["canned_index"] == [(j + s) % len(CANNED) for j in rows]
            assert x["completions"] == [CANNED[(j + s) % len(CANNED)][0] for j in rows]
            assert x["ended_with_eos"] == [CANNED[(j + s) % len(CANNED)][1] for j in rows]
            assert x["local_rank_rewards"] == [R[j] for j in rows]
            assert x["local_tail_rewards"] == [tail[j] for j in rows]
            assert x["gathered_seq_rewards"] == pytest.approx([sum(R[j]) + tail[j] for j in range(G)], abs=1e-6)

        # ---- (2) each process's local advantages = the Eq. 7 reference of ITS rows of the gathered matrix
        A = ref_advantages([row + [t] for row, t in zip(R, tail)], G, EPS)  # tail = column N ("reward" shaping)
        for r, x in enumerate(st):
            mine = A[r * B_LOCAL:(r + 1) * B_LOCAL]
            assert len(x["advantages"]) == B_LOCAL and all(len(a) == N + 1 for a in x["advantages"])
            assert x["item_index_shape"][0] == B_LOCAL
            for got_row, want_row in zip(x["advantages"], mine):
                for got, want in zip(got_row, want_row):
                    assert got == pytest.approx(want, abs=1e-6), (s, r, x["advantages"], mine)

        # ---- (3) non-trivial on both processes, and a wrong slice (rows 0..B_local-1 everywhere) would be caught
        if all(any(abs(a) > 0.1 for row in A[r * B_LOCAL:(r + 1) * B_LOCAL] for a in row) for r in range(N_PROC)):
            nonzero_on_both += 1
        wrong = A[:B_LOCAL]
        assert max(abs(g - w) for gr, wr in zip(st[1]["advantages"], wrong) for g, w in zip(gr, wr)) > 0.1
    assert nonzero_on_both == STEPS

    # ---- (4) finished, with a finite logged loss (the Trainer logs the cross-process mean on every process)
    for r in recs:
        logs = [h for h in r["log_history"] if "loss" in h]
        assert len(logs) == STEPS, r["log_history"]
        for h in logs:
            assert all(math.isfinite(v) for v in h.values() if isinstance(v, float)), h
        assert any(h["loss"] != 0 for h in logs)
        assert math.isfinite(r["log_history"][-1]["train_loss"])
    assert [h["loss"] for h in recs[0]["log_history"] if "loss" in h] == \
        [h["loss"] for h in recs[1]["log_history"] if "loss" in h]
