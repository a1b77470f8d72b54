"""Probe for tests/test_multiprocess.py, run under ``accelerate launch`` (one copy per process).

A 2-step Rank-GRPO run of a tiny model on a tiny processed data set, with generation replaced by canned completions
chosen from each row's GLOBAL index (so the two processes' rows differ, and differ from step to step). It only
RECORDS, per process and per step, what the trainer computed:

* ``local_rank_rewards`` / ``local_tail_rewards``: this process's stash from ``_calculate_rewards`` (before gather);
* ``gathered_rank_rewards`` / ``gathered_tail_rewards`` (+ G, eps, length_shaping): the exact tensors the trainer
  passed to ``build_advantages`` after ``accelerator.gather`` (captured by wrapping the module-level function);
* ``advantages``: this process's ``output["advantages"]`` (B_local, N+1), ``item_index_shape``;
* ``process_index``, ``num_processes``, the local rows' prompts, completion texts, EOS flags and canned indices;

and, at the end, the trainer's ``log_history``. Written to ``<record_dir>/rank<process_index>.json``.

The canned completions come from ``--canned`` (a JSON list of ``[text, ends_with_eos]``, written by the test, which
owns the expected rewards); at step s the group's global row j gets ``canned[(j + s) % len(canned)]``.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml --main_process_port P \
        tests/mp_rank_grpo_probe.py --data DIR --model DIR --output_dir DIR --record_dir DIR --canned FILE.json
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from rewards.rank_rewards import batch_rank_rewards
from methods.rank_grpo import trainer as rank_grpo
from methods.rank_grpo.trainer import RankGRPOConfig, RankGRPOTrainer

torch.set_num_threads(1)

_STEP: dict = {}  # the record of the step in progress (one process = one copy of this module)


def _recording_build_advantages(rank_rewards, tail_rewards, num_generations, eps, length_shaping,
                                estimator="rank_zscore"):
    _STEP.update(gathered_rank_rewards=rank_rewards.tolist(), gathered_tail_rewards=tail_rewards.tolist(),
                 num_generations=int(num_generations), adv_eps=float(eps), length_shaping=length_shaping,
                 rank_advantage=estimator)
    return _ORIGINAL_BUILD_ADVANTAGES(rank_rewards, tail_rewards, num_generations, eps, length_shaping, estimator)


# The trainer looks ``build_advantages`` up in its module at call time. This patch is why the module is only ever run
# as a script in its own processes, never imported by the pytest process.
_ORIGINAL_BUILD_ADVANTAGES = rank_grpo.build_advantages
rank_grpo.build_advantages = _recording_build_advantages


class ProbeTrainer(RankGRPOTrainer):
    """RankGRPOTrainer + canned generation + recording. No change to rewards, advantages or the loss."""

    records: list
    canned_ids: list
    _calls = 0

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        n = len(prompt_ids)
        first = self.accelerator.process_index * n  # global index of this process's first row
        which = [(first + i + self._calls) % len(self.canned_ids) for i in range(n)]
        self._calls += 1
        _STEP["canned_index"] = which
        out = [list(self.canned_ids[w]) for w in which]
        assert all(len(ids) <= self.args.max_completion_length for ids in out), "canned completion too long"
        return out, None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        seq = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        scores = self.list_judge.last  # this process's judgement (before gather), read by the loss hook next
        rel = np.stack([s.rel for s in scores])
        rank = batch_rank_rewards(rel, self.args.reward_func, self.args.n_items)  # float32, as the trainer gathers them
        _STEP.update(local_rank_rewards=torch.tensor(rank, dtype=torch.float32).tolist(),
                     local_tail_rewards=torch.tensor([s.tail_reward for s in scores], dtype=torch.float32).tolist(),
                     gathered_seq_rewards=seq.sum(dim=1).tolist())
        return seq

    def _generate_and_score_completions(self, inputs):
        _STEP.clear()
        output = super()._generate_and_score_completions(inputs)
        tok = self.processing_class
        texts, eos = [], []
        for ids, m in zip(output["completion_ids"], output["completion_mask"]):
            ids = ids[m.bool()].tolist()
            texts.append(tok.decode(ids, skip_special_tokens=True))
            eos.append(bool(ids) and ids[-1] in self.eos_token_ids)
        self.records.append(dict(
            _STEP, process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
            global_step=self.state.global_step, advantages=output["advantages"].tolist(),
            item_index_shape=list(output["item_index"].shape),
            prompts=[x["prompt"][-1]["content"] for x in inputs], groundtruth=[list(x["groundtruth"]) for x in inputs],
            seen=[list(x["seen"]) for x in inputs], completions=texts, ended_with_eos=eos))
        return output


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--record_dir", required=True)
    p.add_argument("--canned", required=True, help="JSON list of [completion text, ends with EOS]")
    p.add_argument("--n_items", type=int, default=5)
    p.add_argument("--per_device_train_batch_size", type=int, default=2)
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--max_steps", type=int, default=2)
    p.add_argument("--max_completion_length", type=int, default=48)
    a = p.parse_args()

    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed

    tok = load_tokenizer(a.model, padding_side="left")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    dsd, catalog = load_processed(a.data)
    train = dsd["train"].select_columns(["prompt", "groundtruth", "seen"])
    cfg = RankGRPOConfig(output_dir=a.output_dir, n_items=a.n_items, num_generations=a.num_generations,
                         per_device_train_batch_size=a.per_device_train_batch_size, gradient_accumulation_steps=1,
                         max_steps=a.max_steps, max_completion_length=a.max_completion_length, learning_rate=1e-2,
                         beta=0.01, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                         activation_checkpointing=False, dataloader_num_workers=0, seed=0)
    trainer = ProbeTrainer(model=a.model, args=cfg, train_dataset=train, processing_class=tok, catalog=catalog)
    trainer.records = []
    with open(a.canned) as fh:
        canned = json.load(fh)
    trainer.canned_ids = [tok.encode(t) + ([eos] if with_eos else []) for t, with_eos in canned]
    trainer.train()

    rank = trainer.accelerator.process_index
    os.makedirs(a.record_dir, exist_ok=True)
    path = os.path.join(a.record_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump({"process_index": rank, "num_processes": trainer.accelerator.num_processes,
                   "steps": trainer.records, "log_history": trainer.state.log_history,
                   "canned": canned}, fh, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
