"""Probe for tests/test_multiprocess.py's parity tests, run once per process (``accelerate launch``) or as a plain
single process (``python tests/mp_parity_probe.py``): a few RL steps of each trainer in ``--methods`` (``rank_grpo``,
``recpo``, ``deeprec``) on a tiny model, with generation replaced by canned completions chosen from each row's GLOBAL index
(``process_index * B_local + i``) and the step, so a 2-process run and a 1-process run with the same global batch see
exactly the same completions on the same rows.

It changes nothing of rewards, advantages or the loss; it only RECORDS, per process and per generation step:

* ``sample_ids``: this process's rows (their ``sample_id``), in order;
* ``gathered_rewards``: the (B_global, n_funcs) rewards ``_calculate_rewards`` returned (gathered over processes);
* ``advantages``: this process's ``output["advantages"]`` (rows of its own batch only);
* ``canned_index``: which canned completion (script) each local row got;

and, at the end, the trainer's ``log_history``. ``--rank_grpo_aggregation`` / ``--recpo_aggregation`` /
``--deeprec_aggregation`` pick each method's loss-aggregation option (default: its config's default). Written to ``<record_dir>/rank<process_index>.json``. The optimizer
is plain SGD (``optim sgd``) so that the first update is -lr x the gradient (Adam's first step is ~sign(g) and would
hide a wrong gradient), and ``save_steps 1`` writes ``checkpoint-1`` = the weights after the first update.
``--optim`` / ``--full_checkpoints`` (optimizer, scheduler and RNG state too) / ``--resume_from_checkpoint`` serve the
resume test; the canned choice uses the optimizer step as its call count, so a resumed run sees the same rows.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml --main_process_port P \
        tests/mp_parity_probe.py --methods rank_grpo,recpo,deeprec --data DIR --model DIR --output_dir DIR --record_dir DIR \
        --per_device_train_batch_size 6
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/: the DeepRec scripted policy helpers

# Rank-GRPO canned lists (catalog ids; N = 5): EOS after N, early EOS, overflow, a preamble, no EOS. Five of them,
# so that with B_local = 6 process 1's rows (global 6..11) do not get the same lists as process 0's.
RANK_GRPO_LISTS = [([0, 5, 8, 11, 14], True, ""), ([2, 8], True, ""), ([5, 11, 14, 17, 20, 23], False, ""),
                   ([8, 14, 20], True, "Here:\n\n"), ([11, 17, 23, 26, 1], False, "")]
# RecPO canned reasoning texts: one writes <answer> mid-text (cut there), the others never do (marker appended)
RECPO_TEXTS = ["The user likes old films. <answer> tail", "Space and robots", "Crime drama with a twist",
               "Animated, short <answer>"]


class StableEncoder:
    """A deterministic stand-in text encoder (unit vectors seeded by the text's CRC-32). tests/test_deeprec.py's
    FakeEncoder seeds with ``hash(text)``, which Python randomises per process: two processes (or two runs) would
    encode the same preference text differently, retrieve different lists and so see different trajectories."""

    name = "stable-fake-encoder"
    dim = 8

    def encode(self, texts, batch_size=64, **_):
        import zlib

        import numpy as np

        out = [np.random.default_rng(zlib.crc32(t.encode("utf-8"))).normal(size=self.dim) for t in texts]
        return np.asarray([v / np.linalg.norm(v) for v in out], dtype=np.float32)


def global_rows(trainer, n_local: int, calls: int, n_choices: int) -> list[int]:
    """Canned choice of each local row: (global row index + generation call count) mod n_choices."""
    first = trainer.accelerator.process_index * n_local
    return [(first + i + calls) % n_choices for i in range(n_local)]


def recording(cls):
    """``cls`` + recording of each step's local rows, gathered rewards and local advantages (no other change)."""

    class Recording(cls):
        records: list
        _step_record: dict
        _calls = 0

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._step_record["gathered_rewards"] = rewards.tolist()
            return rewards

        def _generate_and_score_completions(self, inputs):
            # one generation per optimizer step here: the call count is the step, also after a resume
            self._calls = self.state.global_step
            self._step_record = {"sample_ids": [x["sample_id"] for x in inputs]}
            output = super()._generate_and_score_completions(inputs)
            self._step_record.update(process_index=self.accelerator.process_index,
                                     num_processes=self.accelerator.num_processes,
                                     global_step=self.state.global_step,
                                     advantages=output["advantages"].tolist(),
                                     completion_tokens=output["completion_mask"].sum(dim=1).tolist(),
                                     policy_tokens=(output["completion_mask"] * output["tool_mask"]).sum(dim=1).tolist()
                                     if "tool_mask" in output else None)
            self.records.append(self._step_record)
            return output

    return Recording


def build_rank_grpo(a, tok, dsd, catalog, common):
    from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    canned = [tok.encode(pre + "\n".join(catalog.display(i) for i in ids)) + ([eos] if with_eos else [])
              for ids, with_eos, pre in RANK_GRPO_LISTS]

    class Canned(recording(RankGRPOTrainer)):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            which = global_rows(self, len(prompt_ids), self._calls, len(canned))
            self._step_record["canned_index"] = which
            return [list(canned[w]) for w in which], None

    cfg = RankGRPOConfig(n_items=5, beta=0.01, max_completion_length=64, **aggregation(a, "rank_normalization"),
                         **common)
    return Canned(model=a.model, args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog)


def build_recpo(a, tok, dsd, catalog, common):
    from methods.recpo.trainer import RecPOConfig, RecPOTrainer

    canned = [tok(t, add_special_tokens=False)["input_ids"] for t in RECPO_TEXTS]

    class Canned(recording(RecPOTrainer)):
        def _sample(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            which = global_rows(self, len(prompt_ids), self._calls, len(canned))
            self._step_record["canned_index"] = which
            return [list(canned[w]) for w in which], None

    cfg = RecPOConfig(category="movies", max_completion_length=16, refresh_steps=1, item_batch_size=8,
                      **aggregation(a, "policy_loss_aggregation"), **common)
    return Canned(model=a.model, args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog)


def build_deeprec(a, tok, dsd, catalog, common):
    from retrieval.retriever import TRMRetriever
    from test_deeprec import ScriptedGenerator, _scripts_for_trainer
    from methods.deeprec.trainer import DeepRecConfig, DeepRecTrainer

    scripts = _scripts_for_trainer()  # 0, 1, 2 and 3 tool calls; answers with / without most rows' targets

    class Canned(recording(DeepRecTrainer)):
        def _generator(self):
            """A scripted policy; a row keeps the script its first turn wrote ("S<k> think|done"), and a row's first
            turn (no mark yet) gets the script of its global index (pick is called row by row, in order)."""
            trainer, fresh = self, []

            def pick(text, completion):
                marks = re.findall(r"S(\d) (?:think|done)", completion)
                if marks:
                    return int(marks[-1])
                if not fresh:  # the first round: every local row, in order
                    n = trainer._rollout_n
                    fresh.extend(global_rows(trainer, n, trainer._calls, len(scripts))[::-1])
                    trainer._step_record["canned_index"] = fresh[::-1]
                return fresh.pop()

            encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
            return ScriptedGenerator(scripts, encode, self.decode_completion, pick, overrun=" junk",
                                     split=lambda text: text.split("Assistant:\n<think>\n", 1)[1])

        def _rollout(self, prompts, trainer=None):
            self._rollout_n = len(prompts)
            return super()._rollout(prompts, trainer)

    retriever = TRMRetriever.load(a.trm, encoder=StableEncoder())
    cfg = DeepRecConfig(stage="rec", max_trajectory_tokens=2048, retrieve_k=5, difficulty_selection=False,
                        max_completion_length=64, category="movies", **aggregation(a, "loss_aggregation"), **common)
    return Canned(model=a.model, args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog,
                  retriever=retriever)


BUILDERS = {"rank_grpo": build_rank_grpo, "recpo": build_recpo, "deeprec": build_deeprec}
# each method's loss-aggregation option and the probe flag that sets it (absent: the config's default)
AGGREGATION_FLAGS = {"rank_normalization": "rank_grpo_aggregation", "policy_loss_aggregation": "recpo_aggregation",
                     "loss_aggregation": "deeprec_aggregation"}


def aggregation(a, field: str) -> dict:
    value = getattr(a, AGGREGATION_FLAGS[field])
    return {} if value is None else {field: value}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--methods", required=True, help=f"comma-separated, run one after the other: {sorted(BUILDERS)}")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--trm", default=None, help="TRM folder (deeprec)")
    p.add_argument("--output_dir", required=True, help="<output_dir>/<method>/checkpoint-N")
    p.add_argument("--record_dir", required=True, help="<record_dir>/<method>/rank<process_index>.json")
    p.add_argument("--per_device_train_batch_size", type=int, required=True)
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--max_steps", type=int, default=2)
    p.add_argument("--learning_rate", type=float, default=0.5)
    p.add_argument("--optim", default="sgd")
    p.add_argument("--full_checkpoints", action="store_true",
                   help="save optimizer / scheduler / RNG state too (save_only_model false), for a resume")
    p.add_argument("--resume_from_checkpoint", default=None, help="<output_dir>/<method>/checkpoint-N (one method)")
    for field, flag in AGGREGATION_FLAGS.items():
        p.add_argument(f"--{flag}", default=None, help=f"the method's {field} (default: its config's default)")
    a = p.parse_args()
    methods = a.methods.split(",")
    if not set(methods) <= set(BUILDERS):
        p.error(f"--methods: unknown {sorted(set(methods) - set(BUILDERS))}; choose from {sorted(BUILDERS)}")
    if a.resume_from_checkpoint and len(methods) != 1:
        p.error("--resume_from_checkpoint needs exactly one method in --methods")

    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed

    tok = load_tokenizer(a.model, padding_side="left")
    dsd, catalog = load_processed(a.data)
    for method in methods:  # one process runs them all: one import / process-group start-up instead of three
        common = dict(output_dir=os.path.join(a.output_dir, method), num_generations=a.num_generations,
                      per_device_train_batch_size=a.per_device_train_batch_size, gradient_accumulation_steps=1,
                      max_steps=a.max_steps, learning_rate=a.learning_rate, optim=a.optim,
                      lr_scheduler_type="constant", logging_steps=1, save_strategy="steps", save_steps=1,
                      save_only_model=not a.full_checkpoints, report_to="none", use_cpu=True, bf16=False,
                      activation_checkpointing=False, dataloader_num_workers=0, seed=0)
        trainer = BUILDERS[method](a, tok, dsd, catalog, common)
        trainer.records = []
        trainer.train(resume_from_checkpoint=a.resume_from_checkpoint)

        rank = trainer.accelerator.process_index
        out_dir = os.path.join(a.record_dir, method)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"rank{rank}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump({"process_index": rank, "num_processes": trainer.accelerator.num_processes,
                       "steps": trainer.records, "log_history": trainer.state.log_history}, fh, indent=1)
        os.replace(path + ".tmp", path)
        trainer.accelerator.wait_for_everyone()
        del trainer


if __name__ == "__main__":
    main()
