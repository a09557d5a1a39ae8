"""Several processes, one model: DistributedDataParallel under ``torchrun``.

    torchrun --nproc_per_node 4 -m smtrnn train --task retrieval --device cuda --out runs/r

A single process (no ``WORLD_SIZE`` above 1) never touches ``torch.distributed``; every helper
here is then the identity. Under torchrun:

- ``session(device)`` joins the process group torchrun describes (gloo on CPU, nccl on CUDA, one
  GPU per process chosen by ``LOCAL_RANK``) and leaves it at the end.
- Data: every rank draws the FULL global batch (``batch_size`` is the global batch) from the same
  seeded generator and keeps its own contiguous slice (``shard``). The data generator therefore
  has the same state on every rank and in a single-process run of the same config, so a
  checkpoint needs one data RNG state, resuming with another number of processes sees the same
  data, and the single-process batch is exactly the concatenation of the per-rank batches.
  Drawing is repeated on every rank; for the synthetic tasks that costs far less than a step.
- Gradients: DDP averages the per-rank gradients, i.e. it minimises the mean of the per-rank
  losses. For a loss that is a mean over labelled positions, with as many in every sequence (BPTT
  and the cross-entropies on the synthetic tasks), that is the single-process gradient up to float
  reassociation. Terms that are statistics of the whole batch (SMT's relative memory error, which
  divides by the batch's mean square memory; the uniformity loss over pairs of memories, and its
  subsample when ``uniformity_samples`` is smaller than the batch's memory tokens) are computed per
  rank, like an unsynchronised BatchNorm: close to, not equal to, one process
  (tests/test_distributed.py measures both).
- Global torch RNG (methods draw random positions, permutations and DMT start points from it):
  each rank keeps its own; checkpoints store every rank's state so that resuming is exact.
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from smtrnn.errors import UserError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def requested() -> bool:
    """Whether torchrun (or the user) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device: str = "cpu"):
    """Join the process group for the duration of the block when WORLD_SIZE > 1 (a no-op otherwise,
    or when the caller already initialised one)."""
    if not requested() or active():
        yield
        return
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {name} is not set: start with torchrun")
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UserError(f"device {device} asked for, but CUDA is not available")
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                f"start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)  # "cuda" now means this process's own GPU
    dist.init_process_group("nccl" if cuda else "gloo")
    finished = False
    try:
        yield
        finished = True
    finally:
        if finished:
            dist.barrier()  # nobody leaves while another rank still writes or evaluates
        dist.destroy_process_group()


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise UserError(f"batch size {batch_size} (the global batch) is not divisible by {world_size()} processes")


def shard(batch: dict) -> dict:
    """This rank's contiguous slice of every tensor of a global batch (identity for one process)."""
    count = world_size()
    if count == 1:
        return batch
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if value.shape[0] % count:
                raise UserError(f"batch of {value.shape[0]} sequences cannot be split over {count} processes")
            size = value.shape[0] // count
            value = value[rank() * size : (rank() + 1) * size]
        out[key] = value
    return out


def wrap(objective: nn.Module) -> nn.Module:
    """``objective`` in DistributedDataParallel (itself for one process).

    ``find_unused_parameters=True``: which trainable parameters a step uses is not fixed. DMT from a
    teacher memory never uses the cell's learned m_0, a readout or embedding row may be skipped, and
    a user's method may do anything; DDP would otherwise wait forever for their gradients. Frozen
    parameters (the teacher in DMT and BPTT phases: requires_grad False) are not registered at
    all. The extra graph walk per step is small next to the step itself."""
    if world_size() == 1:
        return objective
    device = next(objective.parameters()).device
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(objective, device_ids=device_ids, find_unused_parameters=True)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The average of a scalar over ranks (a detached copy; the value itself for one process).

    A NaN or inf on any rank makes the average non-finite on every rank, so all ranks stop together."""
    value = value.detach()
    if world_size() == 1:
        return value
    total = value.float().clone()
    dist.all_reduce(total)
    return total / world_size()


def max_over_ranks(value: int) -> int:
    """The largest of an integer over ranks (collective; the value itself for one process): a decision
    every rank must take together, such as stopping on a signal only some of them received."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def mean_metrics(metrics: dict) -> dict[str, float]:
    """Per-rank metric values averaged over ranks, as floats (one collective for all of them)."""
    names = list(metrics)
    if world_size() == 1 or not names:
        return {name: float(metrics[name]) for name in names}
    device = next((v.device for v in metrics.values() if torch.is_tensor(v)), torch.device("cpu"))
    values = torch.tensor([float(metrics[name]) for name in names], dtype=torch.float64, device=device)
    if dist.get_backend() == "nccl" and values.device.type != "cuda":
        values = values.cuda()
    dist.all_reduce(values)
    return dict(zip(names, (values / world_size()).tolist()))


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (through the GPU when the backend is nccl)."""
    moved = tensor.cuda() if dist.get_backend() == "nccl" else tensor
    pieces = [torch.empty_like(moved) for _ in range(world_size())]
    dist.all_gather(pieces, moved.contiguous())
    return [piece.to(tensor.device) for piece in pieces]


# RNG states that are per rank; the data generator's state is shared (see the module docstring).
PER_RANK_RNG = ("torch", "cuda")


def gather_rng(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collective: rank 0's states under their own names plus ``torch.rank1``, ``cuda.rank1`` ...
    for the other ranks, ready to be saved by rank 0. Every rank must call it."""
    if world_size() == 1:
        return state
    out = dict(state)
    for name in PER_RANK_RNG:
        if name in state:
            for index, piece in enumerate(_gather(state[name])):
                if index:
                    out[f"{name}.rank{index}"] = piece
    return out


def select_rng(saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's states from a checkpoint written by ``gather_rng``. A rank the checkpoint has no
    state for (resuming with more processes) takes rank 0's: valid, though not the stream an
    uninterrupted run with that many processes would have drawn."""
    mine = {key: value for key, value in saved.items() if ".rank" not in key}
    for name in PER_RANK_RNG:
        if f"{name}.rank{rank()}" in saved:
            mine[name] = saved[f"{name}.rank{rank()}"]
    return mine


def check_same_start(phase: str, step: int, where) -> None:
    """Collective: every rank must resume from the same checkpoint (the run directory has to be one
    shared folder for all nodes)."""
    if world_size() == 1:
        return
    mine = torch.tensor([zlib.crc32(phase.encode()), step], dtype=torch.int64)
    starts = {tuple(piece.tolist()) for piece in _gather(mine)}
    if len(starts) > 1:
        raise UserError(
            f"the processes found different checkpoints in {where}: on several nodes the run "
            f"directory must be one shared folder"
        )
