"""Probe for tests/test_multiprocess_deeprec.py, run once per process (``accelerate launch``): DeepRec's episode loop
(``methods.deeprec.rollout.run_episodes`` with the trainer's collective rounds,
``methods.deeprec.rollout.agree_round_rows``) through ``VLLMTokenGenerator`` and TRL 1.16's REAL ``VLLMGeneration.generate`` in server mode. Only the vLLM client
is fake: on the main process it answers every gathered prompt with tests/test_deeprec.py's scripted policy on the
character tokenizer (prompt ``P<k>#`` follows script k; at most ``max_tokens`` tokens, a -0.5 log-prob each).

TRL gathers every process's prompts, generates them on the main process with ITS ``max_tokens``, and hands process
r the slice ``r * len(prompts)`` onward. In each case the processes start with different row counts and finish
after different numbers of rounds. Each process writes ``<record_dir>/rank<r>.json``: per case, its episodes and the
number of ``generate`` calls, next to a single-process reference (the scripted policy called directly on each
process's rows, no vLLM) computed in every process for every process's rows.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml --main_process_port P \\
        tests/mp_deeprec_vllm_server_probe.py --record_dir DIR
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import types

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# case -> the scripts (TRM calls) of each process's rows: 0 answers at once, k makes k TRM calls first
CASES = {"main_has_more": [[2, 3, 1], [0]],  # process 1 runs out of rows after round 1
         "other_has_more": [[0], [3, 1]],  # the main process pads; process 1's rows need the main's cap to be theirs
         "equal_counts": [[1, 0], [0, 2]]}
SETTINGS = dict(max_calls=8, max_tokens=2000, k=5)


def episode_record(e) -> dict:
    return {"completion_ids": e.completion_ids, "env_mask": e.env_mask, "text": e.text, "n_calls": e.n_calls,
            "end_reason": e.end_reason, "logprobs": e.logprobs}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--record_dir", required=True)
    a = p.parse_args()

    from accelerate import Accelerator
    from test_deeprec import CATALOG, CharTok, FakeRetriever, ScriptedGenerator, _script
    from trl.generation.vllm_generation import VLLMGeneration

    from methods.deeprec.rollout import EpisodeSettings, run_episodes
    from methods.deeprec.rollout import VLLMTokenGenerator, agree_round_rows

    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    tok = CharTok()
    scripts = [_script(k) for k in range(4)]

    def scripted():
        return ScriptedGenerator(scripts, tok.encode, tok.decode, pick=lambda text, _: int(text[1]),
                                 split=lambda text: text.split("#", 1)[1])

    class FakeVLLMClient:
        """``vllm_client.generate`` of TRL's server mode (main process only): the scripted policy, max_tokens cap."""

        requests: list = []

        def generate(self, prompts, features=None, n=1, max_tokens=16, **_):
            assert n == 1 and features is None
            type(self).requests.append({"prompts": len(prompts), "max_tokens": max_tokens})
            outs = scripted().generate([list(x) for x in prompts], [max_tokens] * len(prompts))
            ids = [list(o[0]) for o in outs]
            return {"prompt_ids": [list(x) for x in prompts], "completion_ids": ids,
                    "logprobs": [[[-0.5] for _ in row] for row in ids], "logprob_token_ids": None}

    vg = VLLMGeneration.__new__(VLLMGeneration)  # the real class and its real generate(); server mode needs no engine
    vg.__dict__.update(mode="server", accelerator=acc, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                       repetition_penalty=1.0, max_completion_length=8, logprobs=0, generation_kwargs={},
                       structured_outputs_regex=None, enable_sleep_mode=False, processing_class=None)
    if acc.is_main_process:
        vg.vllm_client = FakeVLLMClient()

    class Counting(VLLMTokenGenerator):
        def __init__(self, trainer):
            super().__init__(trainer)
            self.calls = []

        def generate(self, rows, max_new_tokens):
            self.calls.append(len(rows))
            return super().generate(rows, max_new_tokens)

    def rows_of(script_ids):
        prompts = [f"P{k}#" for k in script_ids]
        histories = [[(3 * j + k) % 20, (3 * j + k + 1) % 20] for j, k in enumerate(script_ids)]
        return [tok.encode(x) for x in prompts], histories, [[h[0]] for h in histories]

    record = {"process_index": rank, "num_processes": world, "cases": {}}
    for case, per_process in CASES.items():
        settings = EpisodeSettings(**SETTINGS)
        refs = []
        for r in range(world):  # the single-process reference of every process's rows
            gen = scripted()
            eps = run_episodes(*rows_of(per_process[r]), gen, FakeRetriever(), CATALOG.display, tok.encode,
                               tok.decode, {tok.eos}, settings)
            refs.append({"episodes": [episode_record(e) for e in eps], "rows_per_round": gen.calls})
        gen = Counting(types.SimpleNamespace(vllm_generation=vg, accelerator=acc))
        eps = run_episodes(*rows_of(per_process[rank]), gen, FakeRetriever(), CATALOG.display, tok.encode,
                           tok.decode, {tok.eos}, settings, round_rows=functools.partial(agree_round_rows, acc))
        record["cases"][case] = {"episodes": [episode_record(e) for e in eps], "generate_rows": gen.calls,
                                 "reference": refs}
        acc.wait_for_everyone()
    record["client_requests"] = FakeVLLMClient.requests
    os.makedirs(a.record_dir, exist_ok=True)
    path = os.path.join(a.record_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(record, fh)
    os.replace(path + ".tmp", path)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
