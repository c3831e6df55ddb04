"""Stage: models and tokenizers. Resolve a ``--model`` spec (preset, directory, .gguf, hub id), load it with
heed's speed features, add LoRA adapters, save a trained model with its metadata."""

from heed.model.load import (
    HEED_META, PRESETS, context_length, gpt2_tokenizer, load_model, load_tokenizer, model_config, read_meta,
    resolve, resolve_data, save_model, saved_template,
)

__all__ = ["HEED_META", "PRESETS", "context_length", "gpt2_tokenizer", "load_model", "load_tokenizer",
           "model_config", "read_meta", "resolve", "resolve_data", "save_model", "saved_template"]
