"""Process groups for data-parallel training under torchrun.

``torchrun --nproc_per_node N -m refdiff.cli train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`setup` reads them and joins the process group (gloo on CPU, NCCL on CUDA, one GPU per
local rank). Without those variables it returns a single-process context and starts nothing.

Every process holds the whole run's host-side state (data order, timesteps, sampler statistics)
and takes its slice ``[rank * B/N, (rank + 1) * B/N)`` of each global batch, so the noise and
timestep of global example j at step s are the same whatever N is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_gather_concat", "setup", "teardown"]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = _CPU
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and images."""
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        """This rank's part of a global batch (which must split evenly)."""
        if global_batch % self.world_size:
            raise ValueError(
                f"the global batch size {global_batch} must be divisible by the number of "
                f"processes ({self.world_size})"
            )
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def setup(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group if there is one, and pick this process's device.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"`` or None (auto: CUDA when available). Under torchrun with CUDA each
        process takes ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    want = "auto" if device is None else str(device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        dev = torch.device("cuda", local if world > 1 else torch.device(want).index or 0)
        torch.cuda.set_device(dev)
    elif want == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if world == 1:
        return DistContext(0, 1, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistContext(rank, world, dev, backend)


def teardown(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_concat(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate equally shaped ``tensor`` of every rank along dim 0, in rank order."""
    if not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
