"""LoRA adapters through peft: wrap a model so only adapter weights train, merge them on save."""

from __future__ import annotations

import warnings
from typing import Any

from heed.config import LoraConfig
from heed.errors import HeedError


def add_adapters(model: Any, cfg: LoraConfig) -> Any:
    try:
        import peft
    except ImportError:
        raise HeedError("--lora needs the peft package: pip install 'heed[lora]'") from None
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
        # GPT-2 stores projections as Conv1D with transposed weights.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    try:
        with warnings.catch_warnings():
            # peft asks transformers 5 a deprecated question; the warning is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as e:
        raise HeedError(f"--lora-targets: {str(e).splitlines()[0]}") from None


def is_adapted(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model: Any) -> Any:
    """The plain model with adapters folded into its weights (a model without adapters is returned as is)."""
    return model.merge_and_unload() if is_adapted(model) else model
