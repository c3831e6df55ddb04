"""The optimizer step: AdamW, fused where torch has the kernel, with gradient clipping folded into it.

Clipping to a global norm ``c`` multiplies every gradient by ``min(1, c / (norm + 1e-6))``. With a
fused AdamW that factor is handed to the kernel as its gradient divisor (``grad_scale``, the hook
``torch.amp.GradScaler`` uses for unscaling), so the gradients are read once by the kernel instead of
once more by a separate scaling pass — the same update, one pass over the model's gradients fewer.
Under FSDP the gradients are shards (DTensors): their norm is summed over all ranks before it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

EPS = 1e-6  # what torch.nn.utils.clip_grad_norm_ adds to the norm


def make_optimizer(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float, *,
                   fused: bool = True) -> Any:
    """AdamW, fused where torch has a fused kernel for the parameters' device (CUDA, and CPU since torch 2.4);
    ``fused=False`` is torch's default implementation (the original design's)."""
    if not fused:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def is_fused(optimizer: Any) -> bool:
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        g.get("fused") for g in optimizer.param_groups)


def grad_norm(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients (a 0-d tensor on their device)."""
    grads = [p.grad for p in params if p.grad is not None]
    if _sharded(grads):
        norm = torch.nn.utils.get_total_norm(grads)  # a DTensor: the shards' squares summed over all ranks
        return norm.full_tensor()
    if grads and all(g.device.type == "cpu" and g.dtype == torch.float32 and g.is_contiguous() for g in grads):
        # BLAS dot products: on CPUs faster than torch's norm kernels (BENCHMARKS.md); the sum of squares is
        # accumulated in fp64.
        squares = torch.stack([torch.dot(g.view(-1), g.view(-1)) for g in grads])
        return squares.double().sum().sqrt().float()
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _sharded(grads: Sequence[torch.Tensor]) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(g, DTensor) for g in grads)


def clipped_step(optimizer: Any, params: Sequence[torch.nn.Parameter], clip: float | None, *,
                 fold: bool = True) -> None:
    """``clip_grad_norm_(params, clip)`` then ``optimizer.step()``; folded into the kernel when fused.

    ``fold=False`` always clips with a separate pass (``FastPath.fold_clip``).
    """
    if not clip:
        optimizer.step()
        return
    params = [p for p in params if p.grad is not None]
    if not (fold and is_fused(optimizer)) or not params:
        if _sharded([p.grad for p in params]):
            torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm(params))
        else:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return
    norm = grad_norm(params).float()
    optimizer.grad_scale = torch.clamp((norm + EPS) / clip, min=1.0)  # grads are divided by it in the kernel
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = None
