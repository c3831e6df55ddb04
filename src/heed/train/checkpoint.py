"""Resumable checkpoints that hold data, never code: tensors in safetensors, everything else in JSON.

``<out>/checkpoint/`` holds ``state.json`` (format, loop position, resolved config, RNG states of Python,
optimizer hyperparameters, scheduler state), ``model.safetensors`` (the weights; tied tensors stored once),
``optimizer.safetensors`` (AdamW's moments), ``rng.safetensors`` (torch's generator states) and, with
early stopping, ``best.safetensors``. Nothing is unpickled on load, so a shared or downloaded run
directory cannot run code. The directory is written aside and swapped in whole (``heed.io.atomic_dir``),
so an interrupted save never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from heed.errors import HeedError
from heed.io import atomic_dir
from heed.train.checkpoint_check import STATE, Problems, check_state

CHECKPOINT = "checkpoint"
FORMAT = "heed-checkpoint/2"


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python's generator state as JSON, torch's (CPU and CUDA) as tensors."""
    version, internal, gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return {"python": [version, list(internal), gauss]}, tensors


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``rng_state`` took (``load`` checked it); CUDA states only for the devices this machine has."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["tensors"]["torch"])
    cuda = sorted((k for k in state["tensors"] if k.startswith("cuda.")), key=lambda k: int(k.split(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state["tensors"][k] for k in cuda][:torch.cuda.device_count()])


def _tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU copies, each storage once: {key: tensor} and {alias: key} for tied tensors."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out, aliases


def _optimizer_parts(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(out_dir: Path, *, model: Any, optimizer: Any, scheduler: Any, loop: dict[str, Any],
         config: dict[str, Any], best_state: dict[str, torch.Tensor] | None, finished: bool = False,
         weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint; ``weights`` and ``optimizer_state`` stand for the model's and the optimizer's
    state dicts where those hold only a shard (FSDP gathers them whole first)."""
    from safetensors.torch import save_file

    weights, aliases = _tensors(model.state_dict() if weights is None else weights)
    moments, optimizer_meta = _optimizer_parts(optimizer.state_dict() if optimizer_state is None else optimizer_state)
    python_rng, rng_tensors = rng_state()
    state = {"format": FORMAT, "finished": finished, "loop": loop, "config": config, "aliases": aliases,
             "optimizer": optimizer_meta, "scheduler": scheduler.state_dict(), "rng": python_rng["python"],
             "best": best_state is not None}
    path = out_dir / CHECKPOINT
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        if best_state is not None:
            save_file(_tensors(best_state)[0], str(tmp / "best.safetensors"))
        (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
    return path


def find(path: str | Path) -> Path:
    """The checkpoint directory of ``--resume PATH`` (a run directory or the checkpoint itself)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".pt":
            raise HeedError(f"--resume {path}: heed no longer reads .pt checkpoints (loading them can run code); "
                            "give a run directory written by this version of heed")
        raise HeedError(f"--resume {path}: a file; give the run directory (it holds {CHECKPOINT}/)")
    if not path.exists():
        raise HeedError(f"--resume {path}: no such directory")
    if (path / STATE).is_file():
        return path
    if (path / CHECKPOINT / STATE).is_file():
        return path / CHECKPOINT
    hint = (" (it has a checkpoint.pt from an older heed, which this version does not read: loading it can run "
            "code)") if (path / "checkpoint.pt").exists() else ""
    raise HeedError(f"--resume {path}: no checkpoint there{hint}; a run writes one with --checkpoint-every N "
                    "or when it is interrupted")


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint as plain data: {loop, config, model, optimizer, scheduler, best_state, rng, finished, where},
    every key of state.json and every tensor file checked (``check_fits`` then checks it against the model)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = find(path)
    try:
        state = json.loads((where / STATE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("unknown format")
        files = {name: load_file(str(where / f"{name}.safetensors")) for name in ("model", "optimizer", "rng")}
        if state.get("best") is True:
            files["best"] = load_file(str(where / "best.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, RecursionError, SafetensorError) as e:
        raise HeedError(f"{where}: not a readable heed checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'incomplete'})") from None
    problems = Problems(where)
    check_state(problems, state, files)
    problems.raise_any()
    weights = files["model"]
    for alias, key in state["aliases"].items():
        weights[alias] = weights[key]
    optimizer = _optimizer_state(files["optimizer"], state["optimizer"])
    rng = {"python": state["rng"], "tensors": files["rng"]}
    return {"loop": state["loop"], "config": state["config"], "model": weights, "optimizer": optimizer,
            "scheduler": state["scheduler"], "best_state": files.get("best"), "rng": rng,
            "finished": state["finished"], "where": where}
