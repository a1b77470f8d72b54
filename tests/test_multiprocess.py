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
from references import ref_advantages  # the one slow Eq. 7 reference

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
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed

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
            assert (x["num_generations"], x["adv_eps"], x["length_shaping"], x["rank_advantage"]) == \
                (G, EPS, "reward", "rank_zscore")
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


# =====================================================================================================================
# PARITY: a 2-process run (gloo DDP; DeepSpeed ZeRO-2, ZeRO-3, ZeRO-3 + offload on CPU) equals a 1-process run
# =====================================================================================================================
# Every trainer (SFT through train_sft.py itself; Rank-GRPO, RecPO, DeepRec through tests/mp_parity_probe.py with
# canned completions chosen by GLOBAL row index) runs PARITY_STEPS optimizer steps twice: 2 processes x B_LOCAL rows
# and 1 process x 2 B_LOCAL rows, plain SGD (the first update is -lr x gradient), one checkpoint per step. Checked:
#   * each process's rows are the 1-process run's rows r*B..(r+1)*B-1 (sample ids), its local advantages are those
#     rows' advantages, and the gathered rewards equal the 1-process rewards;
#   * the logged losses and the weights after the first and the second update (checkpoint-1, checkpoint-2) equal
#     the 1-process run's.
# Tolerances (float32, different batch shapes and reduction orders; measured on 2 CPU cores): rewards 1e-5 abs
# (measured <= 5e-7), advantages 1e-4 abs (z-scores; <= 5e-6), both x 10 from the second step on (the weights then
# differ by float noise, which RecPO's cosine / 0.02 rewards amplify: measured 1.8e-4 on an advantage), losses 1e-6 abs + 1e-4 rel (<= 2e-6 rel at the first step; RecPO's second under ZeRO-3: 1.4e-4 rel), x 10 from the second step on, weights
# 2e-4 x the largest weight change of the 1-process update, x 10 from the second update on (measured <= 3.2e-5 at
# the first, RecPO's 9.9e-4 at the second: its item prompts carry a Year line, so their padded batch shapes differ
# between 1 and 2 processes, and cosines of nearly parallel vectors / 0.02 amplify that float noise; Rank-GRPO and
# DeepRec <= 6e-7; the two defects these tests found were 4.0 for RecPO and 0.076 for DeepRec). Runtime: ~35 s (1 process, all three RL trainers in one process) +
# ~45 s per 2-process launch + ~25-35 s per SFT launch. The DeepSpeed launches are marked `dist` (`make test-dist`).
RL_METHODS = ("rank_grpo", "recpo", "deeprec")
B_PARITY, G_PARITY, STEPS_PARITY = 6, 4, 2  # 2 x 6 = 12 rows = 3 prompt groups a step; group 1 spans both processes
REWARD_TOL, ADV_TOL, LOSS_ABS, LOSS_REL, WEIGHT_REL = 1e-5, 1e-4, 1e-6, 1e-4, 2e-4
dist = pytest.mark.dist  # registered in conftest.py: the slow DeepSpeed runs (`make test-dist`)
# ZeRO-3 with optimizer offload: accelerate replaces the Trainer's optimizer by DeepSpeed's CPU Adam (AdamW, lr and
# weight decay kept), whatever --optim says, so its parity test compares AdamW with AdamW (OFFLOAD_OPTIM)
LAUNCH_CONFIGS = ["cpu_2proc.yaml", *(pytest.param(c, marks=dist) for c in ("cpu_2proc_zero2.yaml",
                                                                            "cpu_2proc_zero3.yaml"))]
# weights: Adam's first step is lr * g / (|g| + eps) per element, so where |g| is near eps (1e-8) the float noise of
# the gradient (another reduction order) moves the update by a share of lr: measured <= 4.0e-3 x the largest weight
# change on 0.15% of the elements (SGD elsewhere: <= 3e-5)
OFFLOAD_CONFIG, OFFLOAD_OPTIM, OFFLOAD_WEIGHT_REL = "cpu_2proc_zero3_offload.yaml", ("adamw_torch", 0.01), 1e-2


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    return env


def _launch(script_and_args: list[str], cwd, launch_config: str | None, timeout: int = 400) -> str:
    """Run a script as ONE plain process (``launch_config`` None) or under ``accelerate launch --config_file
    configs/accelerate/<launch_config>``; a failure is a test FAILURE with the output tail. Returns the output."""
    for attempt in range(2):
        cmd = [sys.executable, *script_and_args] if launch_config is None else \
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             str(REPO / "configs" / "accelerate" / launch_config), "--main_process_port", str(_free_port()),
             *script_and_args]
        proc = subprocess.Popen(cmd, cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the workers it started
            out, _ = proc.communicate()
            pytest.fail(f"{launch_config or 'single-process'} run timed out after {timeout} s:\n{out[-4000:]}")
        port_taken = "address already in use" in out.lower() or "EADDRINUSE" in out
        if proc.returncode == 0 or not port_taken or launch_config is None:
            break
    assert proc.returncode == 0, f"{launch_config or 'single-process'} run failed (rc {proc.returncode}):\n" \
                                 f"{out[-6000:]}"
    return out


def _skip_unless_launchable(launch_config: str | None):
    reason = _launch_impossible()
    if reason:
        pytest.skip(f"multi-process launch impossible on this machine: {reason}")
    if launch_config and "zero" in launch_config and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (requirements.txt); the ZeRO CPU runs need it")


@pytest.fixture(scope="module")
def parity_setup(tmp_path_factory):
    """One contract data set for every trainer (24 rows over the 28-title catalog of tests/test_deeprec.py: prompt /
    completion for SFT, groundtruth / seen for Rank-GRPO, history / target for RecPO and DeepRec), a tiny random Qwen3
    with a small BPE, and an untrained TRM whose item texts are encoded by the probe's deterministic encoder."""
    from mp_parity_probe import StableEncoder
    from test_deeprec import CATALOG, CATALOG_ITEMS
    from test_deeprec import TITLES as DR_TITLES

    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed
    from retrieval.retriever import TRMRetriever

    root = tmp_path_factory.mktemp("parity")
    recs = []
    for s in range(2 * B_PARITY * STEPS_PARITY):  # SFT: every step a FULL global batch (a last partial batch of an
        hist = [(3 * s + j) % len(DR_TITLES) for j in range(4)]  # epoch is split over processes differently)
        target = (3 * s + 5) % len(DR_TITLES)
        recs.append(dict(sample_id=f"s{s}", prompt=build_prompt(f"I liked {DR_TITLES[s % 28][0]}.", n_items=5),
                         completion=format_completion([CATALOG.display(target), CATALOG.display((target + 3) % 28)]),
                         groundtruth=[target, (target + 3) % len(DR_TITLES)], seen=hist[:1], history=hist,
                         target=target, timestamp=None))
    save_processed(root / "data", {"train": recs}, CATALOG_ITEMS, {"name": "parity"}, quiet=True, progress=False)
    build_tiny_model(root / "model", tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    TRMRetriever.build(CATALOG_ITEMS, StableEncoder(), hidden_size=16, num_heads=2, num_layers=1).save(root / "trm")
    return root


def _rl_probe(root, out, n_proc_batch: int) -> list[str]:
    return [str(REPO / "tests" / "mp_parity_probe.py"), "--methods", ",".join(RL_METHODS),
            "--data", str(root / "data"), "--model", str(root / "model"), "--trm", str(root / "trm"),
            "--output_dir", str(out / "out"), "--record_dir", str(out / "records"),
            "--per_device_train_batch_size", str(n_proc_batch), "--num_generations", str(G_PARITY),
            "--max_steps", str(STEPS_PARITY)]


def _sft_args(root, out, batch: int, optim: str = "sgd", lr: float = 0.5) -> list[str]:
    return [str(REPO / "train_sft.py"), "--dataset_path", str(root / "data"), "--model_name", str(root / "model"),
            "--output_dir", str(out), "--per_device_train_batch_size", str(batch), "--max_steps", str(STEPS_PARITY),
            "--optim", optim, "--learning_rate", str(lr), "--lr_scheduler_type", "constant", "--save_strategy",
            "steps", "--save_steps", "1", "--save_only_model", "true", "--logging_steps", "1", "--report_to", "none",
            "--eval_strategy", "no", "--max_length", "256", "--seed", "0", "--dataloader_num_workers", "0",
            "--activation_checkpointing", "false"]


@pytest.fixture(scope="module")
def rl_one_process(parity_setup):
    _skip_unless_launchable(None)
    out = parity_setup / "rl_1proc"
    _launch(_rl_probe(parity_setup, out, 2 * B_PARITY), parity_setup, None)
    return out


@pytest.fixture(scope="module")
def sft_one_process(parity_setup):
    out = parity_setup / "sft_1proc"
    _launch(_sft_args(parity_setup, out, 2 * B_PARITY), parity_setup, None)
    return out


def _losses(log_history) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


def _assert_same_losses(two: list[float], one: list[float], what: str):
    assert len(two) == len(one) == STEPS_PARITY, (what, two, one)
    for s, (a, b) in enumerate(zip(two, one)):
        later = 1 if s == 0 else 10  # as for rewards and weights: step 2 starts from weights that differ by noise
        assert math.isfinite(a) and abs(a - b) <= later * (LOSS_ABS + LOSS_REL * abs(b)), (what, s, two, one)


def _assert_same_updates(base_model, one_dir, two_dir, what: str, rel: float = WEIGHT_REL):
    """checkpoint-k weights of the 2-process run = the 1-process run's, within WEIGHT_REL x the largest 1-process
    weight change of that step; and every update moved the weights."""
    from safetensors.torch import load_file

    before = load_file(str(base_model / "model.safetensors"))
    for k in range(1, STEPS_PARITY + 1):
        w1 = load_file(str(one_dir / f"checkpoint-{k}" / "model.safetensors"))
        w2 = load_file(str(two_dir / f"checkpoint-{k}" / "model.safetensors"))
        # DeepSpeed writes the tied lm_head.weight too (= embed_tokens.weight); everything else must match by name
        assert set(w1) <= set(w2) and set(w2) - set(w1) <= {"lm_head.weight"}, (what, set(w1) ^ set(w2))
        if "lm_head.weight" in w2 and "lm_head.weight" not in w1:
            assert torch.equal(w2["lm_head.weight"], w2["model.embed_tokens.weight"]), what
        change = max((w1[n] - before[n]).abs().max().item() for n in w1 if n in before)
        worst = max((w1[n] - w2[n]).abs().max().item() for n in w1)
        assert change > 1e-3, (what, k, change)  # the step moved the weights
        later = 1 if k == 1 else 10  # from the second update on, the steps start from weights that differ by noise
        assert worst <= rel * later * change, f"{what}: checkpoint-{k} weights differ by {worst:.3g} (largest " \
                                              f"1-process weight change {change:.3g})"
        before = w1


@multiprocess
@pytest.mark.parametrize("launch_config", LAUNCH_CONFIGS)
def test_two_process_rl_trainers_equal_one_process(parity_setup, rl_one_process, launch_config, tmp_path):
    """Rank-GRPO, RecPO and DeepRec: own rows, own advantages, same losses and updates as one process."""
    _skip_unless_launchable(launch_config)
    _launch(_rl_probe(parity_setup, tmp_path, B_PARITY), tmp_path, launch_config)
    _check_rl_parity(parity_setup, rl_one_process, tmp_path, launch_config)


def _check_rl_parity(parity_setup, rl_one_process, tmp_path, launch_config, weight_rel=WEIGHT_REL):  # noqa: F811
    import numpy as np

    for method in RL_METHODS:
        one = json.loads((rl_one_process / "records" / method / "rank0.json").read_text())
        two = [json.loads((tmp_path / "records" / method / f"rank{r}.json").read_text()) for r in range(N_PROC)]
        assert one["num_processes"] == 1 and [t["process_index"] for t in two] == [0, 1]
        assert [t["num_processes"] for t in two] == [N_PROC, N_PROC]
        wrong_slice_caught = 0
        for s in range(STEPS_PARITY):
            o = one["steps"][s]
            rewards_one = np.asarray(o["gathered_rewards"], dtype=float)
            adv_one = np.asarray(o["advantages"], dtype=float)
            assert len(o["sample_ids"]) == N_PROC * B_PARITY
            for r, t in enumerate(two):
                x = t["steps"][s]
                mine = slice(r * B_PARITY, (r + 1) * B_PARITY)
                assert x["global_step"] == o["global_step"] == s
                assert x["sample_ids"] == o["sample_ids"][mine], (method, s, r)
                assert x["canned_index"] == o["canned_index"][mine], (method, s, r)  # the probe's own bookkeeping
                later = 1 if s == 0 else 10  # after the first update the weights differ by float noise
                np.testing.assert_allclose(np.asarray(x["gathered_rewards"], dtype=float), rewards_one,
                                           atol=REWARD_TOL * later, rtol=0, err_msg=f"{method} step {s} process {r}")
                adv = np.asarray(x["advantages"], dtype=float)
                assert adv.shape == adv_one[mine].shape
                np.testing.assert_allclose(adv, adv_one[mine], atol=ADV_TOL * later, rtol=0,
                                           err_msg=f"{method} step {s} process {r}: not its own rows' advantages")
                assert np.abs(adv).max() > 0.1, (method, s, r)  # non-trivial on every process
            # a process keeping rows 0..B-1 of the gathered batch (a wrong process_slice) would be caught
            if np.abs(np.asarray(two[1]["steps"][s]["advantages"]) - adv_one[:B_PARITY]).max() > 0.1:
                wrong_slice_caught += 1
        assert wrong_slice_caught >= 1, method
        loss_one = _losses(one["log_history"])
        for t in two:
            _assert_same_losses(_losses(t["log_history"]), loss_one, f"{method} ({launch_config})")
        _assert_same_updates(parity_setup / "model", rl_one_process / "out" / method, tmp_path / "out" / method,
                             f"{method} ({launch_config})", weight_rel)


@multiprocess
@dist
def test_zero3_offload_equals_one_process_with_adamw(parity_setup, tmp_path):
    """cpu_2proc_zero3_offload.yaml (parameters and optimizer state in CPU RAM): every trainer's losses and weights
    after two AdamW updates equal a 1-process AdamW run's (the parity checks above)."""
    from safetensors.torch import load_file

    _skip_unless_launchable(OFFLOAD_CONFIG)
    optim, lr = OFFLOAD_OPTIM
    flags = ["--optim", optim, "--learning_rate", str(lr)]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(_rl_probe(parity_setup, one, 2 * B_PARITY) + flags, tmp_path, None)
    _launch(_rl_probe(parity_setup, two, B_PARITY) + flags, tmp_path, OFFLOAD_CONFIG)
    _check_rl_parity(parity_setup, one, two, OFFLOAD_CONFIG, OFFLOAD_WEIGHT_REL)
    base = load_file(str(parity_setup / "model" / "model.safetensors"))
    w1 = load_file(str(two / "out" / "rank_grpo" / "checkpoint-1" / "model.safetensors"))
    assert max((w1[n] - base[n]).abs().max().item() for n in base) == pytest.approx(lr, rel=1e-2)  # Adam step 1
    _launch(_sft_args(parity_setup, one / "sft", 2 * B_PARITY, optim, lr), tmp_path, None)
    _launch(_sft_args(parity_setup, two / "sft", B_PARITY, optim, lr), tmp_path, OFFLOAD_CONFIG)
    one_log = json.loads((one / "sft" / "trainer_state.json").read_text())["log_history"]
    two_log = json.loads((two / "sft" / "trainer_state.json").read_text())["log_history"]
    _assert_same_losses(_losses(two_log), _losses(one_log), f"sft ({OFFLOAD_CONFIG})")
    _assert_same_updates(parity_setup / "model", one / "sft", two / "sft", f"sft ({OFFLOAD_CONFIG})",
                         OFFLOAD_WEIGHT_REL)


@multiprocess
@pytest.mark.parametrize("launch_config", LAUNCH_CONFIGS)
def test_two_process_sft_equals_one_process(parity_setup, sft_one_process, launch_config, tmp_path):
    """train_sft.py: 2 x 6 rows per step = 1 x 12 rows (same rows: the sampler is seeded and split rank-major)."""
    _skip_unless_launchable(launch_config)
    out = tmp_path / "sft"
    _launch(_sft_args(parity_setup, out, B_PARITY), tmp_path, launch_config)
    one = json.loads((sft_one_process / "trainer_state.json").read_text())["log_history"]
    two = json.loads((out / "trainer_state.json").read_text())["log_history"]
    _assert_same_losses(_losses(two), _losses(one), f"sft ({launch_config})")
    _assert_same_updates(parity_setup / "model", sft_one_process, out, f"sft ({launch_config})")


@multiprocess
@pytest.mark.parametrize("launch_config", ["cpu_2proc.yaml", pytest.param("cpu_2proc_zero2.yaml", marks=dist),
                                           pytest.param("cpu_2proc_zero3.yaml", marks=dist)])
def test_a_nonfinite_loss_on_one_process_skips_the_step_on_every_process(parity_setup, launch_config, tmp_path):
    """RecRLTrainer.compute_loss's guard under 2 processes (tests/mp_nonfinite_probe.py: Rank-GRPO, the loss NaN on
    process 1 at step 0 only, its backward NaN too): both processes skip step 0 together -- the weights after it are
    exactly the initial ones (a process skipping alone would let data parallelism average the other's gradient in,
    or crash: ZeRO-3's partitioned parameters) -- and step 1 trains, with finite weights."""
    from safetensors.torch import load_file

    _skip_unless_launchable(launch_config)
    args = [str(REPO / "tests" / "mp_nonfinite_probe.py"), *_rl_probe(parity_setup, tmp_path, B_PARITY)[1:]]
    args[args.index("--methods") + 1] = "rank_grpo"
    _launch(args, tmp_path, launch_config)
    recs = [json.loads((tmp_path / "records" / f"nonfinite_rank{r}.json").read_text()) for r in range(N_PROC)]
    assert [r["skipped"] for r in recs] == [1, 1]  # process 0's loss was finite: it skipped with process 1
    for r in recs:
        losses = _losses(r["log_history"])
        assert len(losses) == STEPS_PARITY and losses[0] == 0.0 and math.isfinite(losses[1]) and losses[1] != 0
    base = load_file(str(parity_setup / "model" / "model.safetensors"))
    ckpt = tmp_path / "out" / "rank_grpo"
    w1, w2 = (load_file(str(ckpt / f"checkpoint-{k}" / "model.safetensors")) for k in (1, 2))
    assert max((w1[n] - base[n]).abs().max().item() for n in base) == 0.0  # step 0: no update anywhere
    assert all(torch.isfinite(v).all() for v in w2.values())
    assert max((w2[n] - w1[n]).abs().max().item() for n in base) > 1e-3  # step 1 trained


@multiprocess
@dist
def test_zero3_resume_equals_the_uninterrupted_run(parity_setup, tmp_path):
    """Rank-GRPO under DeepSpeed ZeRO-3 (2 CPU processes), AdamW (its moments must come back: a fresh optimizer's
    second step differs), full checkpoints: 2 steps straight vs 1 step, then a resume from checkpoint-1 in a new
    launch. The resumed run trains step 1 only, on the same rows, and its weights after it equal the uninterrupted
    run's checkpoint-2 (tolerance: WEIGHT_REL of the step's largest weight change)."""
    from safetensors.torch import load_file

    _skip_unless_launchable("cpu_2proc_zero3.yaml")
    flags = ["--full_checkpoints", "--optim", "adamw_torch", "--learning_rate", "0.01"]

    def probe(out, extra=()):
        args = _rl_probe(parity_setup, out, B_PARITY) + flags + list(extra)
        args[args.index("--methods") + 1] = "rank_grpo"
        _launch(args, tmp_path, "cpu_2proc_zero3.yaml")
        return [json.loads((out / "records" / "rank_grpo" / f"rank{r}.json").read_text()) for r in range(N_PROC)]

    straight = probe(tmp_path / "straight")
    first = tmp_path / "straight" / "out" / "rank_grpo" / "checkpoint-1"
    assert any(p.name.startswith("global_step") for p in first.iterdir()), sorted(p.name for p in first.iterdir())
    resumed = probe(tmp_path / "resumed", ["--resume_from_checkpoint", str(first)])
    for s, r in zip(straight, resumed):
        assert [x["global_step"] for x in s["steps"]] == [0, 1] and [x["global_step"] for x in r["steps"]] == [1]
        assert r["steps"][0]["sample_ids"] == s["steps"][1]["sample_ids"]
        assert r["steps"][0]["canned_index"] == s["steps"][1]["canned_index"]
        # the resumed run's log_history starts with the checkpoint's (step 1), then logs step 2 itself
        _assert_same_losses(_losses(r["log_history"]), _losses(s["log_history"]), "zero3 resume")
    w1 = load_file(str(first / "model.safetensors"))
    w2 = load_file(str(tmp_path / "straight" / "out" / "rank_grpo" / "checkpoint-2" / "model.safetensors"))
    w2_resumed = load_file(str(tmp_path / "resumed" / "out" / "rank_grpo" / "checkpoint-2" / "model.safetensors"))
    change = max((w2[n] - w1[n]).abs().max().item() for n in w1)
    worst = max((w2[n] - w2_resumed[n]).abs().max().item() for n in w2)
    assert change > 1e-3 and set(w2) == set(w2_resumed)
    assert worst <= WEIGHT_REL * change, f"resumed checkpoint-2 differs by {worst:.3g} (step change {change:.3g})"
