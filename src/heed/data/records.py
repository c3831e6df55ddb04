"""Stage 1 of the flow: read instruction records from JSON or JSON Lines, validate them, split them.

Records are numbered from 0 in file order (``record 17`` is ``data[17]``); JSON Lines problems also
name the line. Every problem in a file is collected before one ``HeedError`` lists them all.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heed.errors import HeedError

OUTPUT_ALIASES = ("response",)


@dataclass(frozen=True)
class FieldMap:
    """Which keys of a raw record hold the instruction, the optional input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def parse(cls, spec: str | None) -> "FieldMap":
        """Parse ``"instruction=prompt,output=completion"`` (unnamed fields keep their defaults)."""
        if not spec:
            return cls()
        values: dict[str, str] = {}
        for part in spec.split(","):
            name, sep, key = part.partition("=")
            name, key = name.strip(), key.strip()
            if not sep or name not in ("instruction", "input", "output") or not key:
                raise HeedError(
                    f"--fields: cannot read {part!r}; write e.g. 'instruction=prompt,input=context,output=answer'"
                )
            values[name] = key
        return cls(**values)


@dataclass
class Record:
    """One validated instruction record. ``raw`` is the record as it was in the file."""

    index: int
    instruction: str
    input: str
    output: str | None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        task = self.raw.get("task")
        return task if isinstance(task, str) else None


def _parse_file(path: Path) -> tuple[list[tuple[int, Any, int | None]], list[str]]:
    """Return ``[(record_index, value, line_or_None)]`` and the JSON syntax problems found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HeedError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise HeedError(f"{path}: is a directory, expected a JSON or JSON Lines file") from None
    except UnicodeDecodeError as e:
        raise HeedError(f"{path}: not UTF-8 text (byte {e.start})") from None
    stripped = text.lstrip()
    if not stripped:
        raise HeedError(f"{path}: the file is empty; expected a JSON array of records or JSON Lines")
    if stripped[0] == "[":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise HeedError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
        return [(i, v, None) for i, v in enumerate(values)], []
    _reject_wrapped_array(path, text)
    items: list[tuple[int, Any, int | None]] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        index = len(items) + len(problems)
        try:
            items.append((index, json.loads(line), lineno))
        except json.JSONDecodeError as e:
            problems.append(
                f"{path}: record {index} (line {lineno}, column {e.colno}): invalid JSON: {e.msg}"
            )
    return items, problems


def _reject_wrapped_array(path: Path, text: str) -> None:
    """A whole-file object holding a list of records (``{"data": [...]}``) is a common near miss."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict):
        lists = [k for k, v in whole.items() if isinstance(v, list)]
        if lists:
            raise HeedError(f"{path}: expected a JSON array of records or JSON Lines, found an object "
                            f"whose key '{lists[0]}' holds a list; save that list as the file's top level")


def load_records(
    path: str | Path, fields: FieldMap = FieldMap(), *, require_output: bool = True
) -> list[Record]:
    """Load and validate every record of ``path``; raise one ``HeedError`` listing all problems.

    >>> # data.json: [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}]
    >>> # load_records("data.json")[0]  ->  Record(index=0, instruction='Add 2 and 3.', input='', output='5')
    """
    path = Path(path)
    items, problems = _parse_file(path)
    records: list[Record] = []
    for index, value, line in items:
        where = f"{path}: record {index}" + (f" (line {line})" if line is not None else "")
        record, record_problems = _validate(value, index, fields, require_output)
        problems.extend(f"{where}: {p}" for p in record_problems)
        if record is not None:
            records.append(record)
    if problems:
        raise HeedError(*problems)
    if not records:
        raise HeedError(f"{path}: contains no records")
    return records


def _validate(
    value: Any, index: int, fields: FieldMap, require_output: bool
) -> tuple[Record | None, list[str]]:
    if not isinstance(value, dict):
        return None, [f"not an object (found {type(value).__name__}); each record must be a JSON object"]
    expected = f"expected keys: {fields.instruction}, {fields.input} (optional), {fields.output}"
    problems = []

    instruction = value.get(fields.instruction)
    if fields.instruction not in value:
        problems.append(f"'{fields.instruction}' is missing ({expected})")
    elif not isinstance(instruction, str):
        problems.append(f"'{fields.instruction}' must be a string, found {type(instruction).__name__}")
    elif not instruction.strip():
        problems.append(f"'{fields.instruction}' is empty")

    input_text = value.get(fields.input, "")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        problems.append(f"'{fields.input}' must be a string, found {type(input_text).__name__}")

    output_key = fields.output
    if output_key not in value and fields.output == "output":
        output_key = next((a for a in OUTPUT_ALIASES if a in value), output_key)
    output = value.get(output_key)
    if output_key not in value:
        if require_output:
            problems.append(f"'{fields.output}' is missing ({expected})")
    elif not isinstance(output, str):
        problems.append(f"'{output_key}' must be a string, found {type(output).__name__}")
    elif require_output and not output.strip():
        problems.append(f"'{output_key}' is empty")

    if problems:
        return None, problems
    return Record(index, instruction, input_text, output, dict(value)), []


@dataclass
class Split:
    train: list[Record]
    test: list[Record]
    val: list[Record]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), "val": len(self.val)}


def split_records(
    records: list[Record],
    *,
    train_frac: float = 0.85,
    test_frac: float = 0.10,
    shuffle: bool = False,
    seed: int = 123,
    test: list[Record] | None = None,
    val: list[Record] | None = None,
) -> Split:
    """Slice records as the original design does: first 85% train, next 10% test, the rest val.

    On 1,100 records this gives 935 / 110 / 55. A set given explicitly (``test=``/``val=``, from
    ``--test-file``/``--val-file``) is not cut from ``records``; its share goes to training.
    """
    if not 0 < train_frac <= 1 or not 0 <= test_frac < 1 or train_frac + test_frac > 1 + 1e-9:
        raise HeedError(f"split fractions must satisfy 0 < train <= 1, 0 <= test, train + test <= 1 "
                        f"(got train={train_frac}, test={test_frac})")
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n = len(records)
    val_frac = 1.0 - train_frac - test_frac
    own_test = 0.0 if test is not None else test_frac
    own_val = 0.0 if val is not None else val_frac
    n_test = int(n * own_test)
    n_val = int(n * own_val) if own_val > 0 else 0
    if test is None and val is None:
        # Exactly the original slicing: train and test by int(), validation takes the remainder.
        n_train = int(n * train_frac)
        n_test = int(n * test_frac)
        return Split(records[:n_train], records[n_train:n_train + n_test], records[n_train + n_test:])
    n_train = n - n_test - n_val
    return Split(
        records[:n_train],
        test if test is not None else records[n_train:n_train + n_test],
        val if val is not None else records[n_train + n_test:],
    )
