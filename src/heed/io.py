"""Atomic file output: everything heed writes appears whole or not at all, with the permissions that the
umask gives any other new file (tempfile's own 0600/0700 would make a model unreadable to a group)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from heed.errors import HeedError


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status, 4.7+); else
    set to 0o077 and put back at once, so that a file another thread creates meanwhile is only stricter."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def as_if_new(root: Path) -> None:
    """Give ``root`` and everything in it the modes that new files and directories get under the umask
    (0o666 and 0o777 less the umask): for what was staged through tempfile or written by a library that
    stages its own files at 0600 (safetensors does)."""
    mask = umask()
    for item in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def move_into(staging: Path, out: Path) -> None:
    """Move each entry of ``staging`` onto its name in ``out`` (one rename each), with ``as_if_new``'s modes."""
    for item in staging.iterdir():
        as_if_new(item)
        os.replace(item, out / item.name)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the directory a new file's parents are made in)."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path(".")


def check_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work, a path that one output file cannot be written to: empty, a directory,
    under a file, or in a directory this process cannot write to. ``what`` names the flag. Missing
    parent directories are fine (``atomic_path`` makes them); nothing is created here."""
    text = os.fspath(path)
    if not text.strip():
        raise HeedError(f"{what} is empty; give a file path, e.g. {what} out.json")
    if text.endswith(("/", os.sep)):
        raise HeedError(f"{what} {text}: ends in '/', so it names a directory; give a file path in it")
    out = Path(text).expanduser()
    if out.is_dir():
        raise HeedError(f"{what} {text}: a directory, not a file; give a file path in it")
    if out.exists() and not out.is_file():
        raise HeedError(f"{what} {text}: not a regular file; give another path")
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise HeedError(f"{what} {text}: {base} is a file, not a directory; give another path")
    if base == out.parent:  # try it: os.access is fooled by root, read-only mounts and ACLs
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise HeedError(f"{what} {text}: cannot write in {base} ({e.strerror or type(e).__name__}); "
                            "choose a writable directory") from None
    elif not os.access(base, os.W_OK | os.X_OK):
        raise HeedError(f"{what} {text}: cannot create its directory in {base} (permission denied); "
                        "choose a writable directory")
    return out


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Commands check their output paths first (``check_out_file``); a path that still cannot be made or
    replaced here (``what`` names its flag) is one line, not a traceback."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise HeedError(f"{where}: cannot write it ({e.strerror or type(e).__name__}); choose another path") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            tmp_path.chmod(0o666 & ~umask())  # mkstemp's 0600 was for the staging only
            os.replace(tmp_path, path)
        except OSError as e:
            kind = "a directory" if path.is_dir() else (e.strerror or type(e).__name__)
            raise HeedError(f"{where}: cannot write it ({kind}); choose another path") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str, what: str = "") -> None:
    with atomic_path(path, what) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as e:  # a full disk, a quota
            raise HeedError(f"{f'{what} ' if what else ''}{path}: cannot write it "
                            f"({e.strerror or type(e).__name__}); free some space or choose another path") from None


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, what: str = "") -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", what)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path`` and swap it into place on success.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        as_if_new(tmp)  # mkdtemp's 0700 was for the staging only
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A temporary directory in ``parent`` (named ``.<prefix>.*``), removed when the block ends."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_into(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch directory in ``path``; on success move each file written there into ``path``, so
    a reader never sees half a file (each arrives by rename) and other files in ``path`` stay."""
    with scratch_dir(path, "staging") as tmp:
        yield tmp
        move_into(tmp, Path(path))


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """A UTF-8 text file's contents; an unreadable path is one line naming it (``what`` is the flag)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HeedError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise HeedError(f"{what} {path}: a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise HeedError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise HeedError(f"{what} {path}: cannot read it ({e.strerror or type(e).__name__})") from None


def invalid_json(source: str | os.PathLike, error: json.JSONDecodeError) -> str:
    """The one line for a JSON syntax error, wherever heed reads JSON:
    ``data.json: line 3, column 23: invalid JSON: Expecting ',' delimiter``."""
    return f"{source}: line {error.lineno}, column {error.colno}: invalid JSON: {error.msg}"


def parse_json(text: str, source: str | os.PathLike) -> Any:
    """One JSON document; a syntax error is one line with its line and column (``invalid_json``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HeedError(invalid_json(source, e)) from None
    except (ValueError, RecursionError) as e:  # nesting too deep, integers too long
        raise HeedError(f"{source}: invalid JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    return parse_json(read_text(path, what=what), path)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
