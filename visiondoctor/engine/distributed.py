"""torchrun / DistributedDataParallel plumbing, in one place. Without torchrun every function
degrades to the single-process answer, so the rest of the code never branches on it.

The division of labour under `torchrun --nproc_per_node=N`:
- every rank trains on its own shard of each epoch (the trainer's EpochSampler) with a
  per-rank batch of `train.batch_size / N`, and DDP averages the gradients, so one step
  sees the same global batch as one process would;
- rank 0 alone evaluates and writes the run directory; the metrics it computes are
  broadcast so that every rank takes the same decisions (early stopping, best weights);
- decisions that one rank could take alone (time budget, a callback asking to stop) are
  agreed on by all ranks, otherwise the others would wait forever in the next all-reduce.
"""
from __future__ import annotations

import atexit
import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Start the process group when launched by torchrun (gloo on CPU, NCCL on GPU).

    The other ranks wait in a collective while rank 0 evaluates and writes the report, which
    can outlast PyTorch's default timeout (10 min for NCCL), so the timeout is
    VISIONDOCTOR_DIST_TIMEOUT_MIN minutes (default 60). Ranks other than 0 then log errors
    only: every rank reads the same data and would repeat each warning N times."""
    if is_distributed() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        minutes = float(os.environ.get("VISIONDOCTOR_DIST_TIMEOUT_MIN", "60"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
        atexit.register(cleanup)
        if not is_main():
            logging.getLogger().setLevel(logging.ERROR)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def per_rank_batch_size(global_batch: int) -> int:
    """The batch each rank loads, so that all ranks together make `global_batch` (the batch
    of the same run on one process). A global batch that does not divide is rounded down,
    with a warning, because the optimisation would otherwise differ from one process's."""
    world = world_size()
    if global_batch % world:
        log.warning("train.batch_size=%d does not divide by %d processes: each loads %d (global batch %d)",
                    global_batch, world, max(1, global_batch // world), max(1, global_batch // world) * world)
    return max(1, global_batch // world)


def prepare_model(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """SyncBatchNorm when asked for and possible. It computes BatchNorm statistics over the
    global batch instead of each rank's share; PyTorch implements it for GPUs only, so on CPU
    (gloo) BatchNorm keeps per-rank statistics and a warning says so."""
    if not (sync_bn and dist.is_initialized()):
        return model
    if device.type != "cuda":
        log.warning("train.sync_bn: SyncBatchNorm needs GPUs (NCCL); on %s each rank keeps its own BatchNorm "
                    "statistics over its %s of the batch", device.type, f"1/{world_size()}")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP when distributed. find_unused_parameters is on because detectors (and user models)
    may leave parameters without gradient in some steps, and without it DDP fails at the next
    step; the cost is one extra walk over the autograd graph per step. The doctor's
    params.no-gradient finding names such parameters (see `unused_parameters_advice`)."""
    if not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unused_parameters_advice(parameters: int) -> str | None:
    """What parameters without gradient mean for this process's DistributedDataParallel run
    (None when not distributed). For the doctor's params.no-gradient finding."""
    if world_size() <= 1:
        return None
    return (f"Running under DistributedDataParallel ({world_size()} processes): these {parameters} parameter(s) are "
            "why DDP needs find_unused_parameters=True (visiondoctor turns it on), which costs an extra pass over "
            "the autograd graph every step; freeze them (requires_grad=False) or remove them to train faster.")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as rank `src` has it (e.g. the metrics only rank 0 computed)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (e.g. each rank's random-number state for a checkpoint)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(*flags: bool) -> list[bool]:
    """For each flag: is it set on any rank? Used for stop decisions all ranks must share."""
    if not dist.is_initialized():
        return [bool(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over ranks (e.g. per-epoch loss sums and image counts). Gathered as
    objects, not all-reduced as one tensor, so that a key only some ranks logged (a callback's
    measurement) cannot make the ranks disagree on the tensor's size."""
    if not dist.is_initialized():
        return dict(values)
    total: dict[str, float] = {}
    for part in all_gather_object(dict(values)):
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
