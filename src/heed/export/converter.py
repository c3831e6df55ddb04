"""Where heed finds llama.cpp's Hugging Face → GGUF converter, and how it runs it.

heed writes no GGUF itself: it runs ``convert_hf_to_gguf.py`` from llama.cpp's sources, as the
``llama-cpp-python`` sdist vendors them (``vendor/llama.cpp``: the script, its ``conversion`` package
and ``gguf-py``). Found, in order: ``--converter PATH`` (a llama.cpp source tree, or the sdist
``.tar.gz``), else the copy ``heed export --fetch-converter`` unpacked into heed's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from heed.errors import HeedError
from heed.io import scratch_dir, staged_into

LLAMA_CPP_PYTHON = "0.3.36"
SCRIPT = "convert_hf_to_gguf.py"
# What the converter needs from the vendored tree; nothing else is unpacked.
NEEDED = (SCRIPT, "conversion/", "gguf-py/gguf/", "LICENSE")


def cache_dir() -> Path:
    base = os.environ.get("HEED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "heed")
    return Path(base) / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def _unpack(sdist: Path, into: Path) -> Path:
    """The converter's files from a llama-cpp-python sdist, into ``into`` (by rename: never half a copy)."""
    try:
        with tarfile.open(sdist) as tar:
            prefix = next((m.name.split("/")[0] + "/vendor/llama.cpp/" for m in tar.getmembers()), None)
            members = [m for m in tar.getmembers() if prefix and m.isfile() and m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(NEEDED)]
            if not any(m.name.endswith("/" + SCRIPT) for m in members):
                raise HeedError(f"--converter {sdist}: no vendor/llama.cpp/{SCRIPT} inside; expected the "
                                f"llama-cpp-python sdist (llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz)")
            with scratch_dir(into.parent, "unpack") as tmp:
                for m in members:
                    m.name = m.name[len(prefix):]
                    tar.extract(m, tmp, filter="data")
                if not into.exists():  # another process may have unpacked it meanwhile: the first one stays
                    os.replace(tmp, into)
    except (tarfile.TarError, OSError) as e:
        raise HeedError(f"--converter {sdist}: cannot unpack it ({e}); download the sdist again") from None
    return into


def fetch_converter() -> Path:
    """Download the llama-cpp-python sdist with pip (no build) and unpack the converter into the cache."""
    target = cache_dir()
    if (target / SCRIPT).is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                   f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 and not sdists:  # pip fails after the download when it cannot build metadata
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise HeedError(f"cannot download llama-cpp-python {LLAMA_CPP_PYTHON} with pip ({last}); download "
                            "its sdist elsewhere and pass it as --converter FILE.tar.gz")
        return _unpack(sdists[0], target)


def find_converter(path: str | None) -> Path:
    """The directory holding ``convert_hf_to_gguf.py`` (with ``conversion/`` and ``gguf-py/``)."""
    if path:
        p = Path(path).expanduser()
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return _unpack(p, cache_dir())
        if p.is_file() and p.name == SCRIPT:
            p = p.parent
        for tree in (p, p / "vendor" / "llama.cpp"):
            if (tree / SCRIPT).is_file():
                return tree
        raise HeedError(f"--converter {path}: no {SCRIPT} there; pass a llama.cpp source tree or the "
                        f"llama-cpp-python {LLAMA_CPP_PYTHON} sdist (.tar.gz)")
    if (cache_dir() / SCRIPT).is_file():
        return cache_dir()
    raise HeedError(f"heed export needs llama.cpp's converter: run `heed export --fetch-converter` once (pip downloads "
                    f"the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {cache_dir()}), or pass --converter PATH")


def convert(converter: Path, model_dir: Path, out: Path, quant: str) -> None:
    """Run the converter on a Hugging Face model directory, writing ``out`` (the file appears whole: the
    converter writes into a staging directory beside it, and the file is renamed into place)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(converter), str(converter / "gguf-py")]))
    env.pop("NO_LOCAL_GGUF", None)
    with staged_into(out.parent) as staging:
        tmp = staging / out.name
        command = [sys.executable, str(converter / SCRIPT), str(model_dir), "--outfile", str(tmp), "--outtype", quant]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=converter)
        if done.returncode != 0 or not tmp.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no output"]
            raise HeedError(f"llama.cpp's converter could not convert {model_dir}: {lines[-1][:300]}")
