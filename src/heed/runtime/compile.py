"""Static shapes for ``torch.compile``: every bucketing rule and every compiled callable heed makes.

A compiled function recompiles for each new input shape, so heed keeps shapes few: training batches
round their padded width up to a multiple of ``BUCKET`` and packed row counts to ``row_bucket``; a
static KV cache rounds its length up the same way (``cache_length``). Compiled callables are made here
and nowhere else: the training body (``compile_module``/``compiled``), the model's one-token decoding step
(``compiled_step``) and the whole decoding step (``compiled_whole_step``), CUDA graphs on CUDA.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any, Callable

import torch

BUCKET = 64  # padded widths and static cache lengths are multiples of this


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def row_bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 times them) that is ≥ n:
    a logarithmic number of shapes, at most a third of the rows padding."""
    power = 1 << max(0, (n - 1).bit_length() - 1)  # the largest power of two below n (1 for n <= 2)
    return n if n <= 2 else (power * 3 // 2 if n <= power * 3 // 2 else power * 2)


def cache_length(n: int) -> int:
    """A static cache's length: a multiple of ``BUCKET`` (as training's static widths), so nearby lengths
    share a compiled step."""
    return round_up(n, BUCKET)


def allow_recompiles(limit: int = 64) -> None:
    """Let torch.compile keep up to ``limit`` compiled versions of a function (torch's default is 8): heed
    buckets shapes so that each compiles once, and a few buckets times the grad modes exceed 8."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, limit)


_COMPILED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def compile_module(owner: Any, module: Any) -> Any:
    """Compile ``module`` for static shapes and file it under ``owner`` (the model it belongs to);
    ``compiled(owner)`` returns it. The model itself stays eager, so generation is unaffected."""
    allow_recompiles()
    _COMPILED[owner] = torch.compile(module, dynamic=False)
    return _COMPILED[owner]


def compiled(owner: Any) -> Any | None:
    """What ``compile_module`` filed under ``owner``, or None."""
    return _COMPILED.get(owner)


def compiled_step(step: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., torch.Tensor]:
    """The model's one-token decoding step compiled once per (batch, cache length); CUDA graphs on CUDA.

    Automatic dynamic shapes stay on: transformers' sliding-window cache layers count in a Python int,
    which would otherwise recompile every token (``full_length_cache`` in ``heed.generate.decode``, which
    the compiled decoders use where it fits, counts in tensors only)."""
    run = _graphed(step, device)
    return lambda *args: run(*args).clone()  # a CUDA graph's output is overwritten by its next replay


def compiled_whole_step(step: Callable[..., None], device: torch.device) -> Callable[..., None]:
    """A whole decoding step (model, token choice, bookkeeping) that works in place on its arguments and
    returns nothing, compiled once per batch shape; on CUDA it replays as a CUDA graph.

    Static shapes only (``dynamic=False``): every per-step value is a tensor updated in place, so a
    replay sees the same shapes, the same Python values and, for the buffers it writes
    (``static_buffers``), the same addresses; nothing in it asks the host anything."""
    return _graphed(step, device, dynamic=False)


def _graphed(step: Callable[..., Any], device: torch.device, **options: Any) -> Callable[..., Any]:
    """``step`` compiled whole (``fullgraph``); on CUDA replayed as a CUDA graph, each call a new step."""
    allow_recompiles()
    mode = "reduce-overhead" if device.type == "cuda" else None
    fn = torch.compile(step, mode=mode, fullgraph=True, **options)

    def run(*args: Any) -> Any:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return fn(*args)

    return run


def static_buffers(*tensors: torch.Tensor) -> None:
    """Mark tensors a compiled step writes in place as fixed addresses: a CUDA graph may write only those
    (others make inductor skip the graph), and replays them without copying."""
    import torch._dynamo

    for t in tensors:
        torch._dynamo.mark_static_address(t)


def one_dtype(cache: Any) -> None:
    """Store a static cache's values in the keys' dtype. A static layer allocates both in the dtype of the
    first keys, but under autocast they can differ (Gemma 3's rotary embedding leaves keys fp32, values
    come out of a bf16 matmul). Lossless: attention under autocast casts both to bf16 again."""
    for layer in cache.layers:
        def update(keys: torch.Tensor, values: torch.Tensor, *args: Any, _update: Any = layer.update,
                   **kwargs: Any) -> Any:
            return _update(keys, values.to(keys.dtype), *args, **kwargs)

        layer.update = update


@contextlib.contextmanager
def matmul_weights(model: Any, dtype: torch.dtype, copies: dict[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, the weights of the model's matmul layers are ``dtype`` copies (kept in ``copies``,
    made once); embeddings, norms and biases stay as they are, so under autocast the results are the
    same. A compiled step needs this: eager autocast caches its weight casts, a compiled graph would
    redo them on every token. A head tied to the input embedding gets its own copy; the embedding keeps
    its weights."""
    from transformers.pytorch_utils import Conv1D

    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    swapped: list[tuple[torch.nn.Module, torch.nn.Parameter, torch.Tensor | None]] = []
    try:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(module, torch.nn.Linear | Conv1D) or weight is None or weight.dtype == dtype:
                continue
            copy = copies.get(id(weight))
            if copy is None:
                copy = copies[id(weight)] = weight.detach().to(dtype)
            if id(weight) in embedded:  # tied: untie for the block
                module.weight = torch.nn.Parameter(copy, requires_grad=False)
                swapped.append((module, weight, None))
            else:
                swapped.append((module, weight, weight.data))
                weight.data = copy
        yield
    finally:
        for module, weight, data in reversed(swapped):
            if data is None:
                module.weight = weight
            else:
                weight.data = data
