"""trainers.metrics.MetricSums: the reduced metrics of two processes equal those of one process over the global
batch, in ONE all-reduce. The two processes are threads meeting at a fake accelerator's all-reduce (a barrier that
sums what each brings), so the test needs no process group and takes milliseconds."""
from __future__ import annotations

import threading

import pytest
import torch

from trainers.metrics import MetricSums


class ThreadAccelerator:
    """``accelerator.reduce(x, "sum")`` across ``world`` threads: each thread's tensor in, the sum out to all."""

    def __init__(self, world: int):
        self.num_processes, self.device = world, torch.device("cpu")
        self._barrier = threading.Barrier(world)
        self._lock = threading.Lock()
        self._parts: list = []
        self.calls = 0

    def reduce(self, x, reduction="sum"):
        assert reduction == "sum"
        with self._lock:
            self._parts.append(x.clone())
            self.calls += 1
        self._barrier.wait()
        total = torch.stack(self._parts).sum(0)
        self._barrier.wait()
        with self._lock:
            self._parts.clear()
        return total


class OneProcess:
    num_processes, device = 1, torch.device("cpu")

    def reduce(self, x, reduction="sum"):  # never called with one process
        raise AssertionError("one process needs no all-reduce")


def _sums(entropies, mask, loss_term, low_clips, kl=None):
    """What a trainer adds for its micro-batch: token means, a count-only one, and a per-process loss term."""
    s = MetricSums()
    s.add("entropy", (entropies * mask).sum(), mask.sum())
    s.add("clip_ratio/low_mean", low_clips, mask.sum())
    s.add("loss/policy", loss_term)
    s.add("never", torch.tensor(0.0), torch.tensor(0.0))  # no units anywhere: logs 0, not NaN
    if kl is not None:
        s.add("kl", kl)
    return s


def test_two_processes_log_what_one_process_over_the_global_batch_logs():
    g = torch.Generator().manual_seed(0)
    entropies = torch.rand(6, 7, generator=g)
    mask = torch.zeros(6, 7)
    for b, n in enumerate([7, 6, 1, 2, 3, 1]):  # process 0 holds rows 0-2 (14 tokens), process 1 rows 3-5 (6)
        mask[b, :n] = 1
    clips = (torch.rand(6, 7, generator=g) < 0.3).float() * mask
    # per-process loss terms whose data-parallel mean is the global loss (e.g. after global_token_mean)
    loss_terms = [torch.tensor(0.25), torch.tensor(-0.75)]

    one = _sums(entropies, mask, (loss_terms[0] + loss_terms[1]) / 2, clips.sum()).reduce(OneProcess())
    acc = ThreadAccelerator(2)
    got: dict = {}

    def process(rank):
        rows = slice(3 * rank, 3 * rank + 3)
        got[rank] = _sums(entropies[rows], mask[rows], loss_terms[rank], clips[rows].sum()).reduce(acc)

    threads = [threading.Thread(target=process, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acc.calls == 2  # ONE all-reduce per process for every name
    assert got[0] == got[1]
    assert set(got[0]) == set(one) == {"entropy", "clip_ratio/low_mean", "loss/policy", "never"}
    for name in one:
        assert got[0][name] == pytest.approx(one[name], rel=1e-6), name
    # the token mean is over the global tokens, not the mean of the two processes' means
    want = ((entropies * mask).sum() / mask.sum()).item()
    assert got[0]["entropy"] == pytest.approx(want, rel=1e-6)
    local = [((entropies[r] * mask[r]).sum() / mask[r].sum()).item() for r in (slice(0, 3), slice(3, 6))]
    assert abs(sum(local) / 2 - want) > 1e-3  # the draw makes the two differ
    assert got[0]["never"] == 0.0 and got[0]["loss/policy"] == pytest.approx(-0.25)


def test_one_process_values_are_the_plain_ratios_and_names_accumulate():
    s = MetricSums()
    s.add("a", torch.tensor(3.0), torch.tensor(4.0))
    s.add("a", 1.0, 4)
    s.add("b", torch.tensor(2.5, dtype=torch.float64))
    assert "a" in s and "c" not in s
    out = s.reduce(OneProcess())
    assert out == {"a": 0.5, "b": 2.5}
    assert MetricSums().reduce(OneProcess()) == {}
