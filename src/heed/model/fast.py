"""Module-level speed features applied when a model is loaded: fused activations and short-row attention.

Both change how the model computes, not what: the saved config and weights are untouched.
"""

from __future__ import annotations

from typing import Any

from heed.config import FastPath


def speed_up(model: Any, fast: FastPath) -> Any:
    """Apply the features ``fast`` turns on."""
    from heed.model.attention import use_short_attention

    if fast.fused_act:
        fuse_activations(model)
    if fast.short_attn:
        use_short_attention(model)
    return model


def fuse_activations(model: Any) -> Any:
    """Swap GPT-2's GELU, written as seven tensor operations, for PyTorch's single fused kernel.

    Same function (the tanh approximation), equal to rounding; the saved config is untouched.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
    return model
