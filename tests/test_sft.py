"""SFT: completion-only loss masks exactly the prompt, prompts (never completions) are cut to max_length, the
seed README command line parses, and a few optimizer steps on a tiny model reduce the loss. CPU, < 60 s."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from preprocess.common import build_prompt, format_completion, item_line  # noqa: E402
from preprocess.contract import save_processed  # noqa: E402

import train_sft  # noqa: E402
from modeling.tiny import build_tiny_model  # noqa: E402

TITLES = ["The Matrix", "Toy Story", "Heat", "Fargo", "Alien", "Casablanca", "Clueless", "Se7en", "Titanic",
          "Jurassic Park", "Blade Runner", "Spirited Away", "Amélie", "Twelve Monkeys", "Pulp Fiction", "Vertigo"]
N_ITEMS = 5
REPO = Path(__file__).resolve().parents[1]


def make_processed(root, n_train=48, n_val=8, seed=0, long_every=0):
    """A processed data set following the contract (docs/ARCHITECTURE.md), tiny; returns the path."""
    rng = random.Random(seed)
    catalog = [{"id": i, "title": t, "year": 1970 + 2 * i} for i, t in enumerate(TITLES)]

    def record(split, k):
        ids = rng.sample(range(len(TITLES)), N_ITEMS + 3)
        hist, gt = ids[:3], ids[3:]
        turns = rng.randint(1, 4) * (8 if long_every and k % long_every == 0 else 1)
        conv = " ".join(f"User: I liked {TITLES[rng.choice(hist)]} a lot, what next? turn {t}." for t in range(turns))
        return {"sample_id": f"{split}-{k}", "prompt": build_prompt(conv, n_items=N_ITEMS),
                "completion": format_completion([item_line(catalog[i]["title"], catalog[i]["year"]) for i in gt]),
                "groundtruth": gt, "seen": hist, "history": [], "target": None, "timestamp": None}

    splits = {"train": [record("train", k) for k in range(n_train)],
              "validation": [record("val", k) for k in range(n_val)]}
    save_processed(root, splits, catalog, {"name": "tiny-test"}, quiet=True)
    return str(root)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = make_processed(root / "data", long_every=6)
    model_dir = root / "model"
    build_tiny_model(model_dir, tokenizer="bpe", dataset_path=data, vocab_size=512, hidden_size=64, num_layers=2)
    return {"root": root, "data": data, "model": str(model_dir)}


def _argv(setup, *extra):
    return ["--dataset_path", setup["data"], "--model_name", setup["model"], "--report_to", "none", "--activation_checkpointing", "false",
            "--output_dir", str(setup["root"] / "out"), *extra]


def test_seed_readme_command_parses(tmp_path):
    cmd = ("--dataset_path ./processed_datasets/sft_dataset --model_name qwen/Qwen2.5-0.5B-Instruct "
           "--num_train_epochs 10 --learning_rate 5e-5 --warmup_ratio 0.05 --per_device_train_batch_size 12 "
           "--per_device_eval_batch_size 12 --gradient_accumulation_steps 8 --save_strategy steps --save_steps 100 "
           "--eval_strategy steps --eval_steps 10 --logging_steps 10").split()
    script_args, args = train_sft.parse_args(cmd)
    assert script_args.model_name == "qwen/Qwen2.5-0.5B-Instruct"
    assert args.output_dir == "results/qwen/Qwen2.5-0.5B-Instruct"  # default: results/<run_name(model_name)>
    assert args.warmup_steps == 0.05 and args.get_warmup_steps(1000) == 50
    assert (args.num_train_epochs, args.learning_rate, args.per_device_train_batch_size,
            args.gradient_accumulation_steps, args.save_steps, args.eval_steps) == (10, 5e-5, 12, 8, 100, 10)
    if not torch.cuda.is_available():
        assert args.use_cpu and not args.bf16


def test_config_file_and_cli_override(tmp_path):
    import yaml

    path = REPO / "configs/tiny/sft_ml100k.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["learning_rate"] != 0.01
    script_args, args = train_sft.parse_args(["--config", str(path), "--learning_rate", "0.01"])
    # YAML values reach both dataclasses; the CLI overrides the YAML
    assert script_args.model_name == cfg["model_name"] and script_args.max_train_samples == cfg["max_train_samples"]
    assert args.max_steps == cfg["max_steps"] and args.per_device_train_batch_size == cfg["per_device_train_batch_size"]
    assert args.learning_rate == 0.01 and args.output_dir == cfg["output_dir"] and args.use_cpu
    _, gpu = train_sft.parse_args(["--config", str(REPO / "configs/sft_qwen25_0.5b.yaml"), "--bf16", "false"])
    assert gpu.per_device_train_batch_size * gpu.gradient_accumulation_steps == 96 and gpu.max_length == 1024


def _sft_trainer(setup, max_length):
    from datasets import load_from_disk
    from trl import SFTTrainer

    from modeling.loading import load_model_and_tokenizer

    _, args = train_sft.parse_args(_argv(setup, "--max_length", str(max_length), "--eval_strategy", "no"))
    args.completion_only_loss = True
    model, tok = load_model_and_tokenizer(setup["model"], dtype="float32", padding_side="right")
    raw = load_from_disk(setup["data"] + "/train")
    fitted, stats = train_sft.fit_to_length(raw, tok, max_length)
    trainer = SFTTrainer(model=model, args=args, train_dataset=fitted, processing_class=tok)
    return trainer, tok, raw, fitted, stats


def test_prompt_tokens_masked_and_completion_never_cut(tiny_setup):
    max_length = 200
    trainer, tok, raw, fitted, stats = _sft_trainer(tiny_setup, max_length)
    assert stats["truncated"] > 0, "the fixture should need truncation at this max_length"
    assert len(trainer.train_dataset) == len(raw)  # nothing dropped by TRL
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(raw))])
    for i in range(len(raw)):
        prompt, completion = fitted[i]["prompt"], fitted[i]["completion"]
        assert completion == raw[i]["completion"]  # completion untouched
        n_prompt = len(tok.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
        full = tok.apply_chat_template(prompt + completion, return_dict=True)["input_ids"]
        assert len(full) <= max_length
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert ids[: len(full)].tolist() == full  # TRL did not cut anything either
        assert (labels[:n_prompt] == -100).all()  # exactly the chat-templated prompt is masked ...
        assert labels[n_prompt: len(full)].tolist() == full[n_prompt:]  # ... and the whole completion is trained
        assert (labels[len(full):] == -100).all()  # padding
        # the completion ends with the end-of-turn token, so the model learns to stop
        assert tok.convert_tokens_to_ids("<|im_end|>") in full[n_prompt:]
        # a cut prompt keeps the instruction and the END of the conversation
        before, after = raw[i]["prompt"][-1]["content"], prompt[-1]["content"]
        assert after.startswith(before.split("Here is the conversation: ")[0])
        assert before.endswith(after.split("Here is the conversation: ")[1])


def test_completion_too_long_is_an_error(tiny_setup):
    from datasets import load_from_disk

    from modeling.loading import load_model_and_tokenizer

    _, tok = load_model_and_tokenizer(tiny_setup["model"], padding_side="right")
    raw = load_from_disk(tiny_setup["data"] + "/train").select(range(3))
    with pytest.raises(ValueError, match=r"train sample train-0: the completion alone"):
        train_sft.fit_to_length(raw, tok, max_length=10)


def test_few_steps_reduce_loss_and_save(tiny_setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny_setup["root"] / "run"
    trainer = train_sft.main(_argv(
        tiny_setup, "--output_dir", str(out), "--max_steps", "30", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--max_length", "256",
        "--eval_strategy", "steps", "--eval_steps", "30", "--max_eval_samples", "8",
        "--save_strategy", "steps", "--save_steps", "15", "--log_file", str(out / "train.log")))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print("losses", [round(x, 3) for x in losses])
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < losses[0] * 0.8, losses
    assert any("eval_loss" in h for h in trainer.state.log_history)
    assert (out / "checkpoint-15").is_dir() and (out / "checkpoint-30").is_dir()
    assert "[sft] train:" in (out / "train.log").read_text()
    AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token == "<|im_end|>"


def test_offline_wandb_run_stays_inside_the_run_folder(tiny_setup, monkeypatch):
    """report_to wandb with WANDB_MODE=offline: the wandb run (history of the logged loss) lands in <output_dir>/wandb."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_PROJECT"):
        monkeypatch.setenv(var, "")  # registers the original value, so what the script sets is undone afterwards
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tiny_setup["root"] / "wandb_run"
    train_sft.main(_argv(tiny_setup, "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1",
                         "--max_length", "256", "--save_strategy", "no", "--report_to", "wandb",
                         "--wandb_project", "sft_test"))
    import os

    assert os.environ["WANDB_PROJECT"] == "sft_test" and os.environ["WANDB_DIR"] == str(out / "wandb")
    runs = list((out / "wandb").rglob("offline-run-*"))
    assert runs, sorted(str(p) for p in out.rglob("*"))[:40]
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_resume_from_the_latest_checkpoint(tiny_setup):
    """Stop after 4 steps (checkpoints 2, 4), then --resume_from_checkpoint last continues from checkpoint-4 to
    step 6 instead of starting over; the resumed run logs only steps 5 and 6."""
    out = tiny_setup["root"] / "resume"
    common = ("--output_dir", str(out), "--logging_steps", "1", "--max_length", "256", "--save_strategy", "steps",
              "--save_steps", "2", "--per_device_train_batch_size", "2")
    first = train_sft.main(_argv(tiny_setup, *common, "--max_steps", "4"))
    assert first.state.global_step == 4 and (out / "checkpoint-4").is_dir()
    written = (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    resumed = train_sft.main(_argv(tiny_setup, *common, "--max_steps", "6", "--resume_from_checkpoint", "last"))
    assert resumed.state.global_step == 6 and (out / "checkpoint-6").is_dir()
    # a restart from step 0 would have written checkpoint-2 again; a resume starts after checkpoint-4
    assert (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == written
    steps = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # history of steps 1-4 restored from the checkpoint, 5-6 trained now
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_sft.main(_argv(tiny_setup, "--output_dir", str(tiny_setup["root"] / "empty"), "--max_steps", "1",
                             "--resume_from_checkpoint", "last"))


def test_lora_run_saves_an_adapter_that_loads(tiny_setup):
    from modeling.loading import load_model_and_tokenizer, resolve_checkpoint

    out = tiny_setup["root"] / "lora"
    train_sft.main(_argv(tiny_setup, "--output_dir", str(out), "--max_steps", "3", "--use_lora", "true",
                         "--lora_r", "4", "--lora_alpha", "8", "--per_device_train_batch_size", "4",
                         "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "3",
                         "--disable_tqdm", "true"))
    assert (out / "adapter_config.json").is_file()
    model, tok = load_model_and_tokenizer(resolve_checkpoint(out, 3))  # base + adapter, merged
    assert not hasattr(model, "peft_config") and tok.eos_token == "<|im_end|>"
