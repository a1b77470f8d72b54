"""Cross-process helpers of the RL layer: a gather that keeps the gradient, and a collective maximum.

``gather_with_grad`` is what a contrastive loss over the GLOBAL batch needs under data parallelism (RecPO's
recommendation loss: other processes' target vectors are candidates of this process's rows, and this process's
loss must reach them); ``agree_max`` makes every process agree on a count (DeepRec's collective rounds).
"""
from __future__ import annotations

import torch


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 (equal shapes on every process, rank-major) whose backward gives each process the
    SUM over processes of the gradient of its own slice: every process's loss reaches the vectors this process
    computed. With the data-parallel mean of the parameter gradients that is exactly the gradient of one process
    over the global batch. Every process must run the backward (it is a collective)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.size(0)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo (CPU) has no reduce_scatter
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each of W processes -> (W n, ...), rank-major, differentiable (``_GatherWithGrad``)."""
    return _GatherWithGrad.apply(x)


def first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct values of ``ids`` and, for each, the index of its first occurrence."""
    cols, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((cols.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return cols, first


def agree_max(accelerator, value: int) -> int:
    """The largest ``value`` over every process (a collective; one process: ``value``)."""
    if accelerator.num_processes == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=accelerator.device)
    return int(accelerator.gather(t).max().item())
