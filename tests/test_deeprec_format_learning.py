"""DeepRec that can learn its format: R_inv / R_div count the rollout's real TRM calls (typed fake lists gain
nothing), the per-step share of valid episodes and of each failing check, the warm-start SFT loss masks exactly the
injected TRM lists (checked token by token against a slow character-span reference on real episodes, real Qwen
vocabulary), the warm-start gate, the stage's rollout temperature as a config field."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.deeprec.rollout import EpisodeSettings, run_episodes
from preprocess.deeprec_prompts import BEGIN_ITEM_LIST, THINK_CLOSE, answer_text, build_prompt, item_list_text
from methods.deeprec.rewards import FORMAT_CHECKS, format_check_shares, invocation_reward, parse_trajectory
from test_deeprec import CATALOG, CATALOG_ITEMS, TEN, FakeEncoder, FakeRetriever, pref, tool, valid_text
from references import ref_char_span_mask

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def qwen():
    from modeling.qwen_vocab import load_qwen_tokenizer

    return load_qwen_tokenizer()


def paper_reward(fmt_valid: bool, n_calls: int, pref_vectors) -> float:
    """docs/methods.md §4.3, stage 1, written out: R_fmt + R_inv + R_div."""
    r_fmt = 0.0 if fmt_valid else -1.0
    r_inv = 0.5 * (min(n_calls, 3) - 1) if n_calls >= 2 else 0.0
    r_div = 0.0
    if n_calls >= 2:
        v = [np.asarray(x, float) / np.linalg.norm(x) for x in pref_vectors]
        cos = [float(v[i] @ v[j]) for i in range(len(v)) for j in range(i + 1, len(v))]
        r_div = 0.2 * (1 - sum(cos) / len(cos))
    return r_fmt + r_inv + r_div


# ============================================================================================ R_inv: real calls
def fake_list_text(real_prefs, n_fake):
    """``real_prefs`` answered calls (the rollout injected their lists), then ``n_fake`` lists the model typed."""
    body = "".join(f"step {i}\n{pref(p)}{tool()}" for i, p in enumerate(real_prefs))
    return body + "".join("I will list some myself" + tool((1, 2)) for _ in range(n_fake)) \
        + "so these fit\n" + THINK_CLOSE + "\n" + answer_text(TEN)


@pytest.mark.parametrize("real, n_fake", [(["a"], 2), (["a", "b"], 1), ([], 2)])
def test_typed_fake_lists_are_no_calls(real, n_fake):
    """An invalid episode with typed lists gets the paper's reward for its REAL calls: before, the text's item-list
    blocks were counted, so 1 real + 2 typed lists scored -1 + 1.0 = 0, as much as a valid one-call episode."""
    from methods.deeprec.judge import DeepRecJudge

    vectors = {"a": [1, 0, 0, 0, 0, 0, 0, 0], "b": [0.6, 0.8, 0, 0, 0, 0, 0, 0]}
    judge = DeepRecJudge(CATALOG, True, None, FakeEncoder(vectors).encode)
    text = fake_list_text(real, n_fake)
    assert text.count(BEGIN_ITEM_LIST) == len(real) + n_fake
    episode = {"text": text, "n_calls": len(real), "preferences": list(real)}
    valid_one_call = {"text": valid_text(1, prefs=["a"]), "n_calls": 1, "preferences": ["a"]}
    s, ref = judge.score([episode, valid_one_call], [27, 27])
    traj = parse_trajectory(text, real_calls=len(real))
    assert not traj.valid and "tags" in traj.failures and traj.n_calls == len(real)
    assert ("no_call" in traj.failures) == (not real)
    total = sum(s.rewards[k] for k in ("format", "invocation", "diversity"))
    assert total == pytest.approx(paper_reward(False, len(real), [vectors[p] for p in real]))
    assert s.rewards["invocation"] == invocation_reward(len(real))
    assert total < sum(ref.rewards[k] for k in ("format", "invocation", "diversity")) == 0.0


def test_real_calls_keep_valid_episodes_valid():
    t = parse_trajectory(valid_text(2, prefs=["x", "y"]), real_calls=2)
    assert t.valid and t.n_calls == 2 and t.preferences == ["x", "y"]
    with pytest.raises(ValueError, match="real_calls"):
        parse_trajectory("x", real_calls=-1)


def test_rollout_records_feed_the_judge_real_calls():
    """A real run_episodes record: a policy that types a list after its one real call is invalid, 1 call."""
    from test_deeprec import CharTok, ScriptedGenerator
    from methods.deeprec.judge import DeepRecJudge

    tok = CharTok()
    typed = "I add my own\n" + tool((3, 4)) + "done\n" + THINK_CLOSE + "\n" + answer_text(TEN)
    script = [f"think\n{pref('pp')}", typed]
    gen = ScriptedGenerator([script], tok.encode, tok.decode, pick=lambda *_: 0,
                            split=lambda text: text.split("#", 1)[1])
    ep = run_episodes([tok.encode("P0#")], [[0, 1]], [[0]], gen, FakeRetriever(), CATALOG.display, tok.encode,
                      tok.decode, {tok.eos}, EpisodeSettings(max_calls=3, max_tokens=4000))[0]
    assert ep.n_calls == 1 and ep.text.count(BEGIN_ITEM_LIST) == 2
    s = DeepRecJudge(CATALOG, True, None, FakeEncoder().encode).score([ep.to_record()], [27])[0]
    assert s.rewards["format"] == -1.0 and s.rewards["invocation"] == 0.0 and s.trajectory.n_calls == 1


# ============================================================================================ per-step logging
def test_judge_logs_share_of_valid_episodes_and_of_each_failing_check():
    from methods.deeprec.judge import DeepRecJudge
    from trainers.console import CompactLineFormatter

    texts = [valid_text(1), valid_text(2),
             "x\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN[:9]),  # lines
             "no tools\n" + answer_text(TEN)]  # answer markers inside the reasoning, no call, no </think>
    episodes = [{"text": t, "n_calls": t.count(BEGIN_ITEM_LIST), "preferences": None} for t in texts]
    logged: dict = {}
    judge = DeepRecJudge(CATALOG, True, None, FakeEncoder().encode)
    columns = {"deeprec_episode": episodes, "target": [27] * 4}
    judge(object(), columns, lambda k, v: logged.setdefault(k, []).append(v))
    failures = [parse_trajectory(t, real_calls=e["n_calls"]).failures for t, e in zip(texts, episodes)]
    assert failures[2] == ["lines"] and failures[3] == ["tags", "no_call", "think", "answer"]
    mean = {k: sum(v) / len(v) for k, v in logged.items()}
    assert mean["deeprec/valid_format"] == 0.5
    for check in FORMAT_CHECKS:  # slow reference: count by hand from each episode's failure list
        assert mean[f"deeprec/fail_{check}"] == sum(check in f for f in failures) / 4
    shares = format_check_shares([parse_trajectory(t) for t in texts])
    assert shares["valid"] == 0.5 and shares["fail_lines"] == 0.25 and shares["fail_tags"] == 0.25
    assert format_check_shares([]) == {"valid": 0.0, **{f"fail_{c}": 0.0 for c in FORMAT_CHECKS}}
    line = CompactLineFormatter().line({"deeprec/valid_format": 0.5, "deeprec/calls": 1.25, "loss": 0.1}, 3)
    assert "valid 0.5" in line and "calls 1.25" in line


# ============================================================================================ warm-start loss mask
def scripted_episode(qwen):
    """A real run_episodes episode on the Qwen vocabulary: two real calls (FakeRetriever), then an answer."""
    from test_deeprec import ScriptedGenerator

    encode = lambda t: qwen(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    decode = lambda ids: qwen.decode(ids, skip_special_tokens=True)  # noqa: E731
    answer = [CATALOG.display(i) for i in range(10, 20)]
    script = [f"<think>\nThe user likes sci-fi.\n{pref('sci-fi films')}",
              f"Close, but older ones too.\n{pref('classic films from the seventies')}",
              f"Both lists fit.\n{THINK_CLOSE}\n{answer_text(answer)}"]
    prompt = build_prompt([CATALOG.display(i) for i in (0, 1, 2)], "chat", "movies")
    prompt_ids = qwen.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]
    gen = ScriptedGenerator([script], encode, decode, pick=lambda *_: 0,
                            split=lambda text: text.split("assistant\n", 1)[1])
    ep = run_episodes([list(prompt_ids)], [[0, 1, 2]], [[0, 1, 2]], gen, FakeRetriever(), CATALOG.display, encode,
                      decode, {qwen.eos_token_id}, EpisodeSettings(max_calls=3, max_tokens=4000, k=10))[0]
    assert ep.n_calls == 2 and parse_trajectory(ep.text, real_calls=2).valid
    return prompt, ep


def warmstart_example(qwen):
    """A row of the warm-start data set itself (preprocess.deeprec_data.warmstart_records), real retrieved lists."""
    from datasets import Dataset

    from methods.deeprec.trainer import DeepRecConfig
    from preprocess.deeprec_data import warmstart_records

    rows = Dataset.from_list([{"sample_id": "u1", "history": [0, 1, 2, 3], "seen": [0, 1, 2, 3], "target": 9,
                               "groundtruth": [9], "timestamp": None}])
    cfg = DeepRecConfig(output_dir="/tmp/unused", retrieve_k=10, prompt_style="chat", category="movies",
                        use_cpu=True, bf16=False, report_to="none")
    rec = warmstart_records(rows, CATALOG, FakeRetriever(), cfg)[0]
    retriever = FakeRetriever()
    return rec, retriever


def test_warmstart_loss_mask_covers_exactly_the_injected_tokens_of_a_real_episode(qwen):
    from preprocess.deeprec_data import warmstart_sft_tokens

    prompt, ep = scripted_episode(qwen)
    out = warmstart_sft_tokens(qwen, prompt, [{"role": "assistant", "content": ep.text}])
    ids, mask = out["input_ids"], out["completion_mask"]
    n_prompt = len(qwen.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"])
    assert mask[:n_prompt] == [0] * n_prompt
    blocks = [item_list_text([CATALOG.display(x) for x in row]) for row in ep.retrieved]
    full_text = qwen.decode(ids)
    ref = [0] * n_prompt + ref_char_span_mask(qwen, ids[n_prompt:], qwen.decode(ids[n_prompt:]), blocks)
    assert mask == ref
    # the masked completion tokens are the very tokens the rollout injected (env_mask 0), minus its closing EOS
    env_ids = [t for t, m in zip(ep.completion_ids, ep.env_mask) if m == 0 and t != qwen.eos_token_id]
    assert [t for t, m in zip(ids[n_prompt:], mask[n_prompt:]) if m == 0] == env_ids
    trained = qwen.decode([t for t, m in zip(ids[n_prompt:], mask[n_prompt:]) if m == 1])
    assert BEGIN_ITEM_LIST not in trained and THINK_CLOSE in trained and trained.endswith("<|im_end|>\n")
    assert full_text.endswith(ep.text + "<|im_end|>\n")


def test_warmstart_loss_mask_on_a_warmstart_record(qwen):
    from preprocess.deeprec_data import warmstart_sft_tokens

    rec, _ = warmstart_example(qwen)
    content = rec["completion"][0]["content"]
    out = warmstart_sft_tokens(qwen, rec["prompt"], rec["completion"])
    ids, mask = out["input_ids"], out["completion_mask"]
    n_prompt = mask.index(1)
    blocks = [content[m:n] for m, n in _block_spans(content)]
    assert len(blocks) == 2
    assert mask[n_prompt:] == ref_char_span_mask(qwen, ids[n_prompt:], qwen.decode(ids[n_prompt:]), blocks)
    masked = sum(1 for m in mask[n_prompt:] if m == 0)
    assert 0 < masked < len(mask) - n_prompt


def _block_spans(text):
    spans, pos = [], 0
    while (start := text.find("\n" + BEGIN_ITEM_LIST, pos)) >= 0:
        end = text.index("<|end_of_item_list|>\n", start) + len("<|end_of_item_list|>\n")
        spans.append((start, end))
        pos = end
    return spans


def test_train_sft_masks_tool_results(tmp_path):
    """train_sft.py --mask_tool_results: TRL's labels are -100 on the prompt and on every injected-list token, the
    policy text is trained; without the flag every completion token is trained (46% were lists in the issue)."""
    import train_sft
    from modeling.tiny import build_tiny_model
    from preprocess.contract import save_processed

    model = tmp_path / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    rec, _ = warmstart_example(None)
    save_processed(tmp_path / "ws", {"train": [rec, {**rec, "sample_id": "u2/deeprec_warmstart"}]}, CATALOG_ITEMS,
                   {"name": "ws"}, quiet=True, progress=False)
    common = ["--dataset_path", str(tmp_path / "ws"), "--model_name", str(model), "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--max_length", "2048", "--save_strategy", "no",
              "--eval_strategy", "no", "--report_to", "none", "--activation_checkpointing", "false"]
    trainer = train_sft.main(common + ["--output_dir", str(tmp_path / "m"), "--mask_tool_results", "true"])
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    labels, ids = row["labels"], row["input_ids"]
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    masked_completion = [t for t, lab in zip(ids, labels) if lab == -100]
    assert BEGIN_ITEM_LIST not in trained and "<|end_of_item_list|>" not in trained
    assert "<|begin_of_preference|>" in trained and THINK_CLOSE in trained
    assert BEGIN_ITEM_LIST in tok.decode(masked_completion)
    plain = train_sft.main(common + ["--output_dir", str(tmp_path / "p")])
    row = plain.train_dataset[0]
    assert BEGIN_ITEM_LIST in tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


# ============================================================================================ gate + temperature
class ScriptedPolicy:
    """A generator whose rows follow a fixed script each: valid (one call, answer) or invalid (no call)."""

    def __init__(self, tok, valid_rows):
        self.tok, self.valid_rows = tok, valid_rows

    def generate(self, rows, max_new_tokens):
        from test_deeprec import CharTok  # noqa: F401 (same encoding family as the tests' char tokenizer)

        out = []
        for row in rows:
            text = self.tok.decode(row)
            row_id = int(text.split("ROW", 1)[1].split(" ", 1)[0]) if "ROW" in text else -1
            done = BEGIN_ITEM_LIST in text.split("assistant", 1)[-1]
            if row_id in self.valid_rows:
                seg = (f"<think>\nok\n{pref('p')}" if not done else f"fine\n{THINK_CLOSE}\n{answer_text(TEN)}")
            else:
                seg = f"<think>\nnothing\n{THINK_CLOSE}\n{answer_text(TEN)}"
            out.append((self.tok(seg, add_special_tokens=False)["input_ids"], None))
        return out


def test_warmstart_gate_measures_valid_shares_and_thresholds(qwen, monkeypatch):
    import methods.deeprec.rollout as ed
    from methods.deeprec.trainer import DeepRecConfig
    from methods.deeprec.warmstart import format_gate, warmstart_gate

    # each row's prompt names its row ("ROW<i>") so the scripted policy knows which rows it gets right
    monkeypatch.setattr(ed, "render_prompt", lambda row, *a, **k: [{"role": "user", "content": f"ROW{row['i']} go"}])
    rows = [{"i": i, "history": [0, 1], "seen": [0, 1], "target": 9} for i in range(10)]
    cfg = DeepRecConfig(output_dir="/tmp/unused", retrieve_k=10, prompt_style="chat", category="movies",
                        temperature=0.7, max_trajectory_tokens=2000, use_cpu=True, bf16=False, report_to="none")
    greedy, sampled = ScriptedPolicy(qwen, set(range(9))), ScriptedPolicy(qwen, {0, 1, 2})
    res = warmstart_gate(None, qwen, rows, CATALOG, FakeRetriever(), cfg, generators=(greedy, sampled))
    assert (res["greedy_valid"], res["sampled_valid"], res["passed"]) == (0.9, 0.3, True)
    assert res["greedy_failures"]["no_call"] == pytest.approx(0.1) and res["temperature"] == 0.7
    assert "PASSED" in format_gate(res) and "T 0.7" in format_gate(res)
    res = warmstart_gate(None, qwen, rows, CATALOG, FakeRetriever(), cfg,
                         generators=(greedy, ScriptedPolicy(qwen, {0, 1})))
    assert res["sampled_valid"] == pytest.approx(0.2) and not res["passed"]
    assert "NOT PASSED" in format_gate(res)
    with pytest.raises(ValueError, match="validation rows"):
        warmstart_gate(None, qwen, [], CATALOG, FakeRetriever(), cfg, generators=(greedy, sampled))


def test_rollout_temperature_is_the_stage_config_field():
    """Each stage config names its rollout temperature; the trainer's rollout generator and the gate's sampled
    episodes use that field (GPU configs: 1.0)."""
    import yaml
    from trl import TrlParser

    from conftest import REPO
    from train_deeprec import ScriptArguments
    from methods.deeprec.rollout import rollout_sampling
    from methods.deeprec.trainer import DeepRecConfig

    for name in ("deeprec_qwen25_7b_stage1.yaml", "deeprec_qwen25_7b_stage2.yaml", "tiny/deeprec_ml100k_stage1.yaml",
                 "tiny/deeprec_ml100k_stage2.yaml"):
        raw = yaml.safe_load((REPO / "configs" / name).read_text())
        raw.pop("wandb_project", None)
        assert "temperature" in raw
        _, cfg = TrlParser((ScriptArguments, DeepRecConfig)).parse_dict(
            {**raw, "use_cpu": True, "bf16": False, "use_vllm": False})
        assert rollout_sampling(cfg)["temperature"] == raw["temperature"]
        if not name.startswith("tiny"):
            assert raw["temperature"] == 1.0
    cfg = DeepRecConfig(output_dir="/tmp/unused", temperature=0.6, top_p=0.9, use_cpu=True, bf16=False,
                        report_to="none")
    assert rollout_sampling(cfg) == {"temperature": 0.6, "top_p": 0.9, "top_k": cfg.top_k}
    assert math.isclose(cfg.temperature, 0.6)


def test_warmstart_gate_require_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """--warmstart_gate require on a model that fails the gate: a project error (one line, exit 2), the gate's
    numbers in it and in warmstart_gate.json; report only prints."""
    import json as _json
    from types import SimpleNamespace

    import train_deeprec
    from cli.run import run_script

    failing = {"rows": 4, "temperature": 1.0, "min_greedy": 0.9, "min_sampled": 0.3, "greedy_valid": 0.5,
               "sampled_valid": 0.0, "greedy_failures": {"no_call": 0.5}, "sampled_failures": {"no_call": 1.0},
               "passed": False}
    monkeypatch.setattr(train_deeprec, "warmstart_gate", lambda *a, **k: dict(failing))
    from datasets import Dataset

    trainer = SimpleNamespace(model=None, processing_class=None, accelerator=SimpleNamespace(is_main_process=True))
    rows = Dataset.from_list([{"target": i} for i in range(6)])
    config = SimpleNamespace(output_dir=str(tmp_path))

    def gate(mode):
        return train_deeprec.check_warmstart_gate(trainer, rows, None, None, config,
                                                  SimpleNamespace(warmstart_gate=mode, warmstart_gate_rows=4))

    assert gate("report")["passed"] is False  # report: prints, returns, no error
    assert run_script(lambda argv: gate("require")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: [deeprec] warm-start gate") and "NOT PASSED" in err[0]
    assert _json.loads((tmp_path / "warmstart_gate.json").read_text())["greedy_valid"] == 0.5
