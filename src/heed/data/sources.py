"""Stage 1, where records come from: a JSON or JSON Lines file (``heed.data.records``), a list of dicts,
or a Hugging Face dataset: a Parquet, CSV or Arrow file, a directory written by ``save_to_disk``, or a
hub dataset name read from the local cache (never downloaded). Every source is validated by the same
rules, with the same one-line problems, the source's name standing where a file's path would.

Datasets need the optional ``datasets`` package (``pip install 'heed[datasets]'``). Files are streamed
row by row (Parquet, CSV) or memory-mapped (Arrow), so each row becomes a Python object once.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from heed.data.records import FieldMap, Record, check_records, load_records
from heed.errors import HeedError

TABULAR = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def read_records(
    source: Any, fields: FieldMap = FieldMap(), *, format: str = "auto", require_output: bool = True,
    skip_invalid: bool = False, split: str = "train", config: str | None = None,
) -> list[Record]:
    """Records from any source heed reads, validated (see the module docstring).

    >>> read_records([{"instruction": "Add 2 and 3.", "output": "5"}])[0].output
    '5'
    """
    check = dict(fields=fields, require_output=require_output, skip_invalid=skip_invalid, format=format)
    if isinstance(source, (list, tuple)):
        return _from_rows("records", source, **check)
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):  # a datasets.Dataset (or IterableDataset)
        return _from_rows(f"dataset {getattr(source, 'info', None) and source.info.dataset_name or 'in memory'}",
                          source, **check)
    if not isinstance(source, (str, Path)):
        raise HeedError(f"cannot read records from a {type(source).__name__}; pass a file path, a list of dicts "
                        "or a datasets.Dataset")
    path = Path(source).expanduser()
    if path.suffix.lower() in TABULAR:
        return _from_rows(str(source), _open_file(path), **check)
    if path.is_dir() and _is_saved_dataset(path):
        return _from_rows(str(source), _open_saved(path, split), **check)
    if not path.exists() and HUB_NAME.match(str(source)) and not path.suffix:
        return _from_rows(str(source), _open_hub(str(source), split, config), **check)
    return load_records(path, fields, require_output=require_output, skip_invalid=skip_invalid, format=format)


def _from_rows(name: str, rows: Iterable[Any], **check: Any) -> list[Record]:
    return check_records(name, [(i, row, None) for i, row in enumerate(rows)], [], **check)


def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise HeedError(f"{what}: reading it needs the datasets package; install it with "
                        "pip install 'heed[datasets]'") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _open_file(path: Path) -> Iterable[Any]:
    datasets = _datasets(str(path))
    if not path.is_file():
        raise HeedError(f"{path}: no such file")
    kind = TABULAR[path.suffix.lower()]
    try:
        if kind == "arrow":
            return datasets.Dataset.from_file(str(path))  # memory-mapped, read in place
        return datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True,
                                     **(_csv_as_text(path) if kind == "csv" else {}))
    except Exception as e:  # a corrupt or mislabelled file: the reader's first line says why
        raise HeedError(f"{path}: cannot read it as {kind}: {_first_line(e)}") from None


def _csv_as_text(path: Path) -> dict[str, Any]:
    """The CSV reader's options that keep every cell the text it is: pandas would make a column of numbers
    ints (``'output' must be a string, found int``), drop leading zeros, and read empty cells and words
    such as ``NA``, ``N/A`` or ``null`` as missing. A converter per column (by position, as the header
    counts them) keeps each cell a string; an empty cell is ``""``."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        columns = len(next(csv.reader(f), []))
    return {"converters": {i: str for i in range(columns)}, "keep_default_na": False}


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``save_to_disk`` (others are refused by ``load_records``, as any directory is)."""
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _open_saved(path: Path, split: str) -> Iterable[Any]:
    datasets = _datasets(str(path))
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as e:
        raise HeedError(f"{path}: cannot read the saved dataset: {_first_line(e)}") from None
    return _pick_split(str(path), saved, split)


def _open_hub(name: str, split: str, config: str | None) -> Iterable[Any]:
    """A hub dataset from the local Hugging Face cache only; a dataset not cached is one line saying how to get it."""
    datasets = _datasets(name)  # imported first: _offline() switches the flags it read on import
    hint = (f"--data {name}: not a file, and not found in the local Hugging Face datasets cache; on a machine "
            f"with internet run `python -c \"import datasets; datasets.load_dataset('{name}')\"` (or "
            f"`hf download {name} --repo-type dataset --local-dir DIR` and pass --data DIR/FILE)")
    try:
        with _offline(datasets):
            loaded = datasets.load_dataset(name, config)
    except ValueError as e:  # a missing or wrong configuration name
        if "config" not in str(e).lower():
            raise HeedError(hint) from None
        raise HeedError(f"--data {name}: {_first_line(e)} (choose one with --data-config)") from None
    except Exception:  # not cached: ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        raise HeedError(hint) from None
    return _pick_split(name, loaded, split)


OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Hub lookups answered from the local cache only, for the duration of the block; everything is set back
    after. ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE once, on import, into module constants
    that they consult on every request; setting the variable later changes nothing (heed then tried the
    network, with retries, for half a minute). So the constants are switched, and the variables too, for
    anything that reads them later (a worker process)."""
    from huggingface_hub import constants as hub

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (hub, "HF_HUB_OFFLINE")]
    flags = [(module, key) for module, key in flags if hasattr(module, key)]
    saved_flags = [getattr(module, key) for module, key in flags]
    saved_env = {key: os.environ.get(key) for key in OFFLINE_ENV}
    for module, key in flags:
        setattr(module, key, True)
    os.environ.update({key: "1" for key in OFFLINE_ENV})
    try:
        yield
    finally:
        for (module, key), value in zip(flags, saved_flags):
            setattr(module, key, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pick_split(name: str, loaded: Any, split: str) -> Iterable[Any]:
    if not hasattr(loaded, "keys"):  # one Dataset
        return loaded
    if split not in loaded:
        raise HeedError(f"{name}: has no split {split!r}; choose one with --split ({', '.join(loaded.keys())})")
    return loaded[split]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
