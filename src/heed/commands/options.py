"""Command-line flags generated from the configuration dataclasses, and configs built back from them.

Each field's flag, default, help and choices come from its definition in ``heed.config``; nothing is
typed twice. Generated flags default to "not given" (``argparse.SUPPRESS``), so a value from
``--config FILE`` is overridden only by a flag that is actually on the command line; ``KEY=VALUE``
arguments (``train.lr=1e-4``) come last.
"""

from __future__ import annotations

import argparse
from dataclasses import fields, is_dataclass, replace
from typing import Any

from heed.config import choices_of, field_type, flag_name, shown_default, validate
from heed.errors import HeedError


def _default_note(f: Any) -> str:
    """The one place a flag's help states its default (``opt`` refuses a help text that states it too)."""
    default = shown_default(f.default)
    return "" if default is None else f" (default: {default})"


def dest(cls: type, name: str) -> str:
    """Where argparse keeps a field's flag: qualified by its class, so fields of the same name in two
    sections (``DataConfig.shuffle`` and ``TrainConfig.shuffle``) keep their own flags."""
    return f"{cls.__name__}.{name}"


def add_flags(parser: Any, cls: type, *, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
              required: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (nested sections excluded); ``required`` ones must be given."""
    for f in fields(cls):
        if not f.metadata.get("cli", True) or f.name in skip or (only is not None and f.name not in only):
            continue
        kind, _ = field_type(cls, f)
        if is_dataclass(kind):
            continue
        meta = f.metadata
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %: "85% train" is text
        if kind is bool:
            action = "store_false" if f.default is True else "store_true"
            parser.add_argument(flag_name(f), dest=dest(cls, f.name), action=action, default=argparse.SUPPRESS, help=help_text)
            continue
        parse = {int: int, float: float}.get(kind, str)
        choices, metavar = meta.get("choices"), meta.get("metavar") or f.name.upper()
        if callable(choices):  # names from a later stage (templates): shown here, checked by validate()
            choices, metavar = None, "{" + ",".join(choices_of(f) or ()) + "}"
        parser.add_argument(flag_name(f), dest=dest(cls, f.name), type=parse, default=argparse.SUPPRESS,
                            choices=choices, metavar=None if choices else metavar,
                            required=f.name in required, help=help_text + _default_note(f))


def given(cls: type, args: argparse.Namespace) -> list[str]:
    """The fields of ``cls`` whose flags are on the command line."""
    values = vars(args)
    return [f.name for f in fields(cls) if dest(cls, f.name) in values]


def configure(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """``base`` (default: ``cls()``) with the flags of ``cls`` that were given applied."""
    cfg = base if base is not None else cls()
    values = vars(args)
    changes = {}
    for f in fields(cls):
        if dest(cls, f.name) not in values:
            continue
        value = values[dest(cls, f.name)]
        kind, _ = field_type(cls, f)
        off = f.metadata.get("off")
        if off is not None and value == off:
            value = None
        elif kind is list and isinstance(value, str):
            items = [t.strip() for t in value.split(",") if t.strip()]
            value = "all-linear" if items == ["all-linear"] else items
        changes[f.name] = value
    return replace(cfg, **changes)


def validated(args: argparse.Namespace, *classes: type) -> list[Any]:
    """A config of each of ``classes`` from its flags, every problem of all of them raised at once."""
    cfgs = [configure(cls, args) for cls in classes]
    validate(*cfgs)
    return cfgs


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="settings from a YAML or JSON file (e.g. a run's run.yaml, or configs/*.yaml); "
                             "flags and KEY=VALUE arguments override it")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="set any setting by its dotted name, e.g. train.lr=1e-4 data.template=chat "
                             "train.lora.r=8")


def check_overrides(overrides: list[str]) -> None:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise HeedError(f"unexpected argument {bad[0]!r}: settings are given as flags or as KEY=VALUE "
                        "(e.g. train.lr=1e-4)")
