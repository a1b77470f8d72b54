"""Prompt fitting never cuts instructions: every method's prompt (SFT / Rank-GRPO on ML-100k and ReDial, RecPO,
DeepRec in both styles, the DeepRec warm-start SFT data, evaluation) is fitted with the real Qwen vocabulary by
cutting its history, oldest first; the instruction and the format example survive byte for byte; the cut is the
smallest that fits; rows that cannot fit are counted, training stops on them, evaluation reports them."""
from __future__ import annotations

import pytest
from datasets import Dataset

from preprocess.common import RANK_GRPO_INSTRUCTION, build_prompt, format_completion
from preprocess.movielens import conversation_text
from preprocess.prompting import PromptFitError, fit_prompt, fit_prompts, prompt_token_count
from preprocess.recpo_prompts import user_prompt
from preprocess.deeprec_prompts import ANSWER_OPEN, ITEM_PLACEHOLDER, build_prompt as deeprec_prompt, instructions

TITLES = [f"Film Number {i} ({1950 + i})" for i in range(40)]  # distinct, numbered oldest -> newest


@pytest.fixture(scope="module")
def tok():
    from modeling.qwen_vocab import load_qwen_tokenizer

    return load_qwen_tokenizer()


def content(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def kept_titles(text: str) -> list[str]:
    return [t for t in TITLES if t in text]


def assert_oldest_cut(original, fitted, tok, budget, refit):
    """Fits; the kept titles are the most recent ones, in order; one more title would not fit (smallest cut)."""
    assert prompt_token_count(fitted, tok) <= budget
    before, after = kept_titles(content(original)), kept_titles(content(fitted))
    assert 0 < len(after) < len(before)
    assert after == before[len(before) - len(after):]  # a suffix: the oldest went first
    one_more = refit(before[len(before) - len(after) - 1:])
    assert prompt_token_count(one_more, tok) > budget


# ------------------------------------------------------------------------------------------ each builder
def test_movielens_prompt_drops_oldest_titles_keeps_instruction(tok):
    """SFT / Rank-GRPO on ML-100k: whole titles go from the front of the list, the question stays."""
    prompt = build_prompt(conversation_text(TITLES))
    budget = prompt_token_count(prompt, tok) - 60
    out = fit_prompt(prompt, tok, budget)
    text = content(out.prompt)
    assert out.layout == "movielens" and text.startswith(RANK_GRPO_INSTRUCTION + "USER: I have watched these movies")
    assert text.endswith(". Which movies should I watch next?")
    assert_oldest_cut(prompt, out.prompt, tok, budget, lambda kept: build_prompt(conversation_text(kept)))
    assert out.prompt == build_prompt(conversation_text(kept_titles(text)))  # same text as a shorter history's
    assert out.removed == len(TITLES) - len(kept_titles(text))


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_deeprec_prompt_drops_oldest_lines_keeps_instructions_and_example(tok, style):
    """DeepRec (no conversation marker): the instructions with the format example and placeholders stay; whole
    history lines go oldest first and the rest is renumbered from 1, as a shorter render; the completion style keeps
    its ``Assistant:\\n<think>\\n`` tail."""
    prompt = deeprec_prompt(TITLES, style, "movies")
    budget = prompt_token_count(prompt, tok) - 80
    out = fit_prompt(prompt, tok, budget)
    text = content(out.prompt)
    assert out.layout == "deeprec"
    assert text.startswith(instructions("movies"))
    assert f"{ANSWER_OPEN}\n1. {ITEM_PLACEHOLDER}" in text
    if style == "completion":
        assert text.endswith("\nAssistant:\n<think>\n")
    assert_oldest_cut(prompt, out.prompt, tok, budget, lambda kept: deeprec_prompt(kept, style, "movies"))
    assert out.prompt == deeprec_prompt(kept_titles(text), style, "movies")


@pytest.mark.parametrize("with_meta", [False, True])
def test_recpo_prompt_drops_oldest_lines_keeps_header(tok, with_meta):
    ratings = [float(1 + i % 5) for i in range(len(TITLES))] if with_meta else None
    deltas = [86400.0 * (len(TITLES) - i) for i in range(len(TITLES))] if with_meta else None
    render = lambda kept: user_prompt(kept, "video games",  # noqa: E731
                                      ratings=None if ratings is None else ratings[len(TITLES) - len(kept):],
                                      time_deltas=None if deltas is None else deltas[len(TITLES) - len(kept):],
                                      max_history=len(TITLES))
    prompt = render(TITLES)
    header = content(prompt).split("\n[")[0].split("\n3")[0] if not with_meta else content(prompt).split(":\n")[0]
    budget = prompt_token_count(prompt, tok) - 70
    out = fit_prompt(prompt, tok, budget)
    text = content(out.prompt)
    assert out.layout == "recpo" and text.startswith(header)
    assert text.startswith("Analyze in depth and finally recommend next video games I might purchase inside "
                           "<answer> and </answer>.\nFor example, <answer> a product </answer>.")
    assert_oldest_cut(prompt, out.prompt, tok, budget, render)
    assert out.prompt == render(kept_titles(text))  # each kept line keeps its own rating / time delta


def test_redial_conversation_cuts_oldest_text_keeps_instruction(tok):
    """Rank-GRPO on ReDial / Reddit-v2: the free-text conversation loses its oldest words, the newest turn stays."""
    turns = "\n".join(f"USER: I liked {t} a lot\nSYSTEM: then try {TITLES[(i + 1) % 40]}" for i, t in enumerate(TITLES))
    prompt = build_prompt(turns)
    budget = prompt_token_count(prompt, tok) - 100
    out = fit_prompt(prompt, tok, budget)
    text = content(out.prompt)
    assert out.layout == "conversation" and text.startswith(RANK_GRPO_INSTRUCTION)
    assert turns.endswith(text[len(RANK_GRPO_INSTRUCTION):]) and text.endswith(turns[-60:])
    assert prompt_token_count(out.prompt, tok) <= budget


def test_unknown_layout_and_too_small_budget_raise(tok):
    """No history part: no cut at all (it would cut the instruction); an empty history that still does not fit."""
    plain = [{"role": "user", "content": "Recommend something. " * 50}]
    with pytest.raises(PromptFitError, match="no known history part"):
        fit_prompt(plain, tok, 20)
    prompt = deeprec_prompt(TITLES, "chat", "movies")
    empty = prompt_token_count(deeprec_prompt([], "chat", "movies"), tok)
    with pytest.raises(PromptFitError, match="empty history"):
        fit_prompt(prompt, tok, empty - 5)


def test_fit_prompts_counts_unfit_rows_and_keeps_them_whole(tok):
    """Evaluation's path: every row comes back (unfit ones whole), the report counts cut and unfit rows."""
    from evaluation.backends import _truncate

    fits = build_prompt(conversation_text(TITLES[:2]))
    cut = build_prompt(conversation_text(TITLES))
    plain = [{"role": "user", "content": "Recommend something. " * 300}]
    budget = prompt_token_count(cut, tok) - 30
    out, report = fit_prompts([fits, cut, plain], tok, budget, names=["a", "b", "c"])
    assert out[0] is fits and out[2] is plain and prompt_token_count(out[1], tok) <= budget
    assert (report.rows, report.cut, report.unfit) == (3, 1, 1)
    assert report.items_removed == len(TITLES) - len(kept_titles(content(out[1])))
    assert report.unfit_examples[0].startswith("c: ")
    with pytest.raises(PromptFitError, match="1 of 3 prompts cannot fit without cutting their instruction"):
        report.raise_if_unfit("train split")
    assert _truncate([fits, cut, plain], tok, budget) == out


# ------------------------------------------------------------------------------------------ each method's fitter
def _rows(prompts, completion):
    return Dataset.from_list([{"sample_id": f"s{i}", "prompt": p, "completion": completion}
                              for i, p in enumerate(prompts)])


def test_sft_fitter_keeps_the_deeprec_warmstart_instruction(tok):
    """train_sft.fit_to_length on DeepRec warm-start rows (chat prompt, long completion): the case that lost its
    instruction in 1,857 of 2,000 rows before. The instruction survives, history goes oldest first, the
    completion is untouched and the row fits max_length."""
    from train_sft import fit_to_length

    prompt = deeprec_prompt(TITLES, "chat", "movies")
    completion = [{"role": "assistant", "content": "<think>\n" + "reasoning " * 150 + "\n</think>\n"}]
    full = len(tok(tok.apply_chat_template(prompt + completion, tokenize=False), add_special_tokens=False)
               ["input_ids"])
    max_length = full - 90
    ds, stats = fit_to_length(_rows([prompt], completion), tok, max_length, split="train")
    out = ds[0]["prompt"]
    assert content(out).startswith(instructions("movies"))
    assert ds[0]["completion"] == completion
    assert stats["truncated"] == 1 and stats["history_items_removed"] == len(TITLES) - len(kept_titles(content(out)))
    assert stats["max_tokens"] <= max_length
    kept = kept_titles(content(out))
    assert kept == TITLES[len(TITLES) - len(kept):]


def test_sft_fitter_stops_a_run_whose_prompts_would_lose_the_instruction(tok):
    from train_sft import fit_to_length

    plain = [{"role": "user", "content": "Recommend something. " * 300}]
    ok = build_prompt(conversation_text(TITLES[:3]))
    completion = format_completion(TITLES[:5])
    with pytest.raises(PromptFitError, match=r"train split: 2 of 3 prompts cannot fit .*s0: .*s2: "):
        fit_to_length(_rows([plain, ok, plain], completion), tok, 200, split="train")


@pytest.mark.parametrize("method", ["rank_grpo", "recpo"])
def test_rl_fitter_cuts_history_and_stops_on_unfit(tok, method):
    """RecRLTrainer's max_prompt_length path (Rank-GRPO and RecPO prompts): instruction kept, oldest history cut;
    a prompt without a history part stops the run with the count."""
    from trainers.base import truncate_dataset_prompts

    if method == "rank_grpo":
        prompt, head = build_prompt(conversation_text(TITLES)), RANK_GRPO_INSTRUCTION
    else:
        prompt = user_prompt(TITLES, "video games", max_history=len(TITLES))
        head = content(prompt).split("\n")[0]
    budget = prompt_token_count(prompt, tok) - 50
    ds = truncate_dataset_prompts(_rows([prompt, prompt], format_completion(["x"])), tok, budget)
    assert ds.column_names == ["sample_id", "prompt", "completion"]
    for row in ds:
        text = content(row["prompt"])
        assert text.startswith(head) and prompt_token_count(row["prompt"], tok) <= budget
        kept = kept_titles(text)
        assert 0 < len(kept) < len(TITLES) and kept == TITLES[len(TITLES) - len(kept):]
    plain = [{"role": "user", "content": "Recommend something. " * 300}]
    with pytest.raises(PromptFitError, match="train split: 1 of 2 prompts"):
        truncate_dataset_prompts(_rows([prompt, plain], format_completion(["x"])), tok, budget)
