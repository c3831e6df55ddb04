"""What a checkpoint's files must hold, checked before anything uses them: a damaged or edited checkpoint
is refused with one line naming the file and the key, before the run directory or the model changes,
instead of failing deep inside torch. ``checkpoint.load`` checks the files on their own (``check_state``);
``check_fits`` then checks them against the model, optimizer and schedule a resumed run has built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heed.errors import HeedError

STATE = "state.json"  # the checkpoint's JSON file (its tensors are in <name>.safetensors)

DAMAGED = "this is not a checkpoint heed wrote (or it was damaged): start a new run"
MOMENTS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # AdamW's state of one parameter


class Problems:
    """What is wrong with a checkpoint, by file; ``raise_any`` raises the first as one line with a count."""

    def __init__(self, where: Path):
        self.where = where
        self.found: dict[str, list[str]] = {}

    def add(self, file: str, text: str) -> None:
        self.found.setdefault(file, []).append(text)

    def raise_any(self) -> None:
        if not self.found:
            return
        file, texts = next(iter(self.found.items()))
        more = sum(len(t) for t in self.found.values()) - 1
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise HeedError(f"{self.where / file}: {texts[0]}{also}; {DAMAGED}")


def _index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


Kind = tuple[str, Callable[[Any], bool]]
COUNT: Kind = ("a whole number of at least 0", lambda v: _int(v) and v >= 0)
FINITE: Kind = ("a finite number", lambda v: _number(v) and math.isfinite(v))
FLAG: Kind = ("true or false", lambda v: isinstance(v, bool))
MAPPING: Kind = ("an object", lambda v: isinstance(v, dict))
NONE: Kind = ("null", lambda v: v is None)


def maybe(kind: Kind) -> Kind:
    return (f"{kind[0]} or null", lambda v: v is None or kind[1](v))


def list_of(kind: Kind, length: int | None = None) -> Kind:
    size = f"{length} " if length is not None else ""
    return (f"a list of {size}items, each {kind[0]}",
            lambda v: isinstance(v, list) and (length is None or len(v) == length) and all(kind[1](x) for x in v))


# state.json's keys and what each holds (the loop's are LoopState's fields)
TOP: dict[str, Kind] = {"format": ("text", lambda v: isinstance(v, str)), "finished": FLAG, "loop": MAPPING,
                        "config": MAPPING, "aliases": MAPPING, "optimizer": MAPPING, "scheduler": MAPPING,
                        "rng": ("a list", lambda v: isinstance(v, list)), "best": FLAG}
LOOP: dict[str, Kind] = {"step": COUNT, "epoch": COUNT, "batch_in_epoch": COUNT, "tokens_seen": COUNT,
                         "best_val": maybe(FINITE), "best_step": maybe(COUNT), "bad_evals": COUNT,
                         "stopped_early": FLAG, "seconds": FINITE, "metrics": list_of(MAPPING)}
METRIC: dict[str, Kind] = {"step": COUNT, "epoch": COUNT, "tokens_seen": COUNT, "train_loss": FINITE,
                           "val_loss": maybe(FINITE), "lr": FINITE, "seconds": FINITE}
GROUP: dict[str, Kind] = {"params": list_of(COUNT), "lr": FINITE, "betas": list_of(FINITE, 2), "eps": FINITE,
                          "weight_decay": FINITE}
SCHEDULER: dict[str, Kind] = {"base_lrs": list_of(FINITE), "last_epoch": COUNT, "_step_count": COUNT,
                              "_last_lr": list_of(FINITE), "lr_lambdas": list_of(NONE)}


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {list(value.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def check_keys(p: Problems, file: str, obj: dict[str, Any], prefix: str, kinds: dict[str, Kind], *,
               exact: bool = True) -> bool:
    """``obj``'s keys against ``kinds`` (with ``exact``, no others); True when nothing is wrong."""
    ok = True
    for key, (text, test) in kinds.items():
        if key not in obj:
            p.add(file, f"'{prefix}{key}' is missing")
            ok = False
        elif not test(obj[key]):
            p.add(file, f"'{prefix}{key}' should be {text}, not {_show(obj[key])}")
            ok = False
    for key in obj if exact else ():
        if key not in kinds:
            p.add(file, f"'{prefix}{key}' is not a key heed writes")
            ok = False
    return ok


def check_state(p: Problems, state: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
    """Everything in a checkpoint that does not depend on the model: state.json's keys and their types, the
    RNG states, the tensor files' names, and no weight or moment that is not finite."""
    if not check_keys(p, STATE, state, "", TOP):
        return
    if check_keys(p, STATE, state["loop"], "loop.", LOOP):
        for i, row in enumerate(state["loop"]["metrics"]):
            check_keys(p, STATE, row, f"loop.metrics.{i}.", METRIC, exact=False)
    _check_optimizer(p, state["optimizer"], files["optimizer"])
    if check_keys(p, STATE, state["scheduler"], "scheduler.", SCHEDULER, exact=False):
        if len(state["scheduler"]["base_lrs"]) != len(state["scheduler"]["lr_lambdas"]):
            p.add(STATE, "'scheduler.base_lrs' and 'scheduler.lr_lambdas' differ in length")
    _check_rng(p, state["rng"], files["rng"])
    weights = files["model"]
    for alias, key in state["aliases"].items():
        if not isinstance(key, str) or key not in weights:
            p.add(STATE, f"'aliases.{alias}' names {_show(key)}, which model.safetensors does not hold")
        elif alias in weights:
            p.add(STATE, f"'aliases.{alias}' is also a tensor of model.safetensors")
    for name, tensors in files.items():
        if name != "rng":
            for key, tensor in tensors.items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    p.add(f"{name}.safetensors", f"'{key}' holds values that are not finite")


def _check_optimizer(p: Problems, meta: dict[str, Any], moments: dict[str, torch.Tensor]) -> None:
    if not check_keys(p, STATE, meta, "optimizer.", {"param_groups": list_of(MAPPING), "plain": MAPPING}):
        return
    if not meta["param_groups"]:
        p.add(STATE, "'optimizer.param_groups' is empty")
    for i, group in enumerate(meta["param_groups"]):
        check_keys(p, STATE, group, f"optimizer.param_groups.{i}.", GROUP, exact=False)
    for index, values in meta["plain"].items():
        if not _index(index) or not isinstance(values, dict):
            p.add(STATE, f"'optimizer.plain.{index}' is not a parameter's state")
            continue
        for name, value in values.items():
            if name not in MOMENTS or not _number(value):
                p.add(STATE, f"'optimizer.plain.{index}.{name}' is not a number of AdamW's state")
    for key in moments:
        index, _, name = key.partition(".")
        if not _index(index) or name not in MOMENTS:
            p.add("optimizer.safetensors", f"'{key}' is not a moment of AdamW (expected <parameter>.<"
                  f"{'|'.join(MOMENTS)}>)")


def _check_rng(p: Problems, rng: list[Any], tensors: dict[str, torch.Tensor]) -> None:
    """Python's state is [3, 625 words (the last a position ≤ 624), gauss or null]; torch's a byte tensor of
    the size this torch uses (CUDA ones keyed ``cuda.<device>``)."""
    words = rng[1] if len(rng) == 3 else None
    if (len(rng) != 3 or rng[0] != 3 or not isinstance(words, list) or len(words) != 625
            or not all(_int(w) and 0 <= w < 2**32 for w in words) or words[-1] > 624
            or not maybe(FINITE)[1](rng[2])):
        p.add(STATE, "'rng' is not the state of Python's generator ([3, 625 whole numbers, a number or null])")
    if "torch" not in tensors:
        p.add("rng.safetensors", "'torch' is missing")
    size = torch.get_rng_state().numel()
    for key, tensor in tensors.items():
        if key != "torch" and not (key.startswith("cuda.") and _index(key[5:])):
            p.add("rng.safetensors", f"'{key}' is not a generator heed saves (torch, cuda.<device>)")
        elif tensor.dtype != torch.uint8 or tensor.dim() != 1 or (key == "torch" and tensor.numel() != size):
            count = f", {size} of them" if key == "torch" else ""
            p.add("rng.safetensors", f"'{key}' is not a generator state (bytes{count})")


def check_fits(ckpt: dict[str, Any], *, weights: dict[str, tuple[int, ...]], trained: list[tuple[str, tuple[int, ...]]],
               optimizer: Any, scheduler: Any) -> None:
    """Refuse a checkpoint (from ``load``) that does not fit this model, optimizer and schedule: ``weights`` are the
    model's tensor names and shapes, ``trained`` its trained parameters in the optimizer's order."""
    p = Problems(ckpt["where"])
    file = "model.safetensors"
    for name, tensor in ckpt["model"].items():
        if name not in weights:
            p.add(file, f"'{name}' is not a tensor of this model")
        elif tuple(tensor.shape) != weights[name]:
            p.add(file, f"'{name}' has shape {list(tensor.shape)}, the model's is {list(weights[name])}")
    for name in weights:
        if name not in ckpt["model"]:
            p.add(file, f"'{name}' is missing")
    shapes = dict(trained)
    for name, tensor in (ckpt["best_state"] or {}).items():
        if shapes.get(name) != tuple(tensor.shape):
            p.add("best.safetensors", f"'{name}' is not a trained parameter of this model of that shape")
    _optimizer_fits(p, ckpt["optimizer"], [shape for _, shape in trained], optimizer)
    _scheduler_fits(p, ckpt["scheduler"], scheduler)
    p.raise_any()


# How AdamW runs, chosen for this machine when the optimizer is made: a resumed run keeps these and takes
# the hyperparameters from the checkpoint. The other switches (amsgrad, maximize, differentiable) must match.
RUNTIME = ("foreach", "fused", "capturable")


def optimizer_state(ckpt: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """The checkpoint's optimizer state (``check_fits`` passed) with this optimizer's ``RUNTIME`` switches, and
    its settings where the checkpoint has none (one written by an older torch)."""
    groups = []
    for saved, mine in zip(ckpt["optimizer"]["param_groups"], optimizer.param_groups):
        own = {k: v for k, v in mine.items() if k != "params"}
        groups.append(own | saved | {k: own[k] for k in RUNTIME if k in own})
    return {**ckpt["optimizer"], "param_groups": groups}


def _optimizer_fits(p: Problems, saved: dict[str, Any], shapes: list[tuple[int, ...]], optimizer: Any) -> None:
    groups = optimizer.state_dict()["param_groups"]
    if len(saved["param_groups"]) != len(groups):
        p.add(STATE, f"'optimizer.param_groups' has {len(saved['param_groups'])} groups, the optimizer "
              f"{len(groups)}")
        return
    for i, (mine, theirs) in enumerate(zip(groups, saved["param_groups"])):
        if theirs["params"] != list(mine["params"]):
            p.add(STATE, f"'optimizer.param_groups.{i}.params' should be the {len(mine['params'])} parameters "
                  f"{mine['params'][0] if mine['params'] else ''}..{mine['params'][-1] if mine['params'] else ''}")
        for key, value in theirs.items():
            if key in RUNTIME or key not in mine or key == "params":
                continue
            if isinstance(mine[key], bool) and value is not mine[key]:
                p.add(STATE, f"'optimizer.param_groups.{i}.{key}' should be {json.dumps(mine[key])}, not "
                      f"{_show(value)}")
            elif not _same_kind(mine[key], value):
                p.add(STATE, f"'optimizer.param_groups.{i}.{key}' should be like {_show(mine[key])}, not "
                      f"{_show(value)}")
    amsgrad = any(g.get("amsgrad") for g in saved["param_groups"])
    needed = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())
    for index, values in saved["state"].items():
        where = f"parameter {index}"
        if not 0 <= index < len(shapes):
            p.add("optimizer.safetensors", f"{where}: the model trains {len(shapes)} parameters")
            continue
        if set(values) != needed:
            p.add("optimizer.safetensors", f"{where}: holds {', '.join(sorted(values))}, not "
                  f"{', '.join(sorted(needed))}")
        for name, value in values.items():
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            if name == "step" and (shape and shape != (1,)):
                p.add("optimizer.safetensors", f"'{index}.step' should be one number, not shape {list(shape)}")
            elif name != "step" and shape != shapes[index]:
                p.add("optimizer.safetensors", f"'{index}.{name}' has shape {list(shape)}, the parameter's is "
                      f"{list(shapes[index])}")


def _scheduler_fits(p: Problems, saved: dict[str, Any], scheduler: Any) -> None:
    mine = scheduler.state_dict()
    groups = len(mine["base_lrs"])
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        if len(saved[key]) != groups:
            p.add(STATE, f"'scheduler.{key}' has {len(saved[key])} items, the optimizer {groups} groups")
    for key, value in saved.items():
        if key in mine:
            if not _same_kind(mine[key], value):
                p.add(STATE, f"'scheduler.{key}' should be like {_show(mine[key])}, not {_show(value)}")
        elif hasattr(scheduler, key) or not (value is None or _number(value) or isinstance(value, bool)):
            p.add(STATE, f"'scheduler.{key}' is not a key of heed's schedule")


def _same_kind(mine: Any, theirs: Any) -> bool:
    """Whether a JSON value can stand for ``mine``: numbers for numbers, a flag (or null) for a flag or null,
    lists of as many items alike."""
    if isinstance(mine, bool) or mine is None:
        return theirs is None or isinstance(theirs, bool)
    if _number(mine):
        return _number(theirs) and math.isfinite(theirs)
    if isinstance(mine, list | tuple):
        return isinstance(theirs, list) and len(theirs) == len(mine) and all(map(_same_kind, mine, theirs))
    return isinstance(theirs, type(mine))
