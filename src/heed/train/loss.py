"""The training objective: summed cross-entropy over supervised targets, computed where it is needed.

Targets are already shifted by collate, so the loss compares ``logits[:, t]`` with ``targets[:, t]``.
The output head (the vocabulary matrix) is most of the cost of a small model's step, so it gets its
own path: logits only at supervised positions, in chunks, never the full (B, T, V) tensor, with the
gradients of the head computed in the same pass (the loss is a scalar, so they are known at forward
time and only scaled in backward). The vocabulary matrix is then cast once per step and its gradient
written once, instead of once per chunk and again in backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from heed.config import FastPath
from heed.data.batch import Batch
from heed.data.encode import IGNORE_INDEX
from heed.model.attention import packed_attention, use_packed_attention
from heed.model.lora import is_adapted
from heed.runtime.compile import compile_module, compiled
from heed.runtime.device import autocast

# Architectures whose logits are exactly ``lm_head(last_hidden_state)`` (Gemma's optional soft-capping
# is applied here too); for these the head runs only where a target is supervised.
PLAIN_HEAD_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"}

HEAD_BUDGET = 256 * 2**20  # bytes of fp32 logits (and their gradient) alive at once per chunk


def _body_and_head(model: Any) -> tuple[Any, torch.nn.Linear, float | None] | None:
    inner = model.get_base_model() if is_adapted(model) else model
    config = inner.config
    if config.model_type not in PLAIN_HEAD_TYPES or inner.base_model is inner:
        return None
    head = inner.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return inner.base_model, head, getattr(config, "final_logit_softcapping", None)


def compile_body(model: Any) -> Any:
    """From now on ``loss_sum(model, ...)`` runs a compiled copy of what it calls (the body when the head
    is computed here, else the whole model), for static shapes (``heed.runtime.compile``)."""
    parts = _body_and_head(model)
    return compile_module(model, parts[0] if parts else model)


def loss_sum(model: Any, batch: Batch, precision: str, device: torch.device,
             fast: FastPath = FastPath()) -> torch.Tensor:
    """Summed cross-entropy over the supervised targets of a batch (targets are already shifted).

    Example: targets ``[[-100, -100, 7, 50256]]`` → the loss is
    ``CE(logits[0, 2], 7) + CE(logits[0, 3], 50256)``, and only those two rows of logits are computed.
    ``fast.head == "full"`` computes the logits of every position instead (the original design's loop);
    ``"torch"`` hands the supervised rows to ``torch.nn.functional.linear_cross_entropy``.
    """
    head_kind = resolve_head(fast.head, device)
    if head_kind == "full":
        with autocast(precision, device):
            logits = model(input_ids=batch.inputs, use_cache=False).logits  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="sum")
    parts = _body_and_head(model)
    supervised = batch.targets != IGNORE_INDEX  # (B, T)
    targets = batch.targets[supervised]  # (N,)
    # No KV cache in training; without one, packed position ids also give a block-diagonal mask.
    extra: dict[str, Any] = {"use_cache": False}
    if batch.position_ids is not None:
        extra["position_ids"] = batch.position_ids
    forward = compiled(model)  # compiled by compile_body, or the model as is
    if forward is None:
        forward = model if parts is None else parts[0]
    flex = batch.position_ids is not None and use_packed_attention(fast.packed_attn, device)
    with autocast(precision, device), packed_attention(model, flex):
        if parts is None:
            logits = forward(input_ids=batch.inputs, **extra).logits[supervised]  # (N, V)
            return F.cross_entropy(logits.float(), targets, reduction="sum")
        _, head, softcap = parts
        if head_kind == "torch" and softcap is None:  # torch's has no soft-capping: heed's head does it
            hidden = forward(input_ids=batch.inputs, **extra).last_hidden_state[supervised]  # (N, C)
            return torch_linear_cross_entropy(hidden, head.weight, targets, precision)
        needs_grad = fast.tied_lookup and torch.is_grad_enabled() and head.weight.requires_grad
        tied, shared = _tied_embedding(model, head) if needs_grad else None, None
        if tied is not None:
            shared = _SharedGrad()
            extra["inputs_embeds"] = tied_lookup(tied, batch.inputs, shared)
        else:
            extra["input_ids"] = batch.inputs
        hidden = forward(**extra).last_hidden_state[supervised]  # (N, C)
    dtype = torch.bfloat16 if precision == "bf16" else head.weight.dtype
    return linear_cross_entropy(hidden, head.weight, targets, softcap=softcap, dtype=dtype, shared=shared)


def resolve_head(head: str, device: torch.device) -> str:
    """``auto``: heed's own head on a CPU, where it is measured faster than full logits and torch's chunked
    kernel picks an fp32 "accurate" policy; torch's on CUDA, because heed's head, a chunked autograd
    function, took several times its FLOPs' worth of time in a profiled H100 step, while torch's kernel is
    tuned for CUDA (figures: BENCHMARKS.md, "Measurements behind design choices"). Not yet measured
    against each other on a GPU: ``scripts/gpu-check.sh`` runs both (the bench's "fast, heed's head"
    row), and the faster one becomes the default."""
    if head != "auto":
        return head
    return "torch" if device.type == "cuda" else "supervised"


def torch_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               precision: str) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` by PyTorch's chunked linear_cross_entropy (the (N, V)
    logits never exist at once); matmuls in bf16 under ``precision == "bf16"``, as heed's head does."""
    from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

    dtype = torch.bfloat16 if precision == "bf16" else weight.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear_cross_entropy(hidden.to(dtype), weight.to(dtype), targets, reduction="sum",
                                      options=LinearCrossEntropyOptions()).float()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         softcap: float | None = None, dtype: torch.dtype | None = None,
                         chunk: int | None = None, shared: _SharedGrad | None = None) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, reduction="sum")`` without the (N, V) logits.

    Matmuls run in ``dtype`` (default: the weight's), softmax and the loss in fp32. ``chunk`` rows of
    logits exist at a time (default: as many as fit in 256 MiB). With ``shared`` (the weight is also the
    input embedding, looked up by ``tied_lookup``) the weight's gradient is handed to the lookup's backward.
    """
    dtype = dtype or weight.dtype
    chunk = chunk or max(16, HEAD_BUDGET // (weight.shape[0] * 4 * 3))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, softcap, dtype, chunk, shared)
    with torch.no_grad():
        return _forward(hidden, weight, targets, softcap, dtype, chunk, need_h=False, need_w=False)[0]


def _forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
             dtype: torch.dtype, chunk: int, *, need_h: bool, need_w: bool) -> tuple[torch.Tensor, Any, Any]:
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)  # (V, C): cast once per step
        h = hidden.to(dtype)  # (N, C)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]
            logits = (hc @ w.T).float()  # (n, V)
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if not (need_h or need_w):
                continue
            # d loss / d logits = softmax - one_hot(target), then through the soft-cap.
            grad = logits.sub_(lse[:, None]).exp_()  # (n, V), in place: the logits are not needed again
            grad[torch.arange(len(tc), device=grad.device), tc] -= 1
            if softcap:
                grad.mul_(1 - capped * capped)
            grad = grad.to(dtype)
            if need_h:
                grad_h[start:start + chunk] = grad @ w  # (n, C)
            if need_w:
                part = grad.T @ hc  # (V, C)
                grad_w = part.to(weight.dtype) if grad_w is None else grad_w.add_(part)
    return total, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                softcap: float | None, dtype: torch.dtype, chunk: int, shared: _SharedGrad | None) -> torch.Tensor:
        total, grad_h, grad_w = _forward(hidden, weight, targets, softcap, dtype, chunk,
                                         need_h=ctx.needs_input_grad[0], need_w=ctx.needs_input_grad[1])
        ctx.grads = [grad_h, grad_w]
        ctx.shared = shared
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # hand the buffers over: autograd keeps a gradient it holds the only reference to
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_out.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out.to(grad_w.dtype))
            if ctx.shared is not None:  # the lookup's backward adds its rows and returns the sum
                ctx.shared.grad, grad_w = grad_w, None
        return grad_h, grad_w, None, None, None, None, None


# Tied input and output embeddings (GPT-2, Gemma): the matrix gets two gradients, a dense one from the
# head and one from the lookup that touches only the rows of the batch's tokens. Autograd would give the
# lookup a zero-filled (V, C) gradient of its own and then add the two: for GPT-2 two full passes over
# 39M values a step, for Gemma 3 over 168M. Instead the head's backward
# hands its gradient over and the lookup's backward adds its rows into it: one gradient, as autograd's.
SCALED_EMBEDDINGS = ("Gemma3TextScaledWordEmbedding", "Gemma4TextScaledWordEmbedding")


class _SharedGrad:
    """The tied matrix's gradient, from the head's backward (which runs first) to the lookup's."""

    grad: torch.Tensor | None = None


def _tied_embedding(model: Any, head: torch.nn.Linear) -> torch.nn.Embedding | None:
    """The model's input embedding when it is the head's matrix and a plain lookup (optionally scaled)."""
    inner = model.get_base_model() if is_adapted(model) else model
    embedding = inner.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding) or embedding.weight is not head.weight:
        return None
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return None
    if type(embedding) is not torch.nn.Embedding and type(embedding).__name__ not in SCALED_EMBEDDINGS:
        return None
    return embedding


def tied_lookup(embedding: torch.nn.Embedding, ids: torch.Tensor, shared: _SharedGrad) -> torch.Tensor:
    """``embedding(ids)``, whose weight gradient joins the head's (see ``_SharedGrad``)."""
    rows = _TiedLookup.apply(ids, embedding.weight, embedding.padding_idx, shared)
    scale = getattr(embedding, "embed_scale", None)
    return rows if scale is None else rows * scale.to(rows.dtype)


class _TiedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None,
                shared: _SharedGrad) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.shape, ctx.padding_idx, ctx.shared = weight.shape, padding_idx, shared
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[Any, ...]:
        (ids,) = ctx.saved_tensors
        grad, ctx.shared.grad = ctx.shared.grad, None
        if grad is None:  # the head's gradient was not computed: this lookup's alone
            grad = grad_rows.new_zeros(ctx.shape)
        ids, rows = ids.flatten(), grad_rows.reshape(-1, ctx.shape[1])
        if ctx.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        return None, grad.index_add_(0, ids, rows.to(grad.dtype)), None, None

