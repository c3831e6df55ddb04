"""``heed bench``: heed's fast path against the original design's loop, same model, data and run.

Reference loop (what the original design does): fp32, batches padded to their longest example,
logits for every position and the full vocabulary, PyTorch's default AdamW (on a CPU its
per-parameter loop; on CUDA its foreach kernels), no gradient clipping, the system allocator, the
model's activations as written, IEEE fp32 matmuls on CUDA; generation one sequence at a time,
recomputing the whole sequence for every new token (no KV cache).
Fast path (what ``heed train`` / ``heed generate`` do): bf16 autocast where the hardware has it,
logits and their gradients only at supervised positions (``heed.train.loss``), fused AdamW with clipping
at 1.0 (heed's default) folded into its kernel (``heed.train.optim``), mimalloc on Linux CPUs
(``heed.runtime.allocator``), fused GELU, short rows' attention written out on CPUs
(``heed.model.attention``), the tied embedding's gradient written once (``heed.train.loss``), TF32 on
CUDA — each a switch of ``heed.config.FastPath``, all driven through ``heed train``'s own step; optionally packing
(``--pack``), a larger token budget per step and ``torch.compile`` with static shapes; batched
generation with a KV cache under bf16 (dynamic, static, or static with a compiled step).

Each measurement runs in its own process (its own allocator and peak memory). Model FLOPs per trained
token: 6·N + 12·n_layer·d_model·T (N = parameters, T = mean sequence length; PaLM appendix B). MFU is
against 989 TFLOP/s bf16 on H100/H200, and on a CPU against a measured large bf16 matmul.

The measurements live beside this module, in the order of the flow: ``bench_config`` (the settings and
each measurement's switches), ``bench_train``, ``bench_generate``, ``bench_report`` (rows and tables).
This module plans them, runs each in a child process and writes what they measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heed.commands.bench_config import (
    ABLATIONS,
    COMPILED_MODES,
    CUDA_ABLATIONS,
    FAST,
    GENERATE_MODES,
    TARGET_ROWS,
    TRAIN_MODES,
    BenchConfig,
)
from heed.commands.bench_generate import measure_generate
from heed.commands.bench_report import H100_BF16_PEAK, describe_device, matmul_peak, result_row, table
from heed.commands.bench_train import _groups, fast_path, measure_train, measure_trainer
from heed.config import validate
from heed.errors import HeedError

if TYPE_CHECKING:
    import torch

__all__ = ["ABLATIONS", "COMPILED_MODES", "CUDA_ABLATIONS", "FAST", "GENERATE_MODES", "H100_BF16_PEAK",
           "TARGET_ROWS", "TRAIN_MODES", "BenchConfig", "OutOfTime", "cmd_bench", "describe_device", "fast_path",
           "matmul_peak", "measure_generate", "measure_train", "measure_trainer", "plan", "register", "result_row",
           "run", "table", "_groups"]


# How a measuring process reports a refusal (a HeedError) to the parent, which raises it as its own.
CHILD_ERROR = "heed bench child: "


class OutOfTime(Exception):
    """A measurement ran past the model's time limit (``BenchConfig.time_limit``)."""


def _child(kind: str, mode: str, cfg: BenchConfig, features: dict[str, Any],
           timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process, so its allocator and peak memory are its own."""
    from heed.runtime import allocator

    args = [sys.executable, "-m", "heed.commands.bench", kind, mode, json.dumps(cfg.__dict__), json.dumps(features)]
    env = allocator.environment(os.environ, fast=features["allocator"] == "mimalloc") | {"TQDM_DISABLE": "1"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"{kind} {mode}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        if last.startswith(CHILD_ERROR):  # the child's one-line refusal is the command's
            raise HeedError(last[len(CHILD_ERROR):])
        raise RuntimeError(f"bench {kind} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(cfg: BenchConfig, device: torch.device) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Every measurement of one model, in the order run: (result key, kind, mode, features).

    Listed as training, the Trainer peer, generation, the ablations; on CUDA the rows the GPU targets are
    read against (``TARGET_ROWS``) come first, in that order, so that a time limit keeps them."""
    modes = TRAIN_MODES | (COMPILED_MODES if cfg.compile or device.type == "cuda" else {})
    steps = [(f"train_{mode}", "train", mode, features) for mode, features in modes.items()]
    if cfg.peer:
        steps.append(("train_trainer", "trainer", "trainer", TRAIN_MODES["fast"]))
    steps += [(f"generate_{name}", "generate", mode, TRAIN_MODES["reference" if name == "reference" else "fast"])
              for name, mode in GENERATE_MODES.items()]
    if cfg.ablation:
        steps += [(f"ablation/{name}", "train", name, features)
                  for name, features in (ABLATIONS | (CUDA_ABLATIONS if device.type == "cuda" else {})).items()]
    if device.type != "cuda":
        return steps
    return sorted(steps, key=lambda s: TARGET_ROWS.index(s[0]) if s[0] in TARGET_ROWS else len(TARGET_ROWS))
def preflight(cfg: BenchConfig) -> None:
    """Refuse data too small for the measured steps before any measurement runs (the children would)."""
    from heed.commands.bench_train import _examples
    from heed.model import load_tokenizer

    examples = _examples(cfg, load_tokenizer(cfg.model))
    for budget in (False, True):
        _groups(cfg, examples, budget)


def run(cfg: BenchConfig, log: Any = print, on_result: Any = None) -> dict[str, Any]:
    """Every measurement of ``plan``, each in its own process, within ``cfg.time_limit`` seconds; each result
    goes to ``on_result(key, result)`` as soon as it is measured. A measurement still running at the limit
    is stopped and the rest skipped (``results["incomplete"]`` names them)."""
    from heed.runtime.device import choose_device

    device = choose_device(cfg.device)
    results: dict[str, Any] = {"config": cfg.__dict__, "device": describe_device(device)}
    deadline = time.monotonic() + (cfg.time_limit or float("inf"))
    for key, kind, mode, features in plan(cfg, device):
        log(f"measuring {key} on {cfg.model} ...")
        try:
            left = deadline - time.monotonic()
            result = _child(kind, mode, cfg, features, timeout=None if left == float("inf") else max(1.0, left))
        except OutOfTime:
            results["incomplete"] = key
            log(f"{cfg.model}: the {cfg.time_limit} s limit reached during {key}; the rest skipped")
            break
        if key.startswith("ablation/"):
            results.setdefault("ablation", {})[key.split("/", 1)[1]] = result
        else:
            results[key] = result
        if on_result:
            on_result(key, result)
    results["peak_flops"] = matmul_peak(device)
    return results


def main_child(argv: list[str]) -> None:
    """One measurement in this process (``_child`` starts it); its result as the last line of stdout."""
    import torch

    kind, mode, raw, features = argv
    cfg = BenchConfig(**json.loads(raw))
    torch.manual_seed(0)
    if kind == "trainer":
        result = measure_trainer(cfg)
    else:
        result = measure_train(cfg, json.loads(features)) if kind == "train" else measure_generate(cfg, mode)
    print(json.dumps(result))


def cmd_bench(args: Any) -> int:
    import datetime

    import torch

    from heed.commands.options import configure
    from heed.io import write_text

    stamp = datetime.date.today().isoformat()
    sections = []
    rows_started = False
    cfgs = [configure(BenchConfig, args, BenchConfig(model=model)) for model in args.model or ["random:gpt2"]]
    for cfg in cfgs:  # every model's settings and data checked before the first measurement
        validate(cfg)
        preflight(cfg)
    for cfg in cfgs:
        model = cfg.model

        def flush(key: str, result: dict[str, Any], model: str = model) -> None:
            """Each row reaches --out as soon as it is measured: a run stopped later keeps it."""
            nonlocal rows_started
            line = result_row(model, key, result)
            print(line, flush=True)
            if args.out:
                old = _read(args.out)
                if not rows_started:
                    old = (old.rstrip() + f"\n\n## {stamp}: `heed bench` rows as measured (torch {torch.__version__})"
                           "\n\n| model | measurement | result |\n| --- | --- | --- |")
                    rows_started = True
                write_text(args.out, old.rstrip() + "\n" + line + "\n")

        results = run(cfg, log=lambda m: print(m, file=sys.stderr), on_result=flush)
        sections.append(table(results))
        print(sections[-1] + "\n")
    if args.out:
        head = (f"## {stamp}: `heed bench` on {results['device']}, torch {torch.__version__}\n\n"
                f"Data: {cfg.data or 'built-in tasks'}; {cfg.steps} timed steps after 2 warmup steps; "
                f"generation of {cfg.gen_tokens} new tokens for {cfg.gen_prompts} prompts.\n\n")
        write_text(args.out, _read(args.out).rstrip() + "\n\n" + head + "\n\n".join(sections) + "\n")
        print(f"appended to {args.out}")
    return 0


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8") if Path(path).is_file() else "# Benchmarks\n\n"


def register(sub: Any) -> None:
    from heed.commands.options import add_flags

    p = sub.add_parser("bench", help="training and generation throughput: heed's fast path vs the original loop")
    p.add_argument("--model", action="append", help="model spec (repeatable; default random:gpt2)")
    add_flags(p, BenchConfig)
    p.add_argument("--out", help="append the tables to this Markdown file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=cmd_bench)


if __name__ == "__main__":
    try:
        main_child(sys.argv[1:])
    except HeedError as e:
        sys.exit(f"{CHILD_ERROR}{e}")
