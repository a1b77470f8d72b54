"""Named metrics of a micro-batch, reduced across processes in one all-reduce.

Each name holds a (sum, count) pair: its value summed over this process's units (tokens, items, rows) and how many
units that was. ``reduce`` sums every pair over the processes at once and returns sum / count per name, which is the
mean a single process over the global batch would log -- not a mean of per-process means, which weighs a process
with fewer tokens more. A quantity that is already a per-process mean of equally sized parts (a loss term, whose
data-parallel mean is what the optimiser sees) is added with count 1: its reduced value is the mean over
processes.

    sums = MetricSums()
    sums.add("entropy", (entropies * mask).sum(), mask.sum())
    sums.add("loss/rec", rec_loss)  # count 1
    trainer.log_metrics(sums.reduce(trainer.accelerator))
"""
from __future__ import annotations

import torch


class MetricSums:
    """(sum, count) per metric name; ``reduce`` -> {name: global sum / global count} (0 where the count is 0).

    Every process must add the same names in the same order and call ``reduce`` at the same point (a collective
    when there is more than one process)."""

    def __init__(self):
        self._pairs: dict[str, tuple] = {}

    def add(self, name: str, total, count=1.0) -> None:
        """Add ``total`` (a sum over ``count`` units) to ``name``; tensors are detached."""
        total = total.detach() if isinstance(total, torch.Tensor) else total
        count = count.detach() if isinstance(count, torch.Tensor) else count
        if name in self._pairs:
            s, c = self._pairs[name]
            total, count = s + total, c + count
        self._pairs[name] = (total, count)

    def __contains__(self, name: str) -> bool:
        return name in self._pairs

    def reduce(self, accelerator) -> dict[str, float]:
        """The global mean of every name: ONE ``accelerator.reduce`` (sum) of the stacked (sum, count) pairs."""
        if not self._pairs:
            return {}
        values = [x for pair in self._pairs.values() for x in pair]
        tensors = [x for x in values if isinstance(x, torch.Tensor)]
        dtype, device = torch.float32, accelerator.device
        for t in tensors:
            dtype = torch.promote_types(dtype, t.dtype) if t.is_floating_point() else dtype
        if tensors:
            device = tensors[0].device
        stacked = torch.stack([torch.as_tensor(x, device=device).to(dtype) for x in values]).view(-1, 2)
        if accelerator.num_processes > 1:
            stacked = accelerator.reduce(stacked, reduction="sum")
        sums, counts = stacked[:, 0], stacked[:, 1]
        means = torch.where(counts != 0, sums / torch.where(counts != 0, counts, torch.ones_like(counts)),
                            torch.zeros_like(sums))
        return dict(zip(self._pairs, means.tolist()))
