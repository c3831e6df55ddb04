"""Stage 1 of the flow: read instruction records from JSON or JSON Lines, validate them, split them.

Records are numbered from 0 in file order (``record 17`` is ``data[17]``); JSON Lines problems also
name the line. Every problem in a file is collected before one ``HeedError`` lists them all; a file
that is not JSON at all, or a column name that is wrong in every record, is said once, not per line.
"""

from __future__ import annotations

import itertools
import json
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heed.data.conversations import FORMATS, SHAPES, detect_format, validate_turns
from heed.errors import HeedError
from heed.io import invalid_json

OUTPUT_ALIASES = ("response",)
LISTED = 10  # problems shown one per line; beyond that they are counted
# Column names people use for each field, to suggest a --fields mapping.
SYNONYMS = {
    "instruction": ("prompt", "question", "query", "instructions", "request", "human", "user", "text"),
    "input": ("context", "inputs"),
    "output": ("answer", "completion", "response", "target", "reply", "assistant", "gpt", "solution"),
}


@dataclass(frozen=True)
class FieldMap:
    """Which keys of a raw record hold the instruction, the optional input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def parse(cls, spec: str | None) -> FieldMap:
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
    # A conversation record's turns, ``[(role, content)]`` with roles system/user/assistant; None for an
    # instruction record. ``instruction`` is then its first user turn and ``output`` its last assistant turn.
    turns: list[tuple[str, str]] | None = None
    system: str | None = None  # --system for an instruction record (a conversation carries its own)

    @property
    def task(self) -> str | None:
        task = self.raw.get("task")
        return task if isinstance(task, str) else None


@dataclass(frozen=True)
class Problem:
    """One problem of one record; ``missing`` names the field when the problem is a missing field."""

    index: int
    line: int | None
    text: str
    missing: str | None = None
    column: int | None = None

    def where(self, path: Path) -> str:
        if self.line is None:
            return f"{path}: record {self.index}"
        return f"{path}: record {self.index} (line {self.line}" + (f", column {self.column})" if self.column else ")")


# ---------------------------------------------------------------------------------------------------
# Reading: a regular UTF-8 file, recognised as a JSON array, one JSON object, or JSON Lines.


def _read_text(path: Path) -> str:
    """The file's text. Refuses what is not a readable regular file (a FIFO or /dev/zero never ends)."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise HeedError(f"{path}: is a directory, expected a JSON or JSON Lines file")
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                                                 (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")) if test(mode)),
                        "not a file")
            raise HeedError(f"{path}: not a regular file ({kind}); save the records to a file and pass that")
        data = path.read_bytes()
    except FileNotFoundError:
        raise HeedError(f"{path}: no such file") from None
    except OSError as e:  # permission denied, a symlink loop, an I/O error
        raise HeedError(f"{path}: cannot read it: {e.strerror or e}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise HeedError(f"{path}: UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise HeedError(f"{path}: not UTF-8 text (byte {e.start})") from None


class _Unreadable(Exception):
    """Valid JSON syntax that Python's reader still refuses; ``line`` is where, when it can be found."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _loads(text: str) -> Any:
    """``json.loads`` whose non-syntax failures (nesting depth, giant integers) raise ``_Unreadable``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _Unreadable("invalid JSON: nested deeper than Python's JSON reader allows") from None
    except ValueError as e:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        limit = sys.get_int_max_str_digits()
        match = re.search(r"\d{%d,}" % (limit + 1), text)
        if not match:
            raise _Unreadable(f"invalid JSON: {e}") from None
        raise _Unreadable(f"a number with {len(match.group())} digits, more than Python reads ({limit}); "
                          "write it as a string", text.count("\n", 0, match.start()) + 1) from None


def _parse_file(path: Path, fields: FieldMap) -> tuple[list[tuple[int, Any, int | None]], list[Problem]]:
    """Return ``[(record_index, value, line_or_None)]`` and the per-line syntax problems (JSON Lines)."""
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise HeedError(f"{path}: the file is empty; expected a JSON array of records or JSON Lines")
    lines = text.splitlines() if stripped[0] == "{" else []
    if lines and _is_json_lines(lines):
        whole = _parse_document(path, text, quiet=True)
        if isinstance(whole, dict):  # one object on one line: JSON Lines with one record
            first = next(i for i, line in enumerate(lines, start=1) if line.strip())
            return _single_object(path, whole, fields, first), []
        return _parse_lines(path, lines)
    whole = _parse_document(path, text)
    if isinstance(whole, list):
        return [(i, v, None) for i, v in enumerate(whole)], []
    if isinstance(whole, dict):
        return _single_object(path, whole, fields, None), []
    raise HeedError(f"{path}: holds a single JSON {type(whole).__name__}; "
                    "expected a JSON array of records or JSON Lines")


def _is_json_lines(lines: list[str]) -> bool:
    """JSON Lines when one of the first lines holds a whole object (a pretty-printed object's lines do not)."""
    for line in itertools.islice((line for line in lines if line.strip()), 5):
        try:
            if isinstance(_loads(line), dict):
                return True
        except (ValueError, _Unreadable):
            pass
    return False


def _parse_document(path: Path, text: str, *, quiet: bool = False) -> Any:
    """The whole file as one JSON value; a failure is one line (``quiet``: None instead)."""
    try:
        return _loads(text)
    except json.JSONDecodeError as e:
        if quiet:
            return None
        stripped = text.lstrip()
        if stripped[0] not in "[{":
            raise HeedError(_not_json(path, stripped)) from None
        if e.msg == "Extra data":
            raise HeedError(f"{path}: line {e.lineno}: a second JSON value follows the first; heed reads one JSON "
                            "array of records, or JSON Lines (one record object per line)") from None
        raise HeedError(invalid_json(path, e)) from None
    except _Unreadable as e:
        if quiet:
            return None
        raise HeedError(f"{path}: " + (f"line {e.line}: " if e.line else "") + str(e)) from None


def _not_json(path: Path, stripped: str) -> str:
    """One line for a file that is not JSON at all, saying what it looks like."""
    first = stripped.splitlines()[0]
    kinds = ((first.startswith("<"), "XML or HTML"), ("\t" in first, "tab-separated values"), ("," in first, "CSV"),
             (first.startswith(("---", "- ")) or re.match(r"[\w-]+:(\s|$)", first), "YAML"))
    kind = next((f"looks like {name}" for hit, name in kinds if hit), f"it starts with {first[:30]!r}")
    return (f"{path}: not JSON or JSON Lines ({kind}); heed reads a JSON array of records, or JSON Lines "
            "(one record object per line)")


def _single_object(path: Path, whole: dict, fields: FieldMap, line: int | None) -> list[tuple[int, Any, int | None]]:
    """A file holding one object is one record, unless the object wraps the records (``{"data": [...]}``)."""
    if fields.instruction not in whole and detect_format(whole) == "alpaca":
        lists = [k for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if lists:
            raise HeedError(f"{path}: expected a JSON array of records or JSON Lines, found an object "
                            f"whose key '{lists[0]}' holds a list; save that list as the file's top level")
    return [(0, whole, line)]


def _parse_lines(path: Path, lines: list[str]) -> tuple[list[tuple[int, Any, int | None]], list[Problem]]:
    items: list[tuple[int, Any, int | None]] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index = len(items) + len(problems)
        try:
            items.append((index, _loads(line), lineno))
        except json.JSONDecodeError as e:
            problems.append(Problem(index, lineno, f"invalid JSON: {e.msg}", column=e.colno))
        except _Unreadable as e:
            problems.append(Problem(index, lineno, str(e)))
    return items, problems


# ---------------------------------------------------------------------------------------------------
# Validation.


def load_records(
    path: str | Path, fields: FieldMap = FieldMap(), *, require_output: bool = True, skip_invalid: bool = False,
    format: str = "auto",
) -> list[Record]:
    """Load and validate every record of ``path``; raise one ``HeedError`` listing all problems.

    ``skip_invalid`` drops the invalid records instead, saying in one line how many and which.
    ``format``: ``alpaca`` (instruction/input/output), ``messages`` or ``sharegpt`` conversations
    (``heed.data.conversations``), or ``auto``: the shape of the file's first record.

    >>> # data.json: [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}]
    >>> # load_records("data.json")[0]  ->  Record(index=0, instruction='Add 2 and 3.', input='', output='5')
    """
    path = Path(path)
    items, problems = _parse_file(path, fields)
    return check_records(path, items, problems, fields, require_output=require_output, skip_invalid=skip_invalid,
                         format=format)


def check_records(
    path: Path | str, items: list[tuple[int, Any, int | None]], problems: list[Problem], fields: FieldMap = FieldMap(),
    *, require_output: bool = True, skip_invalid: bool = False, format: str = "auto",
) -> list[Record]:
    """Validate parsed ``[(index, value, line)]`` (from a file, a list of dicts, a dataset) as ``load_records`` does."""
    path = Path(path)
    if format not in FORMATS:
        raise HeedError(f"unknown data format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(next((v for _, v, _ in items if isinstance(v, dict)), None))
    total = len(items) + len(problems)  # lines that are not JSON are records too
    records: list[Record] = []
    for index, value, line in items:
        if format == "alpaca":
            record, found = _validate(value, index, fields, require_output)
        else:
            record, found = _validate_conversation(value, index, format, require_output)
        problems.extend(Problem(index, line, text, missing) for text, missing in found)
        if record is not None:
            records.append(record)
    if problems and not skip_invalid:
        raise HeedError(*_describe(path, problems, [v for _, v, _ in items], fields, total))
    if problems:
        bad = sorted({p.index for p in problems})
        shown = ", ".join(map(str, bad[:20])) + (", …" if len(bad) > 20 else "")
        print(f"heed: warning: {path}: skipped {len(bad)} invalid record{'s' if len(bad) > 1 else ''} "
              f"({shown}); run without --skip-invalid to see why", file=sys.stderr)
    if not records:
        raise HeedError(f"{path}: contains no records" + (" that are valid" if problems else ""))
    return records


def _describe(path: Path, problems: list[Problem], values: list[Any], fields: FieldMap, total: int) -> list[str]:
    """One line per problem when few records are bad; otherwise missing fields counted once per field
    (with the keys that were found and a ``--fields`` hint) and the other problems listed up to ``LISTED``."""
    if len({p.index for p in problems}) <= LISTED:
        return [f"{p.where(path)}: {p.text}" for p in problems]
    lines = []
    missing = Counter(p.missing for p in problems if p.missing)
    for name, count in missing.items():
        which = [p.index for p in problems if p.missing == name]
        lines.append(f"{path}: '{name}' is missing in " + (f"all {total} records" if count == total else
                     f"{count} of {total} records ({', '.join(map(str, which[:5]))}{', …' if count > 5 else ''})"))
    if missing:
        lines.append(_keys_hint(path, values, fields, list(missing)))
    rest = [p for p in problems if not p.missing]
    lines.extend(f"{p.where(path)}: {p.text}" for p in rest[:LISTED])
    if len(rest) > LISTED:
        more = rest[LISTED:]
        lines.append(f"{path}: ... and {len(more)} more problems in {len({p.index for p in more})} more records")
    return lines


def _keys_hint(path: Path, values: list[Any], fields: FieldMap, missing: list[str]) -> str:
    keys = Counter(k for v in values if isinstance(v, dict) for k in v)
    found = ", ".join(k for k, _ in keys.most_common(10)) + (", …" if len(keys) > 10 else "")
    if any(key in ("messages", "conversations") for key in missing):
        return (f"{path}: keys found: {found or 'none'}; conversations are read from 'messages' (--format messages) "
                "or 'conversations' (--format sharegpt); --format alpaca reads instruction records")
    names = {getattr(fields, name): name for name in ("instruction", "input", "output")}
    guesses: dict[str, str | None] = {}
    for key in missing:
        name = names.get(key, key)
        taken = set(names) | set(guesses.values())
        guesses[name] = next((k for k in SYNONYMS.get(name, ()) if k in keys and k not in taken), None)
    if guesses and all(guesses.values()):
        hint = "map them with --fields " + ",".join(f"{name}={k}" for name, k in guesses.items())
    else:
        hint = "name them with --fields " + ",".join(f"{name}=KEY" for name in guesses)
    return f"{path}: keys found: {found or 'none'}; {hint}"


def _validate(
    value: Any, index: int, fields: FieldMap, require_output: bool
) -> tuple[Record | None, list[tuple[str, str | None]]]:
    """The record, or None and its problems as ``(text, missing_field_or_None)``."""
    if not isinstance(value, dict):
        return None, [(f"not an object (found {type(value).__name__}); each record must be a JSON object", None)]
    expected = f"expected keys: {fields.instruction}, {fields.input} (optional), {fields.output}"
    problems: list[tuple[str, str | None]] = []

    instruction = value.get(fields.instruction)
    if fields.instruction not in value:
        problems.append((f"'{fields.instruction}' is missing ({expected})", fields.instruction))
    elif not isinstance(instruction, str):
        problems.append((f"'{fields.instruction}' must be a string, found {type(instruction).__name__}", None))
    elif not instruction.strip():
        problems.append((f"'{fields.instruction}' is empty", None))

    input_text = value.get(fields.input, "")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        problems.append((f"'{fields.input}' must be a string, found {type(input_text).__name__}", None))

    output_key = fields.output
    if output_key not in value and fields.output == "output":
        output_key = next((a for a in OUTPUT_ALIASES if a in value), output_key)
    output = value.get(output_key)
    if output_key not in value:
        if require_output:
            problems.append((f"'{fields.output}' is missing ({expected})", fields.output))
    elif not isinstance(output, str):
        problems.append((f"'{output_key}' must be a string, found {type(output).__name__}", None))
    elif require_output and not output.strip():
        problems.append((f"'{output_key}' is empty", None))

    problems.extend((p, None) for p in _surrogates(value))
    if problems:
        return None, problems
    return Record(index, instruction, input_text, output, dict(value)), []


def _validate_conversation(
    value: Any, index: int, format: str, require_output: bool
) -> tuple[Record | None, list[tuple[str, str | None]]]:
    turns, found = validate_turns(value, format, require_output=require_output)
    key = SHAPES[format][0]
    problems = [(text, key if text.startswith(f"'{key}' is missing") else None) for text in found]
    if turns is None:
        return None, problems
    problems.extend((p, None) for p in _surrogates(value))
    if problems:
        return None, problems
    users = [c for r, c in turns if r == "user"]
    replies = [c for r, c in turns if r == "assistant"]
    output = replies[-1] if replies and turns[-1][0] == "assistant" else None
    return Record(index, users[0], "", output, dict(value), turns=turns), []


def _surrogates(value: dict[str, Any]) -> list[str]:
    """Lone surrogates (JSON escapes such as ``\\ud800`` that are not text): no tokenizer or writer takes them."""
    problems = []
    for key, top in value.items():
        stack = [top, key]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as e:
                    problems.append(f"'{key}' holds a lone surrogate \\u{ord(item[e.start]):04x} (character "
                                    f"{e.start}), which is not text; fix or remove that escape")
                    break
    return problems


# The split lived here first; importers of heed.data.records keep finding it.
from heed.data.split import Split, split_records  # noqa: E402,F401
