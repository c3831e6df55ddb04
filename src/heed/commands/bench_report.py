"""``heed bench``'s output: the machine it ran on, the peak its MFU is against, one Markdown row per
measurement as soon as it is measured (``result_row``) and one table per model (``table``)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

H100_BF16_PEAK = 989e12


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def matmul_peak(device: torch.device) -> float:
    """Achieved FLOP/s of a large bf16 matmul: the CPU's practical peak (H100/H200: the spec sheet)."""
    import torch

    if device.type == "cuda":
        return H100_BF16_PEAK
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - started)


def result_row(model: str, key: str, r: dict[str, Any]) -> str:
    """One measurement as a Markdown table row, written as soon as it is measured."""
    if key.startswith("generate_"):
        figures = [f"batch 1: {r['batch1_tokens_per_s']:,.1f} tokens/s"]
        if "batched_tokens_per_s" in r:
            figures.append(f"batched: {r['batched_tokens_per_s']:,.1f} tokens/s")
        figures.append(f"first call {r['batch1_first_call_s']:.1f} s")
    else:
        figures = [f"{r['tokens_per_s']:,.0f} non-padding tokens/s", f"batch {r['batch']}",
                   f"peak {r['peak_bytes'] / 2**30:.2f} GiB", r["precision"]]
        if r.get("warmup_steps"):
            figures.append(f"warmup {r['warmup_s']:.0f} s over {r['warmup_steps']} steps")
    return f"| {model} | {key} | {'; '.join(figures)} |"


def table(results: dict[str, Any]) -> str:
    """The Markdown table of one model's results (and its ablation table when measured); a model whose
    measurements did not all finish gets a line saying so (its rows are already written)."""
    cfg = results["config"]
    needed = ("train_reference", "train_fast", "train_packed", "train_budget", "generate_reference", "generate_fast")
    if any(k not in results for k in needed):
        return (f"**{cfg['model']}**: incomplete (stopped at {results.get('incomplete', '?')} after "
                f"{cfg['time_limit']} s); the rows measured are listed above.")
    tr, tf = results["train_reference"], results["train_fast"]
    gr, gf = results["generate_reference"], results["generate_fast"]
    peak = results["peak_flops"]
    peak_name = "989 TFLOP/s bf16" if peak == H100_BF16_PEAK else f"measured bf16 matmul {peak / 1e12:.2f} TFLOP/s"

    def row(name: str, ref: float | None, fast: float, fmt: str) -> str:
        ratio = f"{fast / ref:.1f}×" if ref else "—"
        return f"| {name} | {format(ref, fmt) if ref else '—'} | {format(fast, fmt)} | {ratio} |"

    budget = results["train_budget"]
    compiled_rows = []
    for key, extra in (("train_compiled", ""), ("train_budget_compiled", f", {budget['batch']} examples a step")):
        if r := results.get(key):
            compiled_rows.append(row(
                f"train, fast path + packing{extra}, compiled (static shapes; compiling took {r['warmup_s']:.0f} s "
                f"over {r['warmup_steps']} warmup steps): non-padding tokens/s", tr["tokens_per_s"], r["tokens_per_s"],
                ",.0f"))
    title = (f"**{cfg['model']}** on {results['device']} ({tf['params'] / 1e6:.0f}M parameters, "
             f"mean length {tf['mean_len']:.0f} tokens, batch {cfg['batch_size']}; fast path {tf['precision']}, "
             f"{tf['allocator']} allocator)")
    lines = [title, "", "| measure | reference loop | heed fast path | ratio |", "| --- | ---: | ---: | ---: |",
             row("train: non-padding tokens/s", tr["tokens_per_s"], tf["tokens_per_s"], ",.0f"),
             row("train: supervised tokens/s", tr["supervised_per_s"], tf["supervised_per_s"], ",.0f"),
             row(f"train, fast path + packing ({cfg['pack_length']}-token rows): non-padding tokens/s",
                 tr["tokens_per_s"], results["train_packed"]["tokens_per_s"], ",.0f"),
             row(f"train, fast path + packing, {budget['batch']} examples a step: non-padding tokens/s",
                 tr["tokens_per_s"], budget["tokens_per_s"], ",.0f"),
             *compiled_rows,
             *([row(f"train, transformers.Trainer at batch {cfg['batch_size']} ({results['train_trainer']['precision']}, "
                    "fused AdamW, padding collator) vs heed's fast path: non-padding tokens/s",
                    results["train_trainer"]["tokens_per_s"], tf["tokens_per_s"], ",.0f")]
               if "train_trainer" in results else []),
             row(f"train: MFU % (vs {peak_name})", tr["achieved_flops"] / peak * 100,
                 tf["achieved_flops"] / peak * 100, ".1f"),
             row("train: peak memory (GiB)", tr["peak_bytes"] / 2**30, tf["peak_bytes"] / 2**30, ".2f"),
             row("generate: tokens/s, batch 1", gr["batch1_tokens_per_s"], gf["batch1_tokens_per_s"], ",.1f"),
             row(f"generate: tokens/s, batch {cfg['gen_prompts']} (reference: one at a time)",
                 gr["batch1_tokens_per_s"], gf["batched_tokens_per_s"], ",.1f")]
    for name, text in (("static", "static KV cache"), ("compiled", "static KV cache, compiled step")):
        g = results.get(f"generate_{name}")
        if g:
            first = g["batch1_first_call_s"]
            lines += [row(f"generate, {text}: tokens/s, batch 1 (first call {first:.1f} s)",
                          gr["batch1_tokens_per_s"], g["batch1_tokens_per_s"], ",.1f"),
                      row(f"generate, {text}: tokens/s, batch {cfg['gen_prompts']}", gr["batch1_tokens_per_s"],
                          g["batched_tokens_per_s"], ",.1f")]
    if results.get("ablation"):
        lines += ["", f"Ablation ({cfg['model']}, batch {cfg['batch_size']}, no packing): the fast path with one "
                  "piece taken out.", "", "| training run | non-padding tokens/s | vs fast path |",
                  "| --- | ---: | ---: |", f"| fast path | {tf['tokens_per_s']:,.0f} | 1.00 |"]
        for name, r in results["ablation"].items():
            lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / tf['tokens_per_s']:.2f} |")
    return "\n".join(lines)
