"""DeepRec: reward terms against hand-computed values on crafted trajectories, the episode loop driven by a scripted
policy (calls, verbatim retrieved lists, call limit, token budget, env masks), zero gradient / no KL on injected
tokens, how often TRL hands a prompt to rollout_func, short CPU runs of both stages with resume, the configs."""
from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from methods.deeprec.rollout import EpisodeSettings, answer_item_ids, cut_at_stop, run_episodes
from rewards.catalog import Catalog
from preprocess.deeprec_prompts import (
    ANSWER_CLOSE,
    BEGIN_ITEM_LIST,
    BEGIN_PREFERENCE,
    END_ITEM_LIST,
    END_PREFERENCE,
    THINK_CLOSE,
    answer_text,
    item_list_text,
)
from methods.deeprec.rewards import (
    diversity_reward,
    invocation_reward,
    outcome_reward,
    parse_trajectory,
    similarity_reward,
)

torch.set_num_threads(1)

TITLES = [("The Matrix", 1999), ("Toy Story", 1995), ("Star Wars", 1977), ("Pulp Fiction", 1994), ("Fargo", 1996),
          ("The Godfather", 1972), ("Casablanca", 1942), ("Alien", 1979), ("Heat", 1995), ("Se7en", 1995),
          ("Twelve Monkeys", 1995), ("Jurassic Park", 1993), ("Titanic", 1997), ("Spirited Away", 2001),
          ("Clueless", 1995), ("Blade Runner", 1982), ("Amadeus", 1984), ("Rocky", 1976), ("Jaws", 1975),
          ("Psycho", 1960), ("Vertigo", 1958), ("Brazil", 1985), ("Akira", 1988), ("Ran", 1985),
          ("Memento", 2000), ("Gattaca", 1997), ("Contact", 1997), ("Tron", 1982)]
CATALOG_ITEMS = [{"id": i, "title": t, "year": y, "genres": ["Drama" if i % 2 else "Action"]}
                 for i, (t, y) in enumerate(TITLES)]
CATALOG = Catalog(CATALOG_ITEMS)
TEN = [CATALOG.display(i) for i in range(10)]  # ids 0..9


def pref(text):
    return f"{BEGIN_PREFERENCE}{text}{END_PREFERENCE}"


def tool(ids=(20, 21)):
    return item_list_text([CATALOG.display(i) for i in ids])


def valid_text(n_calls=1, answer=TEN, prefs=None):
    prefs = prefs or [f"pref {i}" for i in range(n_calls)]
    body = "".join(f"step {i}\n{pref(p)}{tool()}" for i, p in enumerate(prefs))
    return body + "so these fit\n" + THINK_CLOSE + "\n" + answer_text(answer)


# ============================================================================================ format + rewards
def test_valid_trajectory_parses():
    t = parse_trajectory(valid_text(2, prefs=["sci-fi", "old noir"]))
    assert t.valid and t.n_calls == 2 and t.preferences == ["sci-fi", "old noir"]
    assert t.answer_lines == TEN
    # chat style: the completion opens <think> itself
    assert parse_trajectory("<think>\n" + valid_text(1)).valid


@pytest.mark.parametrize("text, failures", [
    # an item list the TRM never answered (no preference before it)
    ("x\n" + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN), ["tags"]),
    # a tool marker after </think>
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + pref("late") + "\n" + answer_text(TEN), ["tags"]),
    # a second <think>
    ("<think>a\n<think>" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN), ["tags"]),
    ("no tools here\n" + THINK_CLOSE + "\n" + answer_text(TEN), ["no_call"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "x" + THINK_CLOSE + "\n" + answer_text(TEN), ["think"]),
    # no </think>: the answer list sits inside the reasoning
    ("a\n" + pref("p") + tool() + "r\n" + answer_text(TEN), ["tags", "think", "answer"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\nno list", ["answer"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + answer_text(TEN) + answer_text(TEN), ["answer"]),
    ("a\n" + pref("p") + tool() + THINK_CLOSE + "\n" + answer_text(TEN), ["reasoning"]),
    ("a\n" + pref("p") + tool() + " \n " + THINK_CLOSE + "\n" + answer_text(TEN), ["reasoning"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN[:9]), ["lines"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN + ["Heat (1995)"]), ["lines"]),
    ("a\n" + pref("p") + tool() + "r\n" + THINK_CLOSE + "\n" + answer_text(TEN[:9] + ["[item title]"]),
     ["template"]),
    ("a\n" + pref("[a description of the items this user wants next]") + tool() + "r\n" + THINK_CLOSE + "\n"
     + answer_text(TEN), ["template"]),
    # the rollout stopped at the call limit: the text ends at the unanswered preference
    ("a\n" + pref("p") + tool() + "b\n" + pref("q"), ["tags", "think", "answer"]),
])
def test_each_format_failure(text, failures):
    t = parse_trajectory(text)
    assert t.failures == failures and not t.valid


@pytest.mark.parametrize("n, expected", [(0, 0.0), (1, 0.0), (2, 0.5), (3, 1.0), (4, 1.0), (8, 1.0)])
def test_invocation_reward(n, expected):
    assert invocation_reward(n) == expected
    assert parse_trajectory(valid_text(n)).n_calls == n if n else True


def test_diversity_reward_hand_computed():
    a, b, c = [1.0, 0, 0], [0.5, math.sqrt(3) / 2, 0], [0, 0, 2.0]  # cos(a,b) = .5, cos(a,c) = cos(b,c) = 0
    assert diversity_reward([a]) == 0.0 and diversity_reward(np.zeros((0, 3))) == 0.0
    assert diversity_reward([a, a]) == pytest.approx(0.0)
    assert diversity_reward([a, c]) == pytest.approx(0.2)
    assert diversity_reward([a, b, c]) == pytest.approx(0.2 * (1 - 0.5 / 3))


@pytest.mark.parametrize("position, expected", [(0, 3.0), (4, 2.2), (9, 1.2), (None, 0.0)])
def test_outcome_reward(position, expected):
    target = 27
    ids = [i for i in range(10)]
    if position is not None:
        ids[position] = target
    assert outcome_reward(ids, target, valid=True) == pytest.approx(expected)
    assert outcome_reward(ids, target, valid=False) == 0.0


def test_similarity_reward_hand_computed():
    text = [1.0, 0.5] + [0.0] * 8
    trm = [0.0, 0.5] + [0.0] * 8
    w = [(1 - i / 10) ** 2 for i in range(10)]
    expected = 10 * (w[0] * 0.5 + w[1] * 0.5) / sum(w)
    assert similarity_reward(text, trm, True) == pytest.approx(expected)
    # an out-of-catalog item (None) scores 0 at its position
    assert similarity_reward([None] + text[1:], [None] + trm[1:], True) == pytest.approx(10 * w[1] * 0.5 / sum(w))
    assert similarity_reward(text, trm, False) == 0.0


class FakeEncoder:
    """Deterministic unit vectors: a fixed table for known texts, else a hash-seeded random vector."""

    name = "fake-encoder"
    dim = 8

    def __init__(self, table=None):
        self.table = table or {}

    def encode(self, texts, batch_size=64, **_):
        out = []
        for t in texts:
            v = np.asarray(self.table[t], dtype=np.float64) if t in self.table else \
                np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


class FakeRetriever:
    """The TRMRetriever interface the loop and the trainer use: retrieve / encode / catalog_ids."""

    def __init__(self, ids=range(len(TITLES)), encoder=None):
        self.catalog_ids = np.asarray(list(ids))
        self.excluded_ids = []
        self.encoder = encoder or FakeEncoder()
        self.calls = []

    def retrieve(self, histories, preference_texts=None, k=20, exclude=None):
        self.calls.append((list(map(list, histories)), list(preference_texts or [None] * len(histories))))
        out = []
        for b, h in enumerate(histories):
            banned = set(h) | set(exclude[b] if exclude is not None else [])
            shift = len(preference_texts[b] or "") if preference_texts is not None else 0
            order = [int(x) for x in np.roll(self.catalog_ids, -shift) if int(x) not in banned]
            if k > len(order):
                raise ValueError("k too large")
            out.append(order[:k])
        return np.asarray(out), np.zeros((len(out), k), dtype=np.float32)

    def encode(self, texts):
        return self.encoder.encode(list(texts))


def test_judge_rewards_on_crafted_episodes():
    from methods.deeprec.judge import DeepRecJudge, ItemEmbeddings

    enc = FakeEncoder({"a": [1, 0, 0, 0, 0, 0, 0, 0], "b": [0, 1, 0, 0, 0, 0, 0, 0], "c": [1, 1, 0, 0, 0, 0, 0, 0]})
    V = len(TITLES)
    text = np.eye(V)[:, :V]
    trm = np.eye(V)
    trm[3] = trm[27] = (np.eye(V)[3] + np.eye(V)[27]) / math.sqrt(2)  # TRM cosine(3, 27) = 1
    emb = ItemEmbeddings(range(V), text, trm)
    judge = DeepRecJudge(CATALOG, True, emb, enc.encode)
    hit1 = [CATALOG.display(27)] + TEN[1:]
    hit10 = TEN[:9] + [CATALOG.display(27)]
    ooc = ["Not A Real Movie (1990)"] + TEN[1:]  # out of catalog at rank 1, item 3 at rank 4
    episodes = [{"text": valid_text(1, hit1, ["a"])}, {"text": valid_text(2, hit10, ["a", "b"])},
                {"text": valid_text(3, ooc, ["a", "b", "c"])}, {"text": "broken"}]
    scores = judge.score(episodes, [27] * 4)
    r = [s.rewards for s in scores]
    assert [x["format"] for x in r] == [0.0, 0.0, 0.0, -1.0]
    assert [x["invocation"] for x in r] == [0.0, 0.5, 1.0, 0.0]
    assert r[0]["diversity"] == 0.0 and r[1]["diversity"] == pytest.approx(0.2)
    assert r[2]["diversity"] == pytest.approx(0.2 * (1 - (2 / math.sqrt(2)) / 3))
    assert [x["outcome"] for x in r] == pytest.approx([3.0, 1.2, 0.0, 0.0])
    w = np.array([(1 - i / 10) ** 2 for i in range(10)])
    # hit at rank 1: s_0 = mean(text 1, trm 1) = 1; item 3 at rank 4: s_3 = mean(0, 1) = .5
    assert r[0]["similarity"] == pytest.approx(10 * (w[0] * 1 + w[3] * 0.5) / w.sum())
    assert r[2]["similarity"] == pytest.approx(10 * (w[3] * 0.5) / w.sum())  # rank 1 out of catalog: 0
    assert r[3]["similarity"] == 0.0
    assert answer_item_ids(["Not A Real Movie (1990)", "Heat (1995)"], CATALOG, True) == [None, 8]


# ============================================================================================ the loop
class CharTok:
    """One token per character (id = ord + 1); id 0 = EOS."""

    eos = 0

    def encode(self, text):
        return [ord(c) + 1 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 1) for i in ids if i > 0)


class ScriptedGenerator:
    """A fake policy: a row follows script ``pick(row text, completion so far)``; turn t (= tool results so far) emits the
    rest of segment t (so a per-turn cap continues it), plus ``overrun`` text after it (the loop must cut at the
    stop). ``split(text) -> completion`` finds where the prompt ends."""

    def __init__(self, scripts, encode, decode, pick, split, overrun="JUNK"):
        self.scripts, self.encode, self.decode, self.pick, self.overrun = scripts, encode, decode, pick, overrun
        self.split = split
        self.calls = []

    def generate(self, rows, max_new_tokens):
        self.calls.append(len(rows))
        out = []
        boundary = END_ITEM_LIST + "\n"
        for row, cap in zip(rows, max_new_tokens):
            text = self.decode(row)
            completion = self.split(text)
            script = self.scripts[self.pick(text, completion)]
            turn = completion.count("\n" + BEGIN_ITEM_LIST + "\n")
            seg = script[min(turn, len(script) - 1)]
            done = completion[completion.rfind(boundary) + len(boundary):] if turn else completion
            rest = seg[len(done):] if seg.startswith(done) else seg
            out.append((self.encode(rest + self.overrun)[:cap], None))
        return out


def _script(n_calls, answer=TEN, tag="S"):
    segs = [f"{tag} think {i}\n{pref('p' * (i + 1))}" for i in range(n_calls)]
    return segs + [f"{tag} done\n{THINK_CLOSE}\n{answer_text(answer)}"]


def _run(scripts, settings, prompts=("P0#", "P1#", "P2#"), histories=None):
    """The loop on the character tokenizer; prompt ``P<k>#`` follows script k."""
    tok = CharTok()
    retriever = FakeRetriever()
    gen = ScriptedGenerator(scripts, tok.encode, tok.decode, pick=lambda text, _: int(text[1]),
                            split=lambda text: text.split("#", 1)[1])
    histories = histories or [[0, 1], [2], [3, 4, 5]][:len(prompts)]
    eps = run_episodes([tok.encode(p) for p in prompts], histories, [[h[0]] for h in histories], gen, retriever,
                       CATALOG.display, tok.encode, tok.decode, {tok.eos}, settings)
    return eps, retriever, gen, tok


def test_scripted_policy_calls_and_verbatim_lists():
    eps, retriever, gen, tok = _run([_script(0), _script(1), _script(3)], EpisodeSettings(max_calls=8, k=5))
    assert [e.n_calls for e in eps] == [0, 1, 3]
    assert [e.end_reason for e in eps] == ["answer"] * 3
    assert gen.calls == [3, 2, 1, 1]  # batched over the still-active rows
    # one batched retrieval per round, with the row's history and its preference text
    assert retriever.calls[0] == ([[2], [3, 4, 5]], ["p", "p"])
    assert retriever.calls[1:] == [([[3, 4, 5]], ["pp"]), ([[3, 4, 5]], ["ppp"])]
    for e in eps:
        assert "JUNK" not in e.text and e.text.endswith(ANSWER_CLOSE)
        for ids in e.retrieved:  # the retrieved list appears verbatim, as environment tokens
            assert item_list_text([CATALOG.display(i) for i in ids]) in e.text
        assert len(e.retrieved) == e.n_calls and all(len(r) == 5 for r in e.retrieved)
        policy = tok.decode([t for t, m in zip(e.completion_ids, e.env_mask) if m])
        env = tok.decode([t for t, m in zip(e.completion_ids, e.env_mask) if not m])
        assert env == "".join(item_list_text([CATALOG.display(i) for i in ids]) for ids in e.retrieved)
        assert BEGIN_ITEM_LIST not in policy and END_ITEM_LIST not in policy
        assert tok.decode(e.completion_ids) == e.text
        assert e.completion_ids[-1] == tok.eos and e.env_mask[-1] == 0  # EOS appended after the answer
        assert parse_trajectory(e.text).valid == (e.n_calls > 0)


def test_episode_ends_at_the_call_limit():
    eps, retriever, _, _ = _run([_script(2), _script(3), _script(5)], EpisodeSettings(max_calls=3, k=4))
    assert [e.n_calls for e in eps] == [2, 3, 3]
    assert [e.end_reason for e in eps] == ["answer", "answer", "call_limit"]
    assert eps[2].text.endswith(END_PREFERENCE) and not parse_trajectory(eps[2].text).valid
    assert sum(len(c[0]) for c in retriever.calls) == 8  # no 4th call for the third row


def test_episode_ends_at_the_token_budget():
    tok = CharTok()
    scripts = [_script(1), _script(2), _script(0)]
    full, _, _, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5))
    lengths = [len(e.completion_ids) for e in full]
    assert lengths[1] > max(lengths[0], lengths[2])
    # row 1 needs one token more than the budget in its last generated turn (lengths count the appended EOS):
    # cut at the budget, over-long, masked by the trainer
    budget = lengths[1] - 2
    eps, _, _, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5, max_tokens=budget))
    assert eps[1].overlong and eps[1].end_reason == "budget" and len(eps[1].completion_ids) == budget
    assert not eps[1].text.endswith(ANSWER_CLOSE)
    for i in (0, 2):
        assert not eps[i].overlong and eps[i].completion_ids == full[i].completion_ids
    # a budget reached inside an injected list ends the episode right after that list (no further generation)
    first_call = full[1].text.index(END_ITEM_LIST) + len(END_ITEM_LIST)
    eps, retriever, _, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5, max_tokens=first_call - 3))
    for i in (0, 1):
        assert eps[i].overlong and eps[i].n_calls == 1 and eps[i].end_reason == "budget"
        assert eps[i].text.endswith(END_ITEM_LIST + "\n") and tok.decode(eps[i].completion_ids) == eps[i].text


def test_per_turn_cap_continues_the_turn():
    scripts = [_script(1), _script(2), _script(0)]
    a, _, gen_a, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5))
    b, _, gen_b, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5, max_turn_tokens=7))
    assert [e.text for e in b] == [e.text for e in a] and [e.env_mask for e in b] == [e.env_mask for e in a]
    assert len(gen_b.calls) > 3 * len(gen_a.calls)


def test_collective_rounds_pad_to_the_agreed_row_count_and_drop_the_dummies():
    """``round_rows`` (the trainer's cross-process agreement; here a stand-in for a busier other process): every
    round the generator gets exactly the agreed number of rows -- this process's active rows, then dummy rows (its
    first prompt, 1 new token) -- and the episodes equal the unpadded run's. A process with no active row left
    keeps generating dummy rows while the other process is busy, and the loop ends when the agreement says 0."""
    tok = CharTok()
    scripts = [_script(0), _script(1), _script(3)]
    plain, plain_retriever, plain_gen, _ = _run(scripts, EpisodeSettings(max_calls=8, k=5))
    assert plain_gen.calls == [3, 2, 1, 1]
    other = [4, 4, 3, 3, 2, 0]  # the other process's active rows in each round (5 busy rounds)
    asked = []

    def round_rows(n_local):
        asked.append(n_local)
        return max(n_local, other[len(asked) - 1])

    class Recording(ScriptedGenerator):
        seen: list = []

        def generate(self, rows, max_new_tokens):
            type(self).seen.append((rows, list(max_new_tokens)))
            return super().generate(rows, max_new_tokens)

    prompts = ("P0#", "P1#", "P2#")
    gen = Recording(scripts, tok.encode, tok.decode, pick=lambda text, _: int(text[1]),
                    split=lambda text: text.split("#", 1)[1])
    retriever = FakeRetriever()
    histories = [[0, 1], [2], [3, 4, 5]]
    eps = run_episodes([tok.encode(p) for p in prompts], histories, [[h[0]] for h in histories], gen, retriever,
                       CATALOG.display, tok.encode, tok.decode, {tok.eos}, EpisodeSettings(max_calls=8, k=5),
                       round_rows=round_rows)
    assert asked == [3, 2, 1, 1, 0, 0]  # this process's active rows; it is done after round 4
    assert gen.calls == [4, 4, 3, 3, 2]  # every round: the agreed count
    for (rows, caps), n_real in zip(Recording.seen, [3, 2, 1, 1, 0]):
        assert all(r == tok.encode("P0#") for r in rows[n_real:])  # the dummy rows: the first prompt
        assert caps[n_real:] == [1] * (len(rows) - n_real)
    for a, b in zip(eps, plain):  # the dummies' outputs were dropped: the same episodes as unpadded
        assert (a.completion_ids, a.env_mask, a.text, a.n_calls, a.end_reason) == \
            (b.completion_ids, b.env_mask, b.text, b.n_calls, b.end_reason)
    assert retriever.calls == plain_retriever.calls  # no retrieval for a dummy row
    with pytest.raises(RuntimeError, match="round_rows returned 1 rows for a round with 3 active rows"):
        run_episodes([tok.encode(p) for p in prompts], histories, None, gen, retriever, CATALOG.display,
                     tok.encode, tok.decode, {tok.eos}, EpisodeSettings(), round_rows=lambda n: 1)


def test_cut_at_stop():
    tok = CharTok()
    ids, why = cut_at_stop(tok.encode("abc" + END_PREFERENCE + "xyz"), tok.decode, {0})
    assert tok.decode(ids) == "abc" + END_PREFERENCE and why == END_PREFERENCE
    ids, why = cut_at_stop(tok.encode("abc") + [0] + tok.encode("zz"), tok.decode, {0})
    assert ids == tok.encode("abc") + [0] and why == "eos"
    ids, why = cut_at_stop(tok.encode("x" + ANSWER_CLOSE) + [0], tok.decode, {0})
    assert why == ANSWER_CLOSE and ids[-1] != 0
    assert cut_at_stop(tok.encode("plain"), tok.decode, {0}) == (tok.encode("plain"), None)


# ============================================================================================ loss / masks
def test_injected_tokens_get_zero_gradient_and_no_kl():
    from trainers.core_algos import get_policy_loss

    def deeprec_policy_loss(logps, old, adv, mask, eps_low, eps_high, aggregation, beta, ref_per_token_logps):
        """DeepRec's policy loss (the trainer's pieces: token units, its aggregation) + beta KL, and the KL."""
        out = get_policy_loss("ppo_clip")(logps, old, adv, mask, eps_low=eps_low, eps_high=eps_high,
                                          aggregation=aggregation, ref_per_token_logps=ref_per_token_logps)
        return out.policy + beta * out.kl, out.log_w, out.kl

    torch.manual_seed(0)
    B, T, V = 3, 9, 11
    logits = torch.randn(B, T, V, requires_grad=True)
    ids = torch.randint(0, V, (B, T))
    env = torch.ones(B, T)
    env[0, 2:5] = 0
    env[1, 6:] = 0
    env[2] = 0  # an over-long trajectory: masked out entirely
    completion_mask = torch.ones(B, T)
    completion_mask[1, 8] = 0
    mask = completion_mask * env
    for aggregation in ("token", "sequence"):
        logps = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
        old = logps.detach() + 0.1 * torch.randn(B, T)
        ref = logps.detach() + 0.3 * torch.randn(B, T)
        adv = torch.tensor([1.0, -0.5, 2.0])
        loss, _, kl = deeprec_policy_loss(logps, old, adv, mask, 0.2, 0.28, aggregation, beta=0.1,
                                          ref_per_token_logps=ref)
        grad, = torch.autograd.grad(loss, logits)
        assert torch.equal(grad[mask == 0], torch.zeros_like(grad[mask == 0]))
        assert (grad[mask == 1].abs().sum(-1) > 0).all()
        # no KL on injected tokens: any reference log-prob there leaves the loss bit-identical
        ref2 = torch.where(mask == 0, ref + 5.0, ref)
        loss2, _, kl2 = deeprec_policy_loss(logps, old, adv, mask, 0.2, 0.28, aggregation, beta=0.1,
                                            ref_per_token_logps=ref2)
        assert torch.equal(loss, loss2) and torch.equal(kl, kl2)
        # and the slow reference: token-mean of -min(w A, clip(w) A) over policy tokens
        w = torch.exp(logps - old)
        a = adv[:, None].expand_as(w)
        s = torch.min(w * a, torch.clamp(w, 0.8, 1.28) * a)
        if aggregation == "token":
            ref_pg = -(s * mask).sum() / mask.sum()
        else:
            rows = [(s[b] * mask[b]).sum() / mask[b].sum().clamp(min=1) for b in range(B)]
            ref_pg = -torch.stack(rows).mean()
        d = ref - logps
        k3 = (torch.exp(d) - d - 1) * mask
        ref_kl = torch.stack([k3[b].sum() / mask[b].sum().clamp(min=1) for b in range(B)]).mean()
        assert loss.item() == pytest.approx((ref_pg + 0.1 * ref_kl).item(), rel=1e-6)


# ============================================================================================ trainer
N_TRAIN = 8


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A sequential contract data set over the 28-item catalog, a tiny random Qwen3 with a small BPE, and a saved
    (untrained) TRM with the fake encoder."""
    from modeling.tiny import build_tiny_model
    from preprocess.common import build_prompt, format_completion
    from preprocess.contract import save_processed
    from retrieval.retriever import TRMRetriever

    root = tmp_path_factory.mktemp("deeprec")
    recs = []
    for s in range(N_TRAIN + 4):
        hist = [(3 * s + j) % len(TITLES) for j in range(4)]
        target = (3 * s + 5) % len(TITLES)
        recs.append(dict(sample_id=f"s{s}", prompt=build_prompt("history", n_items=10),
                         completion=format_completion([CATALOG.display(target)]), groundtruth=[target],
                         seen=hist, history=hist, target=target, timestamp=None))
    data = root / "data"
    save_processed(data, {"train": recs[:N_TRAIN], "validation": recs[N_TRAIN:]}, CATALOG_ITEMS, {"name": "tiny"},
                   quiet=True, progress=False)
    model = root / "model"
    build_tiny_model(model, tokenizer="bpe", vocab_size=600, hidden_size=32, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=64)
    trm = root / "trm"
    TRMRetriever.build(CATALOG_ITEMS, FakeEncoder(), hidden_size=16, num_heads=2, num_layers=1).save(trm)
    return root, data, model, trm


def _scripts_for_trainer():
    """Four policies with different rewards: 0 calls (invalid), 1, 2 and 3 calls; answers with/without the target
    of most rows (rank varies), so stage rec rewards differ too."""
    ans_a = [CATALOG.display(i) for i in range(5, 15)]
    ans_b = [CATALOG.display(i) for i in range(15, 25)]
    return [_script(0, ans_a, "S0"), _script(1, ans_a, "S1"), _script(2, ans_b, "S2"), _script(3, ans_a, "S3")]


def _scripted_trainer_class(tokenizer, seed=0):
    from methods.deeprec.trainer import DeepRecTrainer

    rng = random.Random(seed)

    class Scripted(DeepRecTrainer):
        rollout_prompts: list = []

        def _generator(self):
            scripts = _scripts_for_trainer()

            def pick(text, completion):
                marks = re.findall(r"S(\d) (?:think|done)", completion)
                return int(marks[-1]) if marks else rng.randrange(len(scripts))

            encode = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
            return ScriptedGenerator(scripts, encode, self.decode_completion, pick, overrun=" junk",
                                     split=lambda text: text.split("Assistant:\n<think>\n", 1)[1])

        def _rollout(self, prompts, trainer=None):
            type(self).rollout_prompts.append(list(prompts))
            return super()._rollout(prompts, trainer)

    return Scripted


def _config(tmp_path, **kw):
    from methods.deeprec.trainer import DeepRecConfig

    base = dict(output_dir=str(tmp_path / "out"), num_generations=4, per_device_train_batch_size=8,
                gradient_accumulation_steps=1, max_steps=1, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, bf16=False, activation_checkpointing=False, seed=0,
                max_trajectory_tokens=2048, retrieve_k=5, difficulty_top_k=20, max_completion_length=64)
    base.update(kw)
    return DeepRecConfig(**base)


def test_rollout_func_sees_each_prompt_G_times_and_env_tokens_get_no_gradient(tiny_setup, tmp_path):
    """TRL 1.16 hands rollout_func each prompt G times in one call (its docstring says 'no duplication'); the
    batch carries env masks; injected tokens' logits get exactly zero gradient through the trainer's own loss,
    with a KL term on (beta > 0)."""
    from collections import Counter

    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed

    _, data, model, trm = tiny_setup
    from retrieval.retriever import TRMRetriever

    tok = load_tokenizer(model)
    dsd, catalog = load_processed(data)
    cls = _scripted_trainer_class(tok)
    cls.rollout_prompts = []
    retriever = TRMRetriever.load(trm, encoder=FakeEncoder())
    cfg = _config(tmp_path, beta=0.05, difficulty_selection=False)
    trainer = cls(model=str(model), args=cfg, train_dataset=dsd["train"], processing_class=tok, catalog=catalog,
                  retriever=retriever)
    trainer.train()
    assert len(cls.rollout_prompts) == 1
    counts = Counter(cls.rollout_prompts[0])
    assert len(cls.rollout_prompts[0]) == 8 and set(counts.values()) == {cfg.num_generations}

    rows = [dict(r) for r in trainer.train_dataset.select(range(4)) for _ in range(4)]  # G = 4 copies each
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    assert "tool_mask" in batch
    policy = batch["completion_mask"] * batch["tool_mask"]
    injected = batch["completion_mask"] * (1 - batch["tool_mask"])
    assert injected.sum() > 0 and policy.sum() > 0
    # TRL 1.16 scores with a fused LM head (no logits tensor), so the check is on the per-token log-probs: token t's
    # logits enter the loss only through log p(t), so a zero log-prob gradient is a zero logits gradient
    # (test_injected_tokens_get_zero_gradient_and_no_kl checks the logits themselves on the same loss function)
    captured = []
    original = trainer._get_per_token_logps_and_entropies

    def capture(*a, **kw):
        logps, ent, aux = original(*a, **kw)
        logps.retain_grad()
        captured.append(logps)
        return logps, ent, aux

    trainer._get_per_token_logps_and_entropies = capture
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.requires_grad and math.isfinite(loss.item())
    g = captured[-1].grad.abs()  # (B, T)
    assert torch.equal(g[injected.bool()], torch.zeros_like(g[injected.bool()]))
    assert (g[policy.bool()] > 0).any()
    assert "ref_per_token_logps" in batch  # the KL term was on


def _finite(trainer, n):
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == n
    for h in logs:
        for k, v in h.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
    return logs


def test_stage_cold_and_rec_runs_resume_and_difficulty_selection(tiny_setup, tmp_path, monkeypatch):
    """Both stages through train_deeprec.py with the scripted policy; stage rec starts from stage cold's run;
    resume from a checkpoint continues the step count; the selection count lands in data_selection.json."""
    import json

    import train_deeprec
    import methods.deeprec.trainer as td
    from modeling.loading import load_tokenizer

    _, data, model, trm = tiny_setup
    tok = load_tokenizer(model)
    monkeypatch.setattr(td, "DeepRecTrainer", _scripted_trainer_class(tok, seed=1))
    monkeypatch.setattr(train_deeprec, "DeepRecTrainer", td.DeepRecTrainer)
    common = ["--dataset_path", str(data), "--trm_path", str(trm), "--num_generations", "4",
              "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--logging_steps", "1",
              "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none", "--seed", "0",
              "--max_trajectory_tokens", "2048", "--retrieve_k", "5", "--difficulty_top_k", "20",
              "--activation_checkpointing", "false", "--dataloader_num_workers", "0"]
    cold = tmp_path / "cold"
    t1 = train_deeprec.main(["--model_name", str(model), "--stage", "cold", "--output_dir", str(cold),
                             "--max_steps", "2", *common], encoder=FakeEncoder())
    logs = _finite(t1, 2)
    for name in ("format", "invocation", "diversity"):
        assert f"rewards/{name}/mean" in logs[0]
    assert "rewards/outcome/mean" not in logs[0] and "deeprec/calls" in logs[0]
    assert logs[0]["reward"] == pytest.approx(sum(logs[0][f"rewards/{n}/mean"] for n in
                                                  ("format", "invocation", "diversity")), abs=1e-5)
    sel = json.loads((cold / "data_selection.json").read_text())
    assert sel["rows_before"] == N_TRAIN and sel["rows_kept"] + sel["rows_dropped"] == N_TRAIN
    assert sel["rows_kept"] == len(t1.train_dataset)
    assert (cold / "checkpoint-2").is_dir() and (cold / "model.safetensors").is_file()

    # resume: one more step from checkpoint-2
    t1b = train_deeprec.main(["--model_name", str(model), "--stage", "cold", "--output_dir", str(cold),
                              "--max_steps", "3", "--resume_from_checkpoint", "true", *common],
                             encoder=FakeEncoder())
    assert t1b.state.global_step == 3
    assert [h["step"] for h in _finite(t1b, 3)] == [1, 2, 3]  # the restored history + the new step

    rec = tmp_path / "rec"
    t2 = train_deeprec.main(["--init_from", str(cold), "--stage", "rec", "--output_dir", str(rec),
                             "--max_steps", "2", *common], encoder=FakeEncoder())
    logs = _finite(t2, 2)
    for name in ("format", "outcome", "similarity"):
        assert f"rewards/{name}/mean" in logs[0]
    assert "rewards/invocation/mean" not in logs[0]
    assert any(h["rewards/outcome/mean"] > 0 or h["rewards/similarity/mean"] != 0 for h in logs)


def test_real_hf_generation_run(tiny_setup, tmp_path):
    """One step with the real HF sampler of a random tiny model (mostly over-long or unformatted trajectories):
    finite, and over-long rows are masked out entirely."""
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed
    from retrieval.retriever import TRMRetriever
    from methods.deeprec.trainer import DeepRecTrainer

    _, data, model, trm = tiny_setup
    tok = load_tokenizer(model)
    dsd, catalog = load_processed(data)
    cfg = _config(tmp_path, max_trajectory_tokens=24, num_generations=2, per_device_train_batch_size=4,
                  difficulty_selection=False)
    trainer = DeepRecTrainer(model=str(model), args=cfg, train_dataset=dsd["train"], processing_class=tok,
                             catalog=catalog, retriever=TRMRetriever.load(trm, encoder=FakeEncoder()))
    trainer.train()
    logs = _finite(trainer, 1)
    assert logs[0]["rewards/format/mean"] == -1.0
    assert 0 <= logs[0]["deeprec/overlong"] <= 1


def test_recommender_through_the_seam(tiny_setup, tmp_path):
    """DeepRecRecommender: scripted greedy policy, failed episodes are misses, predictions hold the trajectory."""
    from evaluation.predictions import target_only
    from methods.deeprec.rollout import DeepRecRecommender
    from evaluation.evaluate import evaluate_recommender
    from modeling.loading import load_tokenizer
    from preprocess.contract import load_processed

    _, data, model, _ = tiny_setup
    tok = load_tokenizer(model)
    dsd, catalog = load_processed(data)
    rows = target_only(dsd["validation"])
    # rows alternate between the scripts: 0, 2 -> S0 (no call: invalid -> a miss); 1, 3 -> S1 (two calls, valid)
    scripts = [_script(0, [CATALOG.display(rows[0]["target"])] + TEN[:9], "S0"),
               _script(2, [CATALOG.display(rows[1]["target"])] + TEN[:9], "S1")]
    encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    state = {"n": 0}

    def pick(text, completion):
        marks = re.findall(r"S(\d) (?:think|done)", completion)
        if marks:
            return int(marks[-1])
        state["n"] += 1
        return (state["n"] - 1) % 2

    gen = ScriptedGenerator(scripts, encode, decode, pick, overrun="",
                            split=lambda text: text.split("Assistant:\n<think>\n", 1)[1])
    rec = DeepRecRecommender(None, tok, FakeRetriever(), catalog, EpisodeSettings(k=5), generator=gen,
                             batch_size=4)
    metrics = evaluate_recommender(rec, rows, catalog, tmp_path / "eval", ks=(1, 5, 10), n_items=10)
    state["n"] = 0
    recs = rec.recommend(rows)
    assert [len(r.item_ids) for r in recs] == [0, 10, 0, 10]
    assert recs[1].item_ids[0] == rows[1]["target"] and recs[1].text.count(END_ITEM_LIST) == 2
    assert metrics["recall@1"] == pytest.approx(0.25)  # row 1 hits at rank 1; row 0 would have, but is invalid
    assert rec.episode_stats["deeprec/calls_per_episode"] == pytest.approx(1.0)
    assert rec.episode_stats["deeprec/valid_format_rate"] == pytest.approx(0.5)
    assert "recall@1" in metrics and "ndcg@5" in metrics and "ndcg@10" in metrics
    assert (tmp_path / "eval" / "predictions.jsonl").is_file()


def test_warmstart_records_are_valid_trajectories(tiny_setup, tmp_path):
    from preprocess.contract import load_processed, save_processed
    from preprocess.deeprec_data import warmstart_records

    _, data, _, _ = tiny_setup
    dsd, catalog = load_processed(data)
    retriever = FakeRetriever()
    recs = warmstart_records(dsd["train"], catalog, retriever, _config(tmp_path, prompt_style="chat",
                                                                        retrieve_k=10))
    with pytest.raises(ValueError, match="retrieve_k must be >= 10"):
        warmstart_records(dsd["train"], catalog, retriever, _config(tmp_path, retrieve_k=5))
    assert len(recs) == N_TRAIN
    for r, row in zip(recs, dsd["train"]):
        traj = parse_trajectory(r["completion"][0]["content"])
        assert traj.valid and traj.n_calls == 2 and len(traj.answer_lines) == 10
        assert set(answer_item_ids(traj.answer_lines, catalog, True)).isdisjoint(row["history"])
    save_processed(tmp_path / "ws", {"train": recs}, CATALOG_ITEMS, {"name": "ws"}, quiet=True, progress=False)


def test_configs_parse():
    from trl import TrlParser

    from train_deeprec import ScriptArguments
    from methods.deeprec.trainer import DeepRecConfig

    for name, stage in (("deeprec_qwen25_7b_stage1.yaml", "cold"), ("deeprec_qwen25_7b_stage2.yaml", "rec"),
                        ("tiny/deeprec_ml100k_stage1.yaml", "cold"), ("tiny/deeprec_ml100k_stage2.yaml", "rec")):
        path = REPO / "configs" / name
        raw = yaml.safe_load(path.read_text())
        raw.pop("wandb_project", None)
        script, cfg = TrlParser((ScriptArguments, DeepRecConfig)).parse_dict(
            {**raw, "use_cpu": True, "bf16": False, "use_vllm": False})
        assert cfg.stage == stage and cfg.num_generations == raw["num_generations"]
        assert (cfg.epsilon, cfg.epsilon_high, cfg.beta) == (0.2, 0.28, 0.0)
        if not name.startswith("tiny"):
            assert raw["use_vllm"] is True and raw["vllm_mode"] == "colocate"
            assert cfg.learning_rate == 1e-6 and cfg.num_generations == 8 and cfg.max_calls == 8
            assert cfg.max_trajectory_tokens == 16384 and cfg.difficulty_selection is True
        if stage == "rec":
            assert script.init_from


def test_warmstart_data_through_the_script_trains_with_train_sft(tiny_setup, tmp_path):
    """train_deeprec.py --write_warmstart_data writes a contract data set that train_sft.py trains on (one step)."""
    import train_deeprec
    import train_sft
    from preprocess.contract import load_processed

    _, data, model, trm = tiny_setup
    out = tmp_path / "ws"
    train_deeprec.main(["--dataset_path", str(data), "--trm_path", str(trm), "--write_warmstart_data", str(out),
                        "--eval_split", "validation", "--retrieve_k", "10", "--category", "movies"],
                       encoder=FakeEncoder())
    dsd, _ = load_processed(out)
    assert len(dsd["train"]) == N_TRAIN and len(dsd["validation"]) == 4
    assert all(parse_trajectory(c[0]["content"]).valid for c in dsd["train"]["completion"])
    trainer = train_sft.main(["--dataset_path", str(out), "--model_name", str(model), "--output_dir",
                              str(tmp_path / "sft"), "--max_steps", "1", "--per_device_train_batch_size", "2",
                              "--max_length", "2048", "--save_strategy", "no", "--eval_strategy", "no",
                              "--report_to", "none", "--activation_checkpointing", "false"])
    assert trainer.state.global_step == 1
