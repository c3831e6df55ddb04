"""Data parallelism on torch.distributed, as ``torchrun`` starts it: one process per device.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``init`` joins the process group (NCCL on
GPUs, gloo on CPUs) and says which device this process owns. Every rank takes its shard of every batch
(``shard``); losses and token counts are summed over ranks (``all_sum``); objects such as generated
responses are gathered (``gather``); only rank 0 writes (``World.main``). Without ``torchrun`` the world
is one process and every function here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from heed.errors import HeedError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another torch.distributed launcher) with peers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str) -> tuple[World, str]:
    """Join the process group when launched with peers; the world and the device this rank uses."""
    global _WORLD
    if not launched():
        return _WORLD, device_name
    import torch
    import torch.distributed as dist

    world = World(int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0")),
                  int(os.environ.get("LOCAL_RANK", "0")))
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if device_name.startswith("cuda:"):
        raise HeedError(f"--device {device_name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                        "use --device cuda or auto")
    if wants_cuda:
        if torch.cuda.device_count() <= world.local_rank:
            raise HeedError(f"torchrun started {world.size} processes but this node has "
                            f"{torch.cuda.device_count()} GPUs; set --nproc_per_node to at most that")
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wants_cuda else "gloo")
    _WORLD = world
    return world, device_name


def world() -> World:
    return _WORLD


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's share of ``items``: every size-th item from its rank on (the ranks' shares differ in
    length by at most one; a rank may get none)."""
    w = w or _WORLD
    return list(items[w.rank::w.size])


def all_sum(values: Sequence[float], device: "torch.device") -> list[float]:
    """``values`` summed over all ranks (fp64, so sums of token counts stay exact)."""
    if not _WORLD.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not _WORLD.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _WORLD.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _WORLD.distributed:
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    global _WORLD
    if _WORLD.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = World()
