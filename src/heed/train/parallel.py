"""Data-parallel training under torchrun: DistributedDataParallel around the training loss, or with
``--fsdp`` FSDP2 (``fully_shard``), which shards weights, gradients and optimizer state over the ranks.

DDP synchronises the gradients of a module's parameters during the backward pass of what that module's
forward returned. heed computes its loss itself (``loss_sum``: the body, then the head only where a
target is trained on), so the module DDP wraps is ``LossModule``, whose forward *is* that loss.

Every rank takes its shard of the step's examples; the step's supervised tokens are summed over all
ranks first, so each rank's loss is divided by the global count and the gradient is the per-token mean
over the whole step, as in one process with the whole batch. DDP averages gradients over ranks; the
loss is multiplied by the world size to turn that average back into the sum. FSDP2's reduce-scatter
averages too, so both take the same loss.

Under FSDP every transformer block is sharded on its own, then ``LossModule`` as the root (its forward
gathers the embeddings and the head, which ``loss_sum`` calls outside the model's own forward). Every rank
must then run the same forwards: evaluation goes through ``Sharded.loss`` on all ranks, and the full
weights and optimizer state are gathered for checkpoints and for the model that training returns.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from heed.config import FastPath
from heed.data.batch import Batch, make_batch
from heed.data.encode import Example
from heed.errors import HeedError
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

    sharded = False

    def __init__(self, model: Any, precision: str, device: torch.device, fast: FastPath) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.world = distributed.world()
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(LossModule(model, precision, device, fast), device_ids=ids)

    def sync(self, last: bool) -> Any:
        """Gradients are all-reduced only in the backward of the step's last micro-batch."""
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def backward(self, examples: Sequence[Example], *, grad_accum: int, pad_id: int, device: torch.device,
                 pack_capacity: int | None, static: bool) -> tuple[float, int]:
        """Forward and backward over this rank's shard in ``grad_accum`` micro-batches; the step's summed
        loss and supervised tokens over all ranks. Gradients are synchronised on the last micro-batch."""
        local = distributed.shard(examples, self.world)
        supervised = int(distributed.all_sum([sum(e.supervised_tokens for e in local)], device)[0])
        parts = [local[i::grad_accum] for i in range(grad_accum)]  # grad_accum parts on every rank
        total = 0.0
        for i, micro in enumerate(parts):
            with self.sync(i == len(parts) - 1):
                batch = make_batch(micro, pad_id, pack_capacity=pack_capacity, static=static).to(device)
                loss = self.ddp(batch.inputs, batch.targets, batch.lengths, batch.position_ids)
                (loss * self.world.size / supervised).backward()
            total += float(loss.detach())
        return distributed.all_sum([total], device)[0], supervised


def blocks(model: Any) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules transformers never splits across devices."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise HeedError(f"--fsdp: heed finds no transformer blocks to shard in this {kind} model (it names none "
                        "in _no_split_modules); train it without --fsdp")
    return found


class Sharded(DataParallel):
    """The loss of one model sharded with FSDP2 (``fully_shard``) over all ranks: each rank holds 1/N of
    every weight, gradient and AdamW moment; a block's full weights exist only while it runs."""

    sharded = True

    def __init__(self, model: Any, precision: str, device: torch.device, fast: FastPath) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.world = distributed.world()
        self.model = model
        mesh = init_device_mesh(device.type, (self.world.size,))  # the shards move to this rank's device
        for block in blocks(model):
            fully_shard(block, mesh=mesh)
        self.root = fully_shard(LossModule(model, precision, device, fast), mesh=mesh)
        self.ddp = self.root  # backward calls it as it calls DDP's module

    def sync(self, last: bool) -> Any:
        """Gradients are reduce-scattered only in the backward of the step's last micro-batch; before it
        they accumulate unsharded on every rank."""
        self.root.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def loss(self, batch: Batch) -> torch.Tensor:
        """``loss_sum`` of ``batch`` through the sharded root; every rank must call it as often as the others."""
        return self.root(batch.inputs, batch.targets, batch.lengths, batch.position_ids)

    def _options(self, **kw: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def _names(self) -> list[str]:
        """The names of the trained parameters, in the optimizer's order (as ``setup`` handed them to it)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def full_state(self, optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The whole model's weights and the optimizer's state on rank 0's CPU (empty on the other ranks),
        keyed as one process keys them: ``model.state_dict()`` names, optimizer state by parameter index.
        Every rank must call it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = self._options(cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        by_name = get_optimizer_state_dict(self.model, optimizer, options=options)
        if not self.world.main:
            return {}, {}
        first: dict[int, str] = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():  # tied weights: one tensor again
            weights[name] = weights[first.setdefault(id(tensor), name)]
        index = {name: i for i, name in enumerate(self._names())}
        groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
        return weights, {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}

    def load_full_state(self, optimizer: Any, weights: dict[str, torch.Tensor] | None,
                        optimizer_state: dict[str, Any] | None = None, *, strict: bool = True) -> None:
        """Shard full weights (and optimizer state, keyed by parameter index) that every rank holds."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        if weights is not None:
            set_model_state_dict(self.model, weights, options=self._options(strict=strict))
        if optimizer_state is not None:
            names = self._names()
            by_name = {"state": {names[int(i)]: v for i, v in optimizer_state["state"].items()},
                       "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                        for g in optimizer_state["param_groups"]]}
            set_optimizer_state_dict(self.model, optimizer, by_name, options=self._options())

    def gathered(self, trained_only: bool = False) -> dict[str, torch.Tensor]:
        """The full weights (or only the trained ones) on every rank's CPU, one tensor gathered at a time."""
        from torch.distributed.tensor import DTensor

        if trained_only:
            items = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        else:
            items = list(self.model.state_dict().items())
        return {n: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu", copy=True)
                for n, v in items}
