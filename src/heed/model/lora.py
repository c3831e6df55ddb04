"""LoRA adapters through peft: wrap a model so only adapter weights train, merge them on save; save an
adapter on its own (peft's layout) and load one onto its base model."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heed.config import LoraConfig
from heed.errors import HeedError


def add_adapters(model: Any, cfg: LoraConfig) -> Any:
    try:
        import peft
    except ImportError:
        raise HeedError("--lora needs the peft package: pip install 'heed[lora]'") from None
    targets, layers = cfg.target_modules, None
    if cfg.last_layers is not None:
        targets, layers = _layer_targets(model, cfg), _last_layers(model, cfg.last_layers)
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        layers_to_transform=layers, task_type="CAUSAL_LM",
        # GPT-2 stores projections as Conv1D with transposed weights.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    try:
        with warnings.catch_warnings():
            # peft asks transformers 5 a deprecated question; the warning is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as e:
        flag = "--lora-targets" + (" with --lora-last-layers" if cfg.last_layers is not None else "")
        raise HeedError(f"{flag}: {str(e).splitlines()[0]}") from None


def _last_layers(model: Any, n: int) -> list[int]:
    total = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise HeedError("--lora-last-layers: this model's config does not say how many layers it has; "
                        "leave --lora-last-layers out to adapt them all")
    if n > total:
        raise HeedError(f"--lora-last-layers {n}: the model has {total} layers; give at most {total}")
    return list(range(total - n, total))


def _layer_targets(model: Any, cfg: LoraConfig) -> list[str]:
    """``--lora-targets`` as a list of module names, which peft needs to pick layers by index:
    unset means peft's default for the model type, ``all-linear`` every linear projection inside the
    layers (never the output head)."""
    targets = cfg.target_modules
    if isinstance(targets, list):
        return targets
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        default = DEFAULTS.get(getattr(model.config, "model_type", ""))
        if not isinstance(default, (list, tuple, set)):  # none, or a pattern over full module names
            raise HeedError("--lora-last-layers: peft has no default targets for this model type; "
                            "name them with --lora-targets (e.g. --lora-targets all-linear)")
        return list(default)
    if targets == "all-linear":
        from transformers.pytorch_utils import Conv1D

        head = model.get_output_embeddings()
        names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
                 and re.search(r"\.\d+\.", name)}
        return sorted(names)
    return [t.strip() for t in str(targets).split(",") if t.strip()]


def is_adapted(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model: Any) -> Any:
    """The plain model with adapters folded into its weights (a model without adapters is returned as is)."""
    return model.merge_and_unload() if is_adapted(model) else model


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class Adapter:
    """A trained adapter on its own, taken before the merge: its weights and peft's config for it."""

    weights: dict[str, Any]
    config: Any  # peft.LoraConfig; base_model_name_or_path names the model it adapts


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise HeedError("LoRA adapters need the peft package: pip install 'heed[lora]'") from None
    return peft


def adapter_of(model: Any, base: str | None) -> Adapter:
    """The adapter of a peft-wrapped ``model`` (copied: merging later leaves it as it is); ``base`` is the
    ``--model`` it was trained on, written into its config so that it loads from anywhere."""
    import copy

    peft = _peft()
    weights = {k: v.detach().to("cpu", copy=True).contiguous()
               for k, v in peft.get_peft_model_state_dict(model).items()}
    config = copy.deepcopy(model.peft_config["default"])
    if base and Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().resolve())
    config.base_model_name_or_path = base
    return Adapter(weights, config)


def save_adapter(adapter: Adapter, out_dir: Path) -> None:
    """``adapter_model.safetensors`` and ``adapter_config.json`` in ``out_dir`` (peft's layout)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter.weights, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter.config.save_pretrained(str(out_dir))


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path: Path, meta: dict[str, Any]) -> str:
    """The ``--model`` an adapter directory adapts: its adapter_config.json's base_model_name_or_path,
    else heed.json's base_model."""
    from heed.io import read_json

    config = read_json(path / ADAPTER_CONFIG)
    base = (config.get("base_model_name_or_path") if isinstance(config, dict) else None) or meta.get("base_model")
    if not isinstance(base, str) or not base:
        raise HeedError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path (nor base_model in heed.json); "
                        "set it to the model the adapter was trained on")
    return base


def apply_adapter(base_model: Any, path: Path) -> Any:
    """``base_model`` with the adapter in ``path`` applied and merged into its weights."""
    peft = _peft()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            adapted = peft.PeftModel.from_pretrained(base_model, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise HeedError(f"--model {path}: cannot apply the adapter: {str(e).splitlines()[0] if str(e) else e}; "
                        "is it the adapter of this base model?") from None
    return adapted.merge_and_unload()
