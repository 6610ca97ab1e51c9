"""Data-parallel training across processes started by ``torchrun``: the process group and the few
collectives compresskit needs.

Without torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) nothing here starts a
process group and every helper is the single-process identity: `world_size` is 1, `rank` 0,
`is_main` true, the reductions and `barrier` do nothing. So the library and the jobs call these
helpers unconditionally and behave exactly as before in one process.

Backend: gloo on the CPU, NCCL on CUDA (each process then computes on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from compresskit.errors import CompresskitError, ParameterError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by torchrun (all of `ENV_VARS` are set)."""
    return all(name in os.environ for name in ENV_VARS)


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes taking part: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def rank() -> int:
    """This process's rank in 0..world_size-1 (0 without torchrun)."""
    if initialized():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    """This process's rank on its machine: the CUDA device it computes on."""
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def _active() -> bool:
    """Whether collectives have peers to talk to: a process group of 2 or more exists."""
    return world_size() > 1 and initialized()


def is_main() -> bool:
    """Whether this is rank 0, the one process that writes files and prints."""
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun's environment describes (gloo for a CPU `device`, NCCL for
    CUDA, which also makes ``cuda:LOCAL_RANK`` the current device). Returns whether this call
    started it: False without torchrun or when a group already exists."""
    if not launched() or initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", init_method="env://", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo", init_method="env://")
    return True


def destroy() -> None:
    """Leave the process group, if there is one."""
    if initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: torch.device) -> Iterator[None]:
    """Run the body inside torchrun's process group (`init_from_env`); leave it afterwards only if
    this context started it. After a body that succeeded the ranks leave together: a gloo rank
    that tore its group down while rank 0 was still writing files sometimes aborted."""
    started = init_from_env(device)
    try:
        yield
        if started:
            barrier()
    finally:
        if started:
            destroy()


def shard(n: int, part: int | None = None, parts: int | None = None) -> slice:
    """Rank `part`'s contiguous share of `n` items split over `parts` ranks (default: this rank of
    this world): shares are disjoint, cover all `n`, and differ in size by at most one (the first
    ``n % parts`` ranks hold one more), as `torch.tensor_split` cuts."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    base, extra = divmod(n, parts)
    start = part * base + min(part, extra)
    return slice(start, start + base + (part < extra))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (on the device the backend needs: CPU for gloo, CUDA
    for NCCL); returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait until every rank got here (e.g. until rank 0 has written a file the others read)."""
    if _active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable values; a decision only rank 0 can make)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not _active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank. Under DDP each rank's
    last training forward updates its own statistics from its own shard; after this the model is
    the same everywhere, rank 0's, the one it saves."""
    if not _active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def check_batch_size(batch_size: int, flag: str | None = None) -> None:
    """Refuse a global batch size that torchrun's processes cannot split evenly. The message names
    the parameter `batch_size`, or `flag` where the caller spells it its own way."""
    world = world_size()
    if world > 1 and batch_size % world:
        message = (
            f"{{0}} {batch_size} is not divisible by the {world} processes torchrun started; "
            f"give a multiple of {world} (each process takes {{0}} / {world} images per step)."
        )
        if flag is not None:
            raise CompresskitError(message.replace("{0}", flag))
        raise ParameterError(message, "batch_size")


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """Refuse `sync_bn` where it cannot work: without torchrun, or on the CPU (torch's
    SyncBatchNorm synchronises only GPU batches)."""
    if not sync_bn:
        return
    if world_size() <= 1:
        raise ParameterError(
            "{0} synchronises batch norm across processes; it needs torchrun with 2 or more.", "sync_bn"
        )
    if device.type != "cuda":
        raise ParameterError(
            "{0} needs CUDA devices: torch's SyncBatchNorm does not synchronise CPU batches.", "sync_bn"
        )


def to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every batch norm made a `nn.SyncBatchNorm` sharing its parameters and buffers
    (in place for children, as torch's own conversion)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def from_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo `to_sync_batchnorm` on 2-D feature maps: every `nn.SyncBatchNorm` child becomes an
    `nn.BatchNorm2d` holding the same parameter and buffer tensors, so pruning, saving and
    single-process use see the model they were given."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                plain.weight, plain.bias = child.weight, child.bias
            plain.running_mean, plain.running_var = child.running_mean, child.running_var
            plain.num_batches_tracked = child.num_batches_tracked
            plain.train(child.training)
            setattr(module, name, plain)
        else:
            from_sync_batchnorm(child)
    return module
