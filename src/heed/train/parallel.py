"""Data-parallel training under torchrun: DistributedDataParallel around the training loss.

DDP synchronises the gradients of a module's parameters during the backward pass of what that module's
forward returned. heed computes its loss itself (``loss_sum``: the body, then the head only where a
target is trained on), so the module DDP wraps is ``LossModule``, whose forward *is* that loss.

Every rank takes its shard of the step's examples; the step's supervised tokens are summed over all
ranks first, so each rank's loss is divided by the global count and the gradient is the per-token mean
over the whole step, as in one process with the whole batch. DDP averages gradients over ranks; the
loss is multiplied by the world size to turn that average back into the sum.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from heed.config import FastPath
from heed.data.batch import Batch, make_batch
from heed.data.encode import Example
from heed.runtime import distributed
from heed.train.loss import loss_sum


class LossModule(torch.nn.Module):
    """``loss_sum(model, batch)`` as a module, for DDP to wrap."""

    def __init__(self, model: Any, precision: str, device: torch.device, fast: FastPath) -> None:
        super().__init__()
        self.model = model
        self.precision, self.device, self.fast = precision, device, fast

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                position_ids: torch.Tensor | None) -> torch.Tensor:
        return loss_sum(self.model, Batch(inputs, targets, lengths, position_ids), self.precision, self.device,
                        self.fast)


class DataParallel:
    """The DDP-wrapped loss of one model on this rank's device."""

    def __init__(self, model: Any, precision: str, device: torch.device, fast: FastPath) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.world = distributed.world()
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(LossModule(model, precision, device, fast), device_ids=ids)

    def backward(self, examples: Sequence[Example], *, grad_accum: int, pad_id: int, device: torch.device,
                 pack_capacity: int | None, static: bool) -> tuple[float, int]:
        """Forward and backward over this rank's shard in ``grad_accum`` micro-batches; the step's summed
        loss and supervised tokens over all ranks. Gradients are synchronised on the last micro-batch."""
        local = distributed.shard(examples, self.world)
        supervised = int(distributed.all_sum([sum(e.supervised_tokens for e in local)], device)[0])
        parts = [local[i::grad_accum] for i in range(grad_accum)]  # grad_accum parts on every rank
        total = 0.0
        for i, micro in enumerate(parts):
            sync = i == len(parts) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                batch = make_batch(micro, pad_id, pack_capacity=pack_capacity, static=static).to(device)
                loss = self.ddp(batch.inputs, batch.targets, batch.lengths, batch.position_ids)
                (loss * self.world.size / supervised).backward()
            total += float(loss.detach())
        return distributed.all_sum([total], device)[0], supervised
