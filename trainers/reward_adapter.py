"""One reward adapter for every method: a per-batch judge whose named terms are TRL reward functions.

TRL calls each reward function on the same generation batch (``completion_ids`` is one list object for all of
them, plus every dataset / rollout column as a keyword). A method's rewards usually come from ONE judgement of the
batch (parse the lists, run the trajectories' checks, score against an item table), so the judge runs once per
batch and each term only reads its column of the result; TRL's own reward path still weighs, logs
(``rewards/<term>/mean``) and gathers them. After TRL's reward path, the trainer's hooks ``take()`` the judgement
(e.g. per-rank rewards, target ranks) for their advantages and metrics.

    class MyJudge(BatchJudge):
        def judge(self, completion_ids, columns, log_metric): ...   # -> the batch's judgement
        def value(self, term, judgement): ...                      # -> one float per row

    reward_funcs = MyJudge().reward_funcs(["a", "b"])
"""
from __future__ import annotations

from collections.abc import Sequence


class BatchJudge:
    """Judges one generation batch once (``judge``) and exposes named reward terms (``value``) over it."""

    last = None  # the judgement of the batch judged last (None: none since the last ``take``)
    _batch = None  # that batch's ``completion_ids`` object: TRL hands the same one to every reward function

    def judge(self, completion_ids, columns: dict, log_metric=None):
        """The judgement of a batch: anything ``value`` can read. ``columns``: TRL's per-row keyword lists."""
        raise NotImplementedError

    def value(self, term: str, judgement) -> Sequence[float]:
        """The reward term ``term`` of every row of a judgement."""
        raise NotImplementedError

    def __call__(self, completion_ids, columns: dict, log_metric=None):
        """The batch's judgement, computed on the first call for this batch and shared by the later ones (the
        batch is held, so its identity cannot be reused by another list while it is the key)."""
        if self._batch is None or self._batch is not completion_ids:
            self.last = self.judge(completion_ids, columns, log_metric)
            self._batch = completion_ids
        return self.last

    def take(self) -> tuple[object, list[list[int]]]:
        """(judgement, completion token ids) of the batch just judged, once: a second take without a new batch
        fails (the reward functions did not run)."""
        if self._batch is None:
            raise RuntimeError(f"no judged batch: the {type(self).__name__} reward functions did not run for this "
                               "generation batch")
        out = (self.last, [list(ids) for ids in self._batch])
        self.last = self._batch = None
        return out

    def reward_funcs(self, terms: Sequence[str]) -> list[RewardTerm]:
        return [RewardTerm(term, self) for term in terms]


class RewardTerm:
    """One term of a ``BatchJudge`` as a TRL reward function; ``__name__`` is the term (TRL logs
    ``rewards/<__name__>/mean``)."""

    def __init__(self, name: str, judge: BatchJudge):
        self.__name__, self.judge = name, judge

    def __call__(self, prompts, completions, completion_ids, log_metric=None, **columns) -> list[float]:
        judgement = self.judge(completion_ids, columns, log_metric)
        return [float(v) for v in self.judge.value(self.__name__, judgement)]
