"""Data-parallel training under ``torchrun``: the process group, DDP, and each rank's share of a batch.

``torchrun`` starts one process per rank and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`process_group` reads them (a plain ``facekp-train fit`` is a world of
one). Every rank walks the same global batches (``--batch-size`` photos, from the single-process
permutation of each epoch, seeded by (seed, epoch)) and takes its strided share: what
``DistributedSampler`` with ``set_epoch`` does, with the permutation a single process uses. So a
run sees the same data whatever its world size, and ``--resume`` may change the world size. Gradients are averaged by DDP: each rank's
loss is its share of the global batch's loss times the world size, so the average is the global
batch's gradient.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (``size`` 1: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints, validates and writes the run folder."""
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """``device`` for this rank: one GPU per local rank on CUDA."""
        device = torch.device(device)
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        """This rank's indices of a global batch (every ``size``-th, from ``rank``) and whether they
        count. A rank left without any (a last batch smaller than the world) reruns the batch's
        first sample with a zero loss, so that every rank still joins the gradient all-reduce."""
        own = batch[self.rank :: self.size]
        return (own, True) if len(own) else (batch[:1], False)

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (a copy, on ``value``'s device; itself when not distributed)."""
        if self.size == 1:
            return value
        out = value.to(_collective_device(), copy=True)
        dist.all_reduce(out)
        return out.to(value.device)

    def agree(self, value: int, what: str) -> None:
        """Raise ``ValueError`` unless every rank holds the same ``value`` (``what`` says what it is)."""
        if self.size == 1:
            return
        both = torch.tensor([value, -value], device=_collective_device())
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        if int(both[0]) != -int(both[1]):
            raise ValueError(f"the ranks disagree on {what}: the run folder must be the same folder on every "
                             "node (shared storage)")

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP across the ranks (itself when not distributed). On CUDA its BatchNorm
        layers are synchronised (statistics of the global batch, as one process computes them);
        gloo cannot, so on CPU each rank normalises by its own share's statistics."""
        if self.size == 1:
            return model
        device = next(model.parameters()).device
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _collective_device() -> torch.device:
    """Where the tensors of a collective must be: NCCL reduces on the GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (a world of one without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {size}")
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(device: str | torch.device) -> Iterator[World]:
    """Join the process group of a ``torchrun`` launch for the block (NCCL on CUDA, gloo on CPU)."""
    world = world_from_env()
    if world.size == 1:
        yield world
        return
    device = world.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()
