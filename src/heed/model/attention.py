"""Attention over short rows on the CPU: two matmuls and a softmax instead of SDPA's CPU kernel.

Instruction examples are short (the original design's average 55 tokens), and at that size PyTorch's
CPU flash-attention kernel is slow, its backward above all; ``softmax(q kᵀ · scale + mask) v`` written
out is faster there (BENCHMARKS.md, "Measurements behind design choices"). The scores are computed in
fp32 from the bf16 queries and keys, masked and softmaxed in fp32, and the weights meet the values in
bf16, which on Gemma 3 lands closer to the fp32 loss than the flash kernel does.

Only rows up to ``SHORT`` keys and heads up to ``WIDEST_HEAD`` wide are written out (where it was
measured to pay). The rest goes to transformers' SDPA function unchanged: CUDA, longer rows, one-token decoding steps, batches
whose scores would pass ``SCORE_BUDGET`` (the written-out form keeps them for backward, flash
attention does not), and what this function does not implement (soft-capping, sinks, position
biases, paged caches). Registered with transformers as ``heed_sdpa`` with SDPA's mask function, so a
model switched to it (``use_short_attention``) gets the same masks as with ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "heed_sdpa"
SHORT = 128  # longest row (keys) whose attention is written out
WIDEST_HEAD = 128  # widest head written out (Gemma 3's 256-wide heads gained nothing)
SCORE_BUDGET = 32 * 2**20  # bytes of fp32 scores per layer up to which attention is written out
_UNSUPPORTED = ("cache", "position_bias", "softcap", "s_aux", "sinks")


def _sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def short_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: query (B, H, Q, D), key and value (B, H_kv, K, D);
    returns the output as (B, Q, H, D) and no weights, as the ``sdpa`` function does."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    written_out = (query.device.type == "cpu" and 1 < q_len == kv_len <= SHORT and head_dim <= WIDEST_HEAD
                   and heads % kv_heads == 0 and batch * heads * q_len * kv_len * 4 <= SCORE_BUDGET
                   and all(kwargs.get(name) is None for name in _UNSUPPORTED))
    if not written_out:
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                       is_causal=is_causal, **kwargs)
    scale = head_dim ** -0.5 if scaling is None else scaling
    groups = heads // kv_heads
    # Grouped-query attention without copying keys: the query heads that share a key head become rows.
    q = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    # Scores in fp32 from the (bf16) queries and keys: bf16 scores would round the softmax's inputs.
    scores = torch.matmul(q.float(), key.float().transpose(-1, -2)).mul_(scale).view(batch, heads, q_len, kv_len)
    if attention_mask is None:
        if is_causal if is_causal is not None else getattr(module, "is_causal", True):
            causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        # A finite floor, not -inf: a row with nothing to attend to (left padding) gets uniform weights, not NaN.
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, kv_heads, groups * q_len, kv_len), value)
    return out.view(batch, heads, q_len, -1).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``heed_sdpa`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, short_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_short_attention(model: Any) -> Any:
    """Switch a model that uses ``sdpa`` to ``heed_sdpa``; other implementations are left as they are.
    The saved config is unaffected (transformers does not write the attention implementation)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return model
    register()
    model.set_attn_implementation(NAME)
    return model


# --- which SDPA kernels CUDA may pick ---------------------------------------------------------------


def sdpa_backends(device_type: str, static: bool) -> list[Any] | None:
    """The SDPA kernels attention may use, or None for PyTorch's own choice.

    On CUDA under bf16, PyTorch prefers cuDNN's attention on Hopper, and cuDNN builds an execution plan
    for every new shape. With dynamic shapes (padded batches of varying width, prompt prefill, a growing
    cache) that planning costs more CPU time than the attention itself, enough on an H100 to make the bf16
    fast path slower than the fp32 loop; without cuDNN it was several times faster (BENCHMARKS.md,
    "Measurements behind design choices"). With static shapes (a compiled body, full packed rows, a static
    cache's decoding step) the plan is built once and cuDNN is the faster kernel, so it stays. Elsewhere
    (the CPU) nothing is restricted.
    """
    from torch.nn.attention import SDPBackend

    if device_type != "cuda" or static:
        return None
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device, static: bool) -> Any:
    """A context in which SDPA picks among ``sdpa_backends(device.type, static)``."""
    import contextlib

    from torch.nn.attention import sdpa_kernel

    backends = sdpa_backends(device.type, static)
    return contextlib.nullcontext() if backends is None else sdpa_kernel(backends)


# --- packed rows through FlexAttention ---------------------------------------------------------------

FLEX = "heed_flex"


def flex_fits(model: Any) -> bool:
    """Whether ``heed_flex`` computes what the model's attention computes: no attention dropout while
    training, no logit soft-capping, no attention sinks. Other models keep SDPA with a dense mask."""
    config = model.config
    dropout = max(float(getattr(config, name, 0.0) or 0.0) for name in ("attn_pdrop", "attention_dropout"))
    return (getattr(config, "_attn_implementation", None) in ("sdpa", NAME, FLEX)
            and not (dropout and model.training)
            and getattr(config, "attn_logit_softcapping", None) is None
            and not getattr(config, "use_sinks", False))


_COMPILED_FLEX: dict[str, Any] = {}


def _flex() -> Any:
    """FlexAttention: compiled once on CUDA (its fused kernel; eager FlexAttention is a reference
    implementation that materialises every score), eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def packed_flex_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface over FlexAttention: ``attention_mask`` is the BlockMask
    ``packed_block_mask`` made from the packed rows (causal within each example, and the layer's sliding
    window), so blocks of 128×128 positions that lie across example boundaries are skipped, not
    computed and masked: attention work follows the examples' lengths, not the row's."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask):  # one-token decoding or a caller's own mask
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                       is_causal=is_causal, **kwargs)
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        # torch 2.13 has no FlexAttention backward on the CPU: the same mask function, expanded densely,
        # through SDPA (what the tests' gradients check; a CPU run uses packed_attn "mask" anyway).
        from torch.nn.attention.flex_attention import create_mask

        q_len, kv_len = attention_mask.seq_lengths
        dense = create_mask(attention_mask.mask_mod, query.shape[0], None, q_len, kv_len, device=query.device)
        return _sdpa()(module, query, key, value, dense, dropout=dropout, scaling=scaling, is_causal=False,
                       **kwargs)
    flex = _COMPILED_FLEX.get(query.device.type)
    if flex is None:
        flex = _flex()
        if query.device.type == "cuda" and not torch.compiler.is_compiling():
            flex = torch.compile(flex)
        _COMPILED_FLEX[query.device.type] = flex
    # FlexAttention wants one dtype for q, k, v (Gemma 3's rotary leaves q and k fp32 under autocast).
    dtype = value.dtype
    out = flex(query.to(dtype), key.to(dtype), value, block_mask=attention_mask, scale=scaling,
               enable_gqa=query.shape[1] != key.shape[1])  # (B, H, Q, D)
    return out.transpose(1, 2).contiguous(), None


def packed_block_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                      mask_function: Any = None, attention_mask: torch.Tensor | None = None,
                      device: torch.device | str = "cpu", **kwargs: Any) -> Any:
    """transformers' mask interface: the BlockMask of ``mask_function``, which transformers composes from
    causality, the packed examples (read off the position ids) and the layer's sliding window. Compiled
    where FlexAttention is (CUDA); built eagerly on the CPU."""
    from torch.nn.attention.flex_attention import create_block_mask
    from transformers.masking_utils import (add_offsets_to_mask_function, and_masks, padding_mask_function,
                                            prepare_padding_mask)

    if attention_mask is not None and not bool(attention_mask.all()):
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        mask_function = and_masks(mask_function, padding_mask_function(padding))
    mask_function = add_offsets_to_mask_function(mask_function, q_offset, kv_offset)
    return create_block_mask(mask_function, batch_size, None, q_length, kv_length, device=device,
                             _compile=torch.device(device).type == "cuda")


def register_flex() -> None:
    """Make ``heed_flex`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(FLEX, packed_flex_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLEX, packed_block_mask)


def use_packed_attention(kind: str, device: torch.device) -> bool:
    """``FastPath.packed_attn``: ``flex`` or ``mask`` (SDPA over the row with a dense block-diagonal
    mask); ``auto`` is flex on CUDA, where it runs compiled, and mask on the CPU, where FlexAttention
    runs its unfused reference implementation."""
    return kind == "flex" or (kind == "auto" and device.type == "cuda")


class packed_attention:
    """Within the block, a model whose attention ``flex_fits`` runs ``heed_flex``; then its own again.
    Held around the forward of a packed batch only: padded batches and generation keep SDPA."""

    def __init__(self, model: Any, on: bool) -> None:
        self.model, self.previous = model, None
        self.on = on and flex_fits(model)

    def __enter__(self) -> None:
        if self.on:
            register_flex()
            self.previous = self.model.config._attn_implementation
            self.model.set_attn_implementation(FLEX)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            self.model.set_attn_implementation(self.previous)
