"""Runs one training script for tests/test_kill_resume.py, in-process (`run`) or as a subprocess to be killed:

    python tests/kill_resume_driver.py KIND HANG_STEP FLAG_FILE -- <script argv>

KIND: sft | rank_grpo | recpo | deeprec. In a subprocess the run stops dead in the middle of writing
checkpoint-HANG_STEP (after the model, before the optimizer: a partial checkpoint on disk), writes FLAG_FILE and
sleeps until the test kills it with SIGKILL.

Every random choice the fake policies make comes from the global RNGs (python `random`, torch), which transformers
saves with each checkpoint and restores on resume, so an interrupted + resumed run can be compared with an
uninterrupted one step by step. The text encoder is hash-seed free (the same vectors in every process).
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


class StableEncoder:
    """Unit vectors seeded by a SHA-1 of the text (test_deeprec.FakeEncoder uses hash(), which differs by process)."""

    name = "stable-encoder"
    dim = 8

    def encode(self, texts, batch_size=64, **_):
        out = []
        for t in texts:
            seed = int(hashlib.sha1(str(t).encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


@contextlib.contextmanager
def _patched(cls, name, value):
    had = name in cls.__dict__
    old = cls.__dict__.get(name)
    setattr(cls, name, value)
    try:
        yield
    finally:
        if had:
            setattr(cls, name, old)
        else:
            delattr(cls, name)


@contextlib.contextmanager
def canned_rank_grpo():
    """Rank-GRPO's rollouts: each completion drawn (torch RNG) from a few ranked lists of the test catalog, so the
    rewards vary within a group and the loss / gradient are not zero."""
    from test_train_rank_grpo import N_ITEMS, TITLES
    from methods.rank_grpo.trainer import ListGRPOTrainer

    lists = ["\n".join(f"{t} ({y})" for t, y in TITLES[s:s + N_ITEMS]) for s in range(0, 8, 2)]
    lists.append("Here you go:\n" + lists[0] + "\nAnd one more: Heat (1995)")

    def generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tok = self._tokenizer
        canned = [tok.encode(t) + [tok.convert_tokens_to_ids("<|im_end|>")] for t in lists]
        picks = torch.randint(len(canned), (len(prompt_ids),)).tolist()
        return [list(canned[i]) for i in picks], None

    with _patched(ListGRPOTrainer, "_generate_single_turn", generate):
        yield


@contextlib.contextmanager
def scripted_deeprec():
    """DeepRec's policy: test_deeprec's scripted trajectories (0-3 TRM calls, two answers), the script of each row
    drawn from python's global `random` (restored on resume, unlike a private Random)."""
    import re

    from test_deeprec import ScriptedGenerator, _scripts_for_trainer
    from methods.deeprec.trainer import DeepRecTrainer

    def generator(self):
        scripts = _scripts_for_trainer()
        tok = self._tokenizer

        def pick(text, completion):
            marks = re.findall(r"S(\d) (?:think|done)", completion)
            return int(marks[-1]) if marks else random.randrange(len(scripts))

        return ScriptedGenerator(scripts, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                                 self.decode_completion, pick, overrun=" junk",
                                 split=lambda text: text.split("Assistant:\n<think>\n", 1)[1])

    with _patched(DeepRecTrainer, "_generator", generator):
        yield


def run(kind: str, argv: list[str]):
    """The script's main(argv) with the fake policy of `kind`; returns the trainer."""
    torch.set_num_threads(1)
    if kind == "sft":
        import train_sft

        return train_sft.main(argv)
    if kind == "rank_grpo":
        import train_rank_grpo

        with canned_rank_grpo():
            return train_rank_grpo.main(argv)
    if kind == "recpo":
        import train_recpo

        return train_recpo.main(argv)  # real sampling: the reward is continuous (cosine to the item table)
    if kind == "deeprec":
        import train_deeprec

        with scripted_deeprec():
            return train_deeprec.main(argv, encoder=StableEncoder())
    raise ValueError(f"unknown kind {kind!r}")


def hang_while_writing(step: int, flag_file: str) -> None:
    """Stop forever inside the save of checkpoint-`step`, after its model files and before its optimizer."""
    import transformers

    original = transformers.Trainer._save_optimizer_and_scheduler

    def save_optimizer_and_scheduler(self, output_dir):
        if self.state.global_step == step:
            Path(flag_file).write_text(str(output_dir))
            while True:
                time.sleep(1)
        return original(self, output_dir)

    transformers.Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler


if __name__ == "__main__":
    kind, hang_step, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if sys.argv[4] != "--":
        raise SystemExit("usage: kill_resume_driver.py KIND HANG_STEP FLAG_FILE -- <script argv>")
    hang_while_writing(hang_step, flag)
    run(kind, sys.argv[5:])
    raise SystemExit(f"the run finished without reaching the save of checkpoint-{hang_step}")
