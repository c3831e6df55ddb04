"""Stage: export. A heed model as a GGUF file (converted by llama.cpp's own converter, ``converter``)
with an Ollama ``Modelfile`` beside it carrying heed's template (``modelfile``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from heed.errors import HeedError

QUANTS = ("f32", "f16", "q8_0")


def _hf_dir(spec: str, scratch: Path) -> Path:
    """A Hugging Face directory holding ``spec``'s weights: the model directory itself, else (a preset,
    an adapter directory) the model loaded by heed and saved into ``scratch``."""
    from heed.io import read_json, write_json
    from heed.model import gpt2_tokenizer, load_model, load_tokenizer, resolve, save_model

    path = Path(resolve(spec)).expanduser()  # a built-in model: its cached directory
    if path.is_dir() and (path / "config.json").is_file():
        for item in path.iterdir():  # linked, not copied: config.json may need a key added below
            if item.is_file() and item.name != "config.json":
                (scratch / item.name).symlink_to(item.resolve())
        config = read_json(path / "config.json")
    else:
        model = load_model(spec)
        tokenizer = gpt2_tokenizer() if spec.startswith("random:") else load_tokenizer(spec)
        save_model(model, tokenizer, scratch, {})
        config = read_json(scratch / "config.json")
    if config.get("model_type") == "gpt2" and "n_ctx" not in config:
        config["n_ctx"] = config.get("n_positions", 1024)  # transformers 5 no longer writes it; the converter reads it
    write_json(scratch / "config.json", config)
    return scratch


def export(spec: str, out: Path, *, quant: str = "f16", converter: str | None = None,
           template: str | None = None) -> Path:
    """Write ``out`` (GGUF) and ``Modelfile`` beside it; returns the Modelfile's path."""
    from heed.data.templates import get_template
    from heed.export.converter import convert, find_converter
    from heed.export.modelfile import modelfile
    from heed.io import write_text
    from heed.model import context_length, load_tokenizer, model_config, read_meta, saved_template

    out = Path(out).expanduser().absolute()  # the converter runs in its own directory
    if quant not in QUANTS:
        raise HeedError(f"--quant {quant}: choose f32, f16 or q8_0")
    if out.suffix != ".gguf":
        raise HeedError(f"--gguf {out}: name the file *.gguf")
    if not out.parent.is_dir():
        raise HeedError(f"--gguf {out}: no such directory {out.parent}")
    tool = find_converter(converter)
    chosen = get_template(saved_template(spec, template))
    tokenizer = load_tokenizer(spec)
    num_ctx = read_meta(spec).get("max_length") or context_length(model_config(spec))
    text = modelfile(out.name, chosen, tokenizer, num_ctx=int(num_ctx))  # before converting: fails fast
    with tempfile.TemporaryDirectory(prefix="heed-export-") as scratch:
        convert(tool, _hf_dir(spec, Path(scratch)), out, quant)
    path = out.with_name("Modelfile")
    write_text(path, text)
    return path
