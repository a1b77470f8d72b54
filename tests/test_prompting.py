"""truncate_prompt on conversation prompts: the oldest part of the conversation is cut, instruction and completion
untouched (every builder's layout: tests/test_prompt_fitting.py)."""
import copy

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from preprocess.common import CONVERSATION_MARKER, RANK_GRPO_INSTRUCTION, build_prompt, format_completion
from preprocess.prompting import prompt_token_count, truncate_prompt

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word / punctuation mark (WordLevel, every word is [UNK]): easy to count by hand."""
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, SPECIAL[0]: 1, SPECIAL[1]: 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", additional_special_tokens=SPECIAL)
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small byte-level BPE (merges make the token count non-linear in the characters)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [RANK_GRPO_INSTRUCTION, "USER: I loved Toy Story (1995) and The Matrix (1999), what else?",
              "SYSTEM: Have you seen Heat (1995)? USER: yes, recommend something like Alien (1979) please."]
    tok.train_from_iterator(corpus * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=SPECIAL)
    fast.chat_template = CHATML
    return fast


def long_conversation(n_turns=60):
    return "\n".join(f"USER: turn {i} I liked movie number {i} (19{i % 100:02d}) a lot, what else?"
                     if i % 2 == 0 else f"SYSTEM: try film {i} maybe" for i in range(n_turns))


def conversation_part(messages):
    content = messages[-1]["content"]
    return content[content.index(CONVERSATION_MARKER) + len(CONVERSATION_MARKER):]


def test_fitting_prompt_is_returned_unchanged(word_tokenizer):
    msgs = build_prompt("USER: something like Heat (1995)?")
    n = prompt_token_count(msgs, word_tokenizer)
    assert truncate_prompt(msgs, word_tokenizer, n) is msgs
    assert truncate_prompt(msgs, word_tokenizer, n + 100) is msgs


@pytest.mark.parametrize("tok_name", ["word_tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("budget", [120, 200, 333])
def test_truncates_start_of_conversation_only(request, tok_name, budget):
    tok = request.getfixturevalue(tok_name)
    conv = long_conversation()
    msgs = build_prompt(conv)
    original = copy.deepcopy(msgs)
    assert prompt_token_count(msgs, tok) > budget
    out = truncate_prompt(msgs, tok, budget)
    assert msgs == original  # input not modified
    assert prompt_token_count(out, tok) <= budget
    assert out[-1]["content"].startswith(RANK_GRPO_INSTRUCTION)  # instruction kept
    kept = conversation_part(out)
    assert kept and conv.endswith(kept)  # a suffix: the most recent turns are kept
    assert kept.rstrip().endswith("what else?") or kept.rstrip().endswith("maybe")
    # Close to the budget: putting back the previous 30 characters would not fit.
    longer = conv[max(0, len(conv) - len(kept) - 30):]
    assert prompt_token_count(build_prompt(longer), tok) > budget


def test_word_tokenizer_cut_is_tight(word_tokenizer):
    msgs = build_prompt(long_conversation())
    out = truncate_prompt(msgs, word_tokenizer, 150)
    n = prompt_token_count(out, word_tokenizer)
    assert 148 <= n <= 150  # at most one word more than necessary (the partial word at the cut)
    assert not conversation_part(out)[0].isspace()  # starts at a word


def test_other_messages_and_completion_untouched(word_tokenizer):
    system = {"role": "system", "content": "You are helpful."}
    earlier_user = {"role": "user", "content": "an earlier turn " * 5}
    assistant = {"role": "assistant", "content": "ok"}
    msgs = [system, earlier_user, assistant, build_prompt(long_conversation())[0]]
    completion = format_completion(["Heat (1995)", "Alien (1979)"])
    completion_before = copy.deepcopy(completion)
    out = truncate_prompt(msgs, word_tokenizer, 160)
    assert out[:3] == [system, earlier_user, assistant]
    assert prompt_token_count(out, word_tokenizer) <= 160
    assert completion == completion_before


def test_without_a_history_part_raises_instead_of_cutting_the_instruction(word_tokenizer):
    """No known history layout: shortening would cut the instruction (what the DeepRec warm-start did), so it is an
    error; a prompt that fits is returned as is."""
    text = " ".join(f"w{i}" for i in range(300))
    msgs = [{"role": "user", "content": text}]
    with pytest.raises(ValueError, match="no known history part"):
        truncate_prompt(msgs, word_tokenizer, 50)
    assert truncate_prompt(msgs, word_tokenizer, 400) is msgs


def test_raises_when_even_empty_conversation_does_not_fit(word_tokenizer):
    msgs = build_prompt(long_conversation())
    empty = prompt_token_count(build_prompt(""), word_tokenizer)
    with pytest.raises(ValueError, match="empty history"):
        truncate_prompt(msgs, word_tokenizer, empty - 1)
    out = truncate_prompt(msgs, word_tokenizer, empty)  # exactly the instruction fits
    assert out[-1]["content"] == RANK_GRPO_INSTRUCTION
    with pytest.raises(ValueError):
        truncate_prompt(msgs, word_tokenizer, 0)
