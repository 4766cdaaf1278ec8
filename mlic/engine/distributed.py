"""torchrun / DDP helpers. One process per GPU (NCCL) or per CPU worker (gloo).

Gradient semantics follow Caffe's multi-GPU solver: each rank runs its own batch, the
parameter gradients are averaged over ranks before the update, and every loss is
normalised by the rank's own batch. The update therefore equals a single process with
batch ``batch_size * world_size`` (or ``iter_size = world_size``): the global batch.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str) -> bool:
    """Initialises the process group when launched by torchrun; returns whether it did."""
    if env_world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def average_gradients(params) -> None:
    """All-reduce (mean) the gradients in place, in a fixed order; a missing gradient
    counts as zero so every rank takes part in every reduction."""
    if world_size() == 1:
        return
    ws = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(ws)


def broadcast_parameters(model) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if world_size() == 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def _reduce_flag(flag: bool, op, device) -> bool:
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=op)
    return bool(t.item())


def any_rank(flag: bool, device="cpu") -> bool:
    """Whether `flag` holds on some rank (every rank gets the same answer, so that every
    rank stops together instead of the others waiting in the next all-reduce)."""
    return _reduce_flag(flag, dist.ReduceOp.MAX if world_size() > 1 else None, device)


def all_ranks(flag: bool, device="cpu") -> bool:
    """Whether `flag` holds on every rank (the same answer on all of them)."""
    return _reduce_flag(flag, dist.ReduceOp.MIN if world_size() > 1 else None, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
