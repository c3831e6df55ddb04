"""How a setting is made: ``opt`` (a dataclass field with its default, help and range), the range checks,
``check_fields`` (one line per problem, named by the flag), and reading settings from dictionaries, YAML or
JSON files and ``KEY=VALUE`` overrides. The stages' dataclasses that use it are in ``heed.config``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass, replace
from typing import Any, Callable

from heed.errors import HeedError

Check = tuple[Callable[[Any], bool], str]  # (holds, what the value must be)
Choices = tuple[str, ...] | Callable[[], tuple[str, ...]]  # a callable when the names live in a later stage


def opt(default: Any, help: str, *, flag: str | None = None, choices: Choices | None = None,
        check: Check | None = None, metavar: str | None = None, cli: bool = True, off: Any = None) -> Any:
    """A configuration field: its default, one line of help, and what the CLI and ``validate`` need.

    ``flag`` names the CLI flag when it is not ``--field-name`` (``--no-shuffle`` for a field that
    defaults to True); ``choices`` the legal values (a function returning them when they are known only
    later, e.g. the template registry: then ``validate`` checks them, with the other problems, and argparse
    does not); ``check`` is a range rule; ``cli=False`` keeps a field out of the flags; ``off`` is the flag
    value that means None (``--clip 0``).

    The flag's help ends with ``(default: VALUE)`` (``shown_default``), so ``help`` says what the setting
    does and never repeats its default; ``help`` of a field whose default is None may say what None means.
    """
    if shown_default(default) is not None and "(default" in help:
        raise ValueError(f"help {help!r}: the flag's help adds '(default: {shown_default(default)})' already; "
                         "say what the setting does")
    meta = {"help": help, "flag": flag, "choices": choices, "check": check, "metavar": metavar, "cli": cli,
            "off": off}
    return field(default=default, metadata=meta)


def shown_default(default: Any) -> str | None:
    """The default a flag's help states, or None where it states none (unset, and on/off switches)."""
    if default is None or isinstance(default, bool):
        return None
    return str(default)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def at_least(n: int) -> Check:
    return (lambda v: v >= n, f"at least {n}")


POSITIVE: Check = (lambda v: v > 0, "a positive number")
NON_NEGATIVE: Check = (lambda v: v >= 0, "zero or more")
SHARE: Check = (lambda v: 0 <= v <= 1, "between 0 and 1")
DROPOUT: Check = (lambda v: 0 <= v < 1, "at least 0 and below 1")
NON_EMPTY: Check = (lambda v: bool(str(v).strip()), "a non-empty path")


# --- checking fields -------------------------------------------------------------------------------


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_type(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """(the field's base type, whether None is allowed), from its annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        lists = [k for k in kinds if typing.get_origin(k) is list]
        hint = lists[0] if lists else kinds[0]
    return (typing.get_origin(hint) or hint), optional


def check_fields(cfg: Any) -> list[str]:
    """Type, finiteness, choices and range of every field, one line per problem, named by its flag."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind, optional = field_type(type(cfg), f)
        name = flag_name(f)
        if value is None:
            if not optional:
                problems.append(f"{name} must be set")
            continue
        if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                     or (kind is int and not isinstance(value, int))):
            problems.append(f"{name} must be {'an integer' if kind is int else 'a number'} (got {value!r})")
            continue
        if kind is float and not math.isfinite(value):
            problems.append(f"{name} must be a finite number (got {value})")
            continue
        if kind is bool and not isinstance(value, bool):
            problems.append(f"{name} must be true or false (got {value!r})")
            continue
        if kind is list and not (isinstance(value, str) or isinstance(value, list)
                                 and all(isinstance(v, str) for v in value)):
            problems.append(f"{name} must be a list of names (got {value!r})")
            continue
        if kind is str and not isinstance(value, str):
            problems.append(f"{name} must be a string (got {value!r})")
            continue
        choices = choices_of(f)
        if choices and value not in choices:
            problems.append(f"{name} {value}: choose {', '.join(choices[:-1])} or {choices[-1]}")
        check = f.metadata.get("check")
        if check and not check[0](value):
            problems.append(f"{name} must be {check[1]} (got {value})")
    return problems


def validate(*cfgs: Any) -> None:
    """Raise one HeedError listing every problem of ``cfgs`` (configs with a ``validate`` method)."""
    problems = [problem for cfg in cfgs for problem in cfg.validate()]
    if problems:
        raise HeedError(*problems)


# --- building from dictionaries, files and KEY=VALUE overrides ----------------------------------------


def from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """A config of ``cls`` from a (nested) dictionary; unknown keys are refused, naming the source."""
    if not isinstance(values, dict):
        raise HeedError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise HeedError(f"{source}: unknown setting {', '.join(map(repr, unknown))} for {cls.__name__}; "
                        f"known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        kind, _ = field_type(cls, known[name])
        if is_dataclass(kind) and value is not None:
            value = from_dict(kind, value, f"{source}: {name}")
        elif kind in (int, float) and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                value = kind(value)
            except ValueError:
                pass  # validate() names it
        elif kind is list and isinstance(value, tuple):
            value = list(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_file(path: str) -> dict[str, Any]:
    """A run configuration file: YAML or JSON (a heed.json's ``config`` section is taken as is)."""
    from pathlib import Path

    from heed.io import read_text

    text = read_text(path, what="--config")
    if path.endswith(".json"):
        from heed.io import parse_json

        values = parse_json(text, path)
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise HeedError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if Path(path).name == "heed.json" and isinstance(values, dict) and "config" in values:
        values = values["config"]
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise HeedError(f"{path}: expected a mapping of settings (data:, train:, ...), got {type(values).__name__}")
    return values


def parse_value(text: str, kind: type, name: str) -> Any:
    """A command-line value for a field of type ``kind`` (``none`` for unset optional fields)."""
    if text.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise HeedError(f"{name}={text}: expected {what}") from None
    if kind is list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        return items
    return text


def apply_override(cfg: Any, assignment: str) -> Any:
    """``cfg`` with one ``dotted.name=value`` applied (a new object; ``cfg`` is left as it was)."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise HeedError(f"{assignment!r}: overrides are written KEY=VALUE, e.g. train.lr=1e-4")
    path = key.strip().split(".")
    return _override(cfg, path, text, key)


def _override(cfg: Any, path: list[str], text: str, key: str) -> Any:
    known = {f.name: f for f in fields(cfg)}
    name = path[0]
    if name not in known:
        raise HeedError(f"{key}: unknown setting {name!r}; known: {', '.join(known)}")
    kind, _ = field_type(type(cfg), known[name])
    if is_dataclass(kind):
        if len(path) == 1:
            raise HeedError(f"{key}: a section; set one of its fields, e.g. {key}.{fields(kind)[0].name}=...")
        inner = getattr(cfg, name) or kind()
        return replace(cfg, **{name: _override(inner, path[1:], text, key)})
    if len(path) > 1:
        raise HeedError(f"{key}: {name!r} has no fields")
    value = parse_value(text, kind, key)
    if name == "target_modules" and value == ["all-linear"]:
        value = "all-linear"
    return replace(cfg, **{name: value})


def defaults_of(cls: type) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out
