"""Probe for tests/test_multiprocess_deeprec.py, run once per process (``accelerate launch``): one DeepRec training
step (``DeepRecTrainer``, stage rec) in which the processes' episodes take different numbers of rounds -- process 0's
rows follow tests/test_deeprec.py's 2-call script (3 rounds), process 1's the 0-call one (1 round).

The policy is scripted (``ScriptedGenerator``); with ``--real_generate`` every round first runs the trainer's own
generator (HF ``generate`` under TRL's ``unwrap_model_for_generation``: a collective under ZeRO-3) on the SAME rows,
so a process that skipped a round, or passed other row counts, would break the collective. Records, per process,
the row count of every ``generate`` call and each row's episode (``<record_dir>/rank<r>.json``).

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml --main_process_port P \\
        tests/mp_deeprec_rounds_probe.py --data DIR --model DIR --trm DIR --output_dir DIR --record_dir DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SCRIPT_OF_PROCESS = (2, 0)  # process r's rows follow script SCRIPT_OF_PROCESS[r] of _scripts_for_trainer()
BATCH = 4


def main():
    p = argparse.ArgumentParser()
    for name in ("data", "model", "trm", "output_dir", "record_dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--real_generate", action="store_true")
    a = p.parse_args()

    from mp_parity_probe import StableEncoder
    from test_deeprec import ScriptedGenerator, _scripts_for_trainer

    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from retrieval.retriever import TRMRetriever
    from methods.deeprec.trainer import DeepRecConfig, DeepRecTrainer

    tok = load_tokenizer(a.model, padding_side="left")
    dsd, catalog = load_processed(a.data)
    scripts = _scripts_for_trainer()

    class Probe(DeepRecTrainer):
        generate_rows: list = []
        episodes: list = []

        def _generator(self):
            real = super()._generator() if a.real_generate else None
            mine = SCRIPT_OF_PROCESS[self.accelerator.process_index]
            encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
            scripted = ScriptedGenerator(scripts, encode, self.decode_completion, lambda text, c: mine,
                                         overrun=" junk", split=lambda text: text.split("Assistant:\n<think>\n", 1)[1])
            calls = self.generate_rows

            class Gen:
                def generate(self, rows, max_new_tokens):
                    calls.append(len(rows))
                    if real is not None:
                        real.generate(rows, [2] * len(rows))  # the trainer's real (collective under ZeRO-3) call
                    return scripted.generate(rows, max_new_tokens)
            return Gen()

        def _rollout(self, prompts, trainer=None):
            out = super()._rollout(prompts, trainer)
            self.episodes.extend(out["deeprec_episode"])
            return out

    cfg = DeepRecConfig(stage="rec", max_trajectory_tokens=2048, retrieve_k=5, difficulty_selection=False,
                        max_completion_length=64, category="movies", output_dir=a.output_dir, num_generations=4,
                        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=1,
                        learning_rate=0.1, optim="sgd", logging_steps=1, save_strategy="no", report_to="none",
                        use_cpu=True, bf16=False, activation_checkpointing=False, dataloader_num_workers=0, seed=0)
    retriever = TRMRetriever.load(a.trm, encoder=StableEncoder())
    trainer = Probe(model=a.model, args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog,
                    retriever=retriever)
    trainer.train()
    rank = trainer.accelerator.process_index
    os.makedirs(a.record_dir, exist_ok=True)
    path = os.path.join(a.record_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump({"process_index": rank, "num_processes": trainer.accelerator.num_processes,
                   "script": SCRIPT_OF_PROCESS[rank], "generate_rows": Probe.generate_rows,
                   "episodes": Probe.episodes, "log_history": trainer.state.log_history}, fh)
    os.replace(path + ".tmp", path)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
