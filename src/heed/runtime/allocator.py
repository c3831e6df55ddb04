"""A caching memory allocator for CPU runs: mimalloc, preloaded by re-executing the command once.

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so a training
step page-faults its large tensors into existence again on every step (GPT-2's vocabulary matrix and
its gradient are 154 MB each; BENCHMARKS.md has what that costs). mimalloc keeps freed memory for reuse
(``MIMALLOC_PURGE_DELAY=-1``), and the resident size stays flat from step to step. It must be loaded before the C
library's malloc is first used, hence ``LD_PRELOAD`` and a re-exec; it comes from the ``cmeel-mimalloc``
wheel (Linux x86-64). ``HEED_ALLOCATOR=system`` turns this off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SWITCH = "HEED_ALLOCATOR"  # "system": leave malloc alone; "mimalloc": set by the re-exec itself
COMMANDS = {"train", "generate", "chat", "bench", "demo"}  # the ones that run a model


def library() -> Path | None:
    """The mimalloc shared library from the ``cmeel-mimalloc`` wheel, if installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("cmeel-mimalloc")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name.startswith("libmimalloc.so"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def loaded() -> bool:
    """Whether mimalloc is mapped into this process."""
    try:
        return "mimalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def environment(environ: Mapping[str, str], *, fast: bool) -> dict[str, str]:
    """``environ`` for a child process with mimalloc preloaded (``fast``) or the system allocator."""
    env = dict(environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "mimalloc" not in p]
    lib = library() if fast and env.get(SWITCH) != "system" else None
    if lib is not None:
        preload.insert(0, str(lib))
        env.setdefault("MIMALLOC_PURGE_DELAY", "-1")  # keep freed memory: no page faults from step to step
        env[SWITCH] = "mimalloc"
    else:
        env[SWITCH] = "system"
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def reexec_command(argv: list[str], environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]] | None:
    """The command and environment to re-execute ``heed argv`` with mimalloc, or None to go on as is."""
    if not sys.platform.startswith("linux") or environ.get(SWITCH) in ("system", "mimalloc"):
        return None
    if not argv or argv[0] not in COMMANDS or loaded():
        return None
    env = environment(environ, fast=True)
    if env[SWITCH] != "mimalloc":
        return None
    return [sys.executable, "-m", "heed", *argv], env


def maybe_reexec(argv: list[str]) -> None:
    """Replace this process with ``heed argv`` under mimalloc when that applies (never returns then)."""
    command = reexec_command(argv, os.environ)
    if command is not None:
        args, env = command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(args[0], args, env)
