"""Several processes, one job: the rank/world-size view of a ``torchrun`` launch, and its helpers.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup_distributed` joins the process group
(``gloo`` on the CPU, ``nccl`` on CUDA) and pins each rank to its GPU. Without it every helper degrades to the
single-process case, so callers never branch on ``world_size``::

    with setup_distributed() as dist_ctx:
        for case in dist_ctx.shard(cases):   # this rank's share
            ...
        dist_ctx.barrier()
        if dist_ctx.is_main:
            write_report()

Used by the trainer and by cohort pseudo-labelling.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from pesf.errors import PesfError

__all__ = ["DistContext", "setup_distributed", "world_size_from_env"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when absent or unparsable)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """This process's place in a (possibly single-process) job.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device of this rank.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when no process group was created.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is active (more than one process)."""
        return self.backend is not None and self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank arrives (a no-op for one process)."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_mean(self, value: float | torch.Tensor) -> float:
        """The mean of ``value`` over all ranks (the value itself for one process)."""
        if not self.distributed:
            return float(value)
        t = torch.as_tensor(value, dtype=torch.float64, device=self._comm_device()).reshape(1).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on at least one (e.g. a stop request seen by one rank)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank (picklable objects; use for small plain data only)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._comm_device())
        return box[0]

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``.

        Shards are disjoint, cover every item, and differ in length by at most one.
        """
        return list(items[self.rank :: self.world_size])

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise PesfError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PesfError(f"device {requested!r} is not available (no CUDA GPU); use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Join the ``torchrun`` process group if there is one, and leave it on exit.

    Args:
        device: ``"auto"`` (this rank's GPU when CUDA is available, else the CPU), ``"cpu"``, ``"cuda"``
            (this rank's GPU) or ``"cuda:N"``.
        timeout_s: how long collective operations wait for the slowest rank (long validations and
            checkpoint writes happen on rank 0 while the others wait at a barrier).

    Yields:
        The :class:`DistContext` of this process.

    Raises:
        PesfError: an unavailable device, or a ``torchrun`` environment without its rendezvous variables.
    """
    world_size = world_size_from_env()
    rank = int(os.environ.get("RANK", "0") or 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    dev = _pick_device(device, local_rank)
    if world_size == 1:
        yield DistContext(device=dev)
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise PesfError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; launch with torchrun"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, dev)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)
    try:
        yield ctx
    except BaseException:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if created and dist.is_initialized():
        # Every rank leaves together: a rank that tore down its connections while another was still
        # finishing the last collective on them made that one abort ("terminate called without an active
        # exception"). After an error there is no barrier: the other ranks may never reach it.
        ctx.barrier()
        dist.destroy_process_group()
