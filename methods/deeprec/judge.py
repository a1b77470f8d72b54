"""DeepRec's reward adapter: one judgement of a batch of episodes, its five reward terms (``methods.deeprec.rewards``)
as TRL reward functions (``trainers.reward_adapter.BatchJudge``), and R_sim's item embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from methods.deeprec.rewards import (
    diversity_reward,
    format_check_shares,
    format_reward,
    invocation_reward,
    outcome_reward,
    parse_trajectory,
    similarity_reward,
    target_position,
)
from methods.deeprec.rollout import END_REASONS, answer_item_ids
from trainers.reward_adapter import BatchJudge


class ItemEmbeddings:
    """R_sim's two item embeddings, L2-normalised, rows in ``ids`` order: ``text`` (the title's text embedding)
    and ``trm`` (the TRM's item vectors)."""

    def __init__(self, ids, text, trm):
        text, trm = np.asarray(text, dtype=np.float32), np.asarray(trm, dtype=np.float32)
        ids = [int(i) for i in ids]
        if text.shape[0] != len(ids) or trm.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids, {text.shape[0]} text rows, {trm.shape[0]} TRM rows")
        self.row = {iid: r for r, iid in enumerate(ids)}
        self.text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        self.trm = trm / np.maximum(np.linalg.norm(trm, axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_retriever(cls, retriever, title_embeddings=None) -> "ItemEmbeddings":
        """TRM item vectors from ``retriever``; text = ``title_embeddings`` (rows in the retriever's catalog order)
        or, without them, the TRM's frozen item-text embeddings (title + genres + description)."""
        ids = [int(i) for i in retriever.catalog_ids]
        if title_embeddings is None:
            title_embeddings = retriever.model.item_text[1:].detach().cpu().numpy()
        return cls(ids, title_embeddings, retriever.item_embeddings())

    def cosines(self, predicted, target: int) -> tuple[list, list]:
        """(text cosines, TRM cosines) of each predicted id with the target (None for an id without a row)."""
        t = self.row.get(int(target))
        if t is None:
            raise ValueError(f"target {target!r} has no item embedding")
        text, trm = [], []
        for iid in predicted:
            r = None if iid is None else self.row.get(int(iid))
            text.append(None if r is None else float(self.text[r] @ self.text[t]))
            trm.append(None if r is None else float(self.trm[r] @ self.trm[t]))
        return text, trm


@dataclass
class DeepRecScore:
    rewards: dict  # name -> value, all five terms
    trajectory: object
    predicted: list
    rank: int | None  # 0-based position of the target in the final list (valid format only)


class DeepRecJudge(BatchJudge):
    """Scores the episodes of one generation batch once (columns ``deeprec_episode``, ``target``); its terms are
    ``format``, ``invocation``, ``diversity``, ``outcome``, ``similarity``. ``need_similarity``: compute R_sim
    (stage rec; it needs ``item_embeddings``)."""

    def __init__(self, catalog, require_year: bool, item_embeddings: ItemEmbeddings | None, encode_preferences,
                 need_similarity: bool = True):
        self.catalog, self.require_year = catalog, require_year
        self.item_embeddings, self.encode_preferences = item_embeddings, encode_preferences
        self.need_similarity = need_similarity

    def score(self, episodes: list[dict], targets: list[int], need_similarity: bool = True) -> list[DeepRecScore]:
        # R_inv / R_div / the no_call check count the rollout's REAL calls (``n_calls``) and the preference texts
        # the TRM got, not item-list blocks in the text: a model that types its own lists gains nothing
        trajs = [parse_trajectory(e["text"], real_calls=e.get("n_calls")) for e in episodes]
        prefs = [list(e["preferences"]) if e.get("preferences") is not None else t.preferences
                 for e, t in zip(episodes, trajs)]
        # R_div: one batched encode of every preference of trajectories with >= 2 calls
        multi = [i for i, t in enumerate(trajs) if t.n_calls >= 2]
        texts = [p for i in multi for p in prefs[i][:trajs[i].n_calls]]
        emb = self.encode_preferences(texts) if texts else np.zeros((0, 1))
        div, pos = {}, 0
        for i in multi:
            n = len(prefs[i][:trajs[i].n_calls])
            div[i] = diversity_reward(emb[pos:pos + n])
            pos += n
        out = []
        for i, (traj, target) in enumerate(zip(trajs, targets, strict=True)):
            predicted = answer_item_ids(traj.answer_lines, self.catalog, self.require_year) if traj.valid else []
            sim = 0.0
            if traj.valid and need_similarity and self.item_embeddings is not None:
                sim = similarity_reward(*self.item_embeddings.cosines(predicted, target), valid=True)
            named = self.catalog.canonical_id(target)  # the id a line naming the target matches (duplicate titles)
            rewards = {"format": format_reward(traj), "invocation": invocation_reward(traj.n_calls),
                       "diversity": div.get(i, 0.0), "outcome": outcome_reward(predicted, named, traj.valid),
                       "similarity": sim}
            out.append(DeepRecScore(rewards, traj, predicted,
                                    target_position(predicted, named) if traj.valid else None))
        return out

    def judge(self, completion_ids, columns, log_metric=None) -> list[DeepRecScore]:
        episodes, targets = columns.get("deeprec_episode"), columns.get("target")
        if episodes is None:
            raise KeyError("no `deeprec_episode` field: the DeepRec rollout_func did not run")
        if targets is None or any(t is None for t in targets):
            raise KeyError("the dataset needs a `target` column (catalog ids) for every row")
        scores = self.score(list(episodes), [int(t) for t in targets], self.need_similarity)
        if log_metric is not None:
            # per episode; TRL averages each name over the logging step: the step's share of valid episodes
            # (deeprec/valid_format) and of episodes failing each check (deeprec/fail_<check>)
            for s, e in zip(scores, episodes):
                log_metric("deeprec/calls", float(s.trajectory.n_calls))
                log_metric("deeprec/hit@10", float(s.rank is not None))
                log_metric("deeprec/overlong", float(bool(e.get("overlong"))))
                for name, value in format_check_shares([s.trajectory]).items():
                    log_metric("deeprec/valid_format" if name == "valid" else f"deeprec/{name}", value)
                for reason in END_REASONS:
                    log_metric(f"deeprec/end_{reason}", float(e.get("end_reason") == reason))
        return scores

    def value(self, term: str, scores: list[DeepRecScore]) -> list[float]:
        return [s.rewards[term] for s in scores]
