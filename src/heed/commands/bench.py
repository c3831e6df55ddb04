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
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heed.config import FastPath, GenerateConfig, at_least, check_fields, opt, validate

if TYPE_CHECKING:
    import torch

H100_BF16_PEAK = 989e12


@dataclass
class BenchConfig:
    model: str = opt("random:gpt2", "model spec (repeat --model to measure several)", cli=False)
    data: str | None = opt(None, "instruction records (default: built-in tasks)", metavar="FILE")
    batch_size: int = opt(8, "examples a step", check=at_least(1))
    steps: int = opt(6, "timed training steps (after 2 warmup steps)", check=at_least(1))
    gen_prompts: int = opt(8, "prompts generated for", check=at_least(1))
    gen_tokens: int = opt(32, "new tokens per prompt", check=at_least(1))
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    pack_length: int = opt(256, "rows of the packed measurements (heed train --pack-length)", check=at_least(2))
    budget_scale: int = opt(4, "the larger-budget measurement packs this many batches into one step",
                            check=at_least(1))
    tokens_per_step: int | None = opt(None, "the larger-budget measurement forms its steps by this many tokens "
                                      "(heed train --tokens-per-step) instead of --budget-scale batches",
                                      check=at_least(1), metavar="N")
    time_limit: int | None = opt(None, "seconds per model: a measurement still running then is stopped, the rest "
                                 "skipped (rows measured so far are kept); default none (scripts/gpu-check.sh: 300)",
                                 check=at_least(1), metavar="S", off=0)
    peer: bool = opt(True, "no peer row (the same model, data and batch through transformers.Trainer)",
                     flag="--no-peer")
    ablation: bool = opt(False, "also measure the fast path with each piece taken out")
    compile: bool = opt(False, "also measure compiled training with static shapes (always measured on CUDA)")

    def validate(self) -> list[str]:
        return check_fields(self)


def _examples(cfg: BenchConfig, tokenizer: Any) -> list[Any]:
    from heed.data.encode import encode_records
    from heed.data.records import Record, load_records
    from heed.data.tasks import make_tasks
    from heed.data.templates import get_template

    from heed.data.records import Record

    if cfg.data and Path(cfg.data).is_file():
        records = load_records(cfg.data)
    else:
        records = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(make_tasks(400, 1))]
    examples, _ = encode_records(records, get_template("alpaca"), tokenizer, max_length=1024)
    return examples


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: torch.device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:  # high-water mark of resident memory
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# What each training measurement switches on. "allocator" is applied by the parent process (environment).
FAST = {"precision": "auto", "head": "auto", "optimizer": "fused", "clip": 1.0, "fold_clip": True,
        "allocator": "mimalloc", "fused_act": True, "short_attn": True, "tied_lookup": True, "tf32": True,
        "pack": False, "budget": False, "compile": False, "packed_attn": "auto"}
TRAIN_MODES: dict[str, dict[str, Any]] = {
    "reference": {"precision": "fp32", "head": "full", "optimizer": "default", "clip": None, "fold_clip": False,
                  "allocator": "system", "fused_act": False, "short_attn": False, "tied_lookup": False,
                  "tf32": False, "pack": False, "budget": False, "compile": False, "packed_attn": "mask"},
    "fast": FAST,
    "packed": FAST | {"pack": True},
    "budget": FAST | {"pack": True, "budget": True},  # BenchConfig.budget_scale batches a step
}
# Compiled, static bucketed shapes (heed train --pack --compile); measured on CUDA or with --compile.
COMPILED_MODES = {"compiled": FAST | {"pack": True, "compile": True},
                  "budget_compiled": FAST | {"pack": True, "budget": True, "compile": True}}
# Generation measurements: name → mode of measure_generate (reference, or the KV cache heed uses).
GENERATE_MODES = {"reference": "reference", "fast": "dynamic", "static": "static", "compiled": "compiled"}
# The fast path with one piece taken out (``heed bench --ablation``): what each piece is worth.
ABLATIONS: dict[str, dict[str, Any]] = {
    "fast, system allocator": FAST | {"allocator": "system"},
    "fast, full-vocabulary logits": FAST | {"head": "full"},
    "fast, PyTorch's default AdamW": FAST | {"optimizer": "default"},
    "fast, clipping as a separate pass": FAST | {"fold_clip": False},
    "fast, fp32": FAST | {"precision": "fp32"},
    "fast, GELU as written": FAST | {"fused_act": False},
    "fast, SDPA's kernel for short rows": FAST | {"short_attn": False},
    "fast, tied embedding's gradient as autograd's": FAST | {"tied_lookup": False},
}
CUDA_ABLATIONS = {
    "fast, IEEE fp32 where autocast leaves fp32 (no TF32)": FAST | {"tf32": False},
    "fast, heed's head instead of torch's linear_cross_entropy": FAST | {"head": "supervised"},
    "fast + packing, packed rows through a dense mask instead of FlexAttention": FAST | {"pack": True,
                                                                                         "packed_attn": "mask"},
}


def fast_path(features: dict[str, Any]) -> FastPath:
    """The library's feature set for one measurement's switches."""
    return FastPath(head=features["head"], tied_lookup=features["tied_lookup"],
                    fused_adamw=features["optimizer"] == "fused", fold_clip=features["fold_clip"],
                    fused_act=features["fused_act"], short_attn=features["short_attn"],
                    packed_attn=features.get("packed_attn", "auto"))


def measure_train(cfg: BenchConfig, features: dict[str, Any]) -> dict[str, Any]:
    """Training tokens/s of one set of features, through ``heed train``'s own step (``train_step``)."""
    import torch

    from heed.data.batch import make_batch
    from heed.model import load_model, load_tokenizer
    from heed.runtime import allocator
    from heed.runtime.device import choose_device, enable_tf32, resolve_precision
    from heed.train.loop import train_step
    from heed.train.loss import compile_body
    from heed.train.optim import make_optimizer

    device = choose_device(cfg.device)
    if device.type == "cuda":
        enable_tf32(features["tf32"])  # the reference runs in IEEE fp32, as PyTorch does by default
    fast = fast_path(features)
    tokenizer = load_tokenizer(cfg.model)
    examples = _examples(cfg, tokenizer)
    model = load_model(cfg.model, fast=fast).to(device).train()
    precision = resolve_precision(features["precision"], device)
    optimizer = make_optimizer(list(model.parameters()), 1e-5, 0.1, fused=fast.fused_adamw)
    pad = tokenizer.pad_token_id
    groups = _groups(cfg, examples, features["budget"])
    size = max(len(g) for g in groups)
    capacity = cfg.pack_length if features["pack"] else None
    static = features["compile"]
    batches = [make_batch(g, pad, pack_capacity=capacity, static=static) for g in groups]  # for the counts
    warmup, timed = groups[:2], groups[2:]
    if static:
        compile_body(model)
        shapes = {tuple(b.inputs.shape) for b in batches[:2]}
        for g, b in zip(timed, batches[2:]):  # every shape the timed steps will see compiles before the clock starts
            if tuple(b.inputs.shape) not in shapes:
                shapes.add(tuple(b.inputs.shape))
                warmup.append(g)

    def step(group: list[Any]) -> None:
        train_step(model, optimizer, None, group, grad_accum=1, pad_id=pad, clip=features["clip"],
                   precision=precision, device=device, pack_capacity=capacity, static=static, fast=fast)

    started = time.perf_counter()
    for group in warmup:
        step(group)
    _sync(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for group in timed:
        step(group)
    _sync(device)
    seconds = time.perf_counter() - started
    tokens = sum(b.tokens for b in batches[2:])
    supervised = sum(b.supervised_tokens for b in batches[2:])
    lengths = [len(e.input_ids) - 1 for g in groups[2:] for e in g]
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    mean_len = sum(lengths) / len(lengths)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    flops_per_token = 6 * n_params + 12 * layers * width * mean_len
    return {"precision": precision, "batch": size, "tokens_per_s": tokens / seconds,
            "supervised_per_s": supervised / seconds, "flops_per_token": flops_per_token,
            "achieved_flops": flops_per_token * tokens / seconds, "peak_bytes": _peak_bytes(device),
            "params": n_params, "mean_len": mean_len, "allocator": "mimalloc" if allocator.loaded() else "system",
            "warmup_s": warmup_seconds, "warmup_steps": len(warmup)}


def _groups(cfg: BenchConfig, examples: list[Any], budget: bool) -> list[list[Any]]:
    """The examples of each step: 2 warmup steps, then the timed ones; ``budget``: the larger steps
    (``cfg.tokens_per_step`` tokens, else ``cfg.budget_scale`` batches)."""
    from heed.data.batch import token_budget_order

    if budget and cfg.tokens_per_step:
        order = token_budget_order([len(e.input_ids) - 1 for e in examples], cfg.tokens_per_step, shuffle=False, seed=0)
        groups = [[examples[i] for i in step] for step in order[:-1] or order]  # the last, partial step left out
    else:
        size = cfg.batch_size * (cfg.budget_scale if budget else 1)
        groups = [examples[i:i + size] for i in range(0, len(examples) - size + 1, size)]
    return [groups[step % len(groups)] for step in range(cfg.steps + 2)]


def measure_trainer(cfg: BenchConfig) -> dict[str, Any]:
    """The peer row: the same model, examples and batch size through ``transformers.Trainer`` as people use
    it (bf16 where the hardware has it, fused AdamW, ``DataCollatorForSeq2Seq`` padding each batch);
    non-padding tokens/s over the steps after 2 warmup steps."""
    import tempfile

    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from heed.model import load_model, load_tokenizer
    from heed.runtime.device import choose_device, resolve_precision

    device = choose_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    groups = _groups(cfg, _examples(cfg, tokenizer), budget=False)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for g in groups for e in g]
    model = load_model(cfg.model).to(device).train()
    precision = resolve_precision("auto", device)
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counts: list[int] = []  # non-padding input tokens of each batch, as heed counts them (shifted: one fewer)

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad(features)
        counts.append(int(batch["attention_mask"].sum()) - len(features))
        return batch

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync(device)
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps + 2,
                                 learning_rate=1e-5, weight_decay=0.1, optim="adamw_torch_fused",
                                 bf16=precision == "bf16", use_cpu=device.type == "cpu", report_to=[],
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 dataloader_num_workers=0, seed=0)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()]).train()
    seconds = marks[-1] - marks[1]
    tokens = sum(counts[2:2 + cfg.steps])
    return {"precision": precision, "batch": cfg.batch_size, "tokens_per_s": tokens / seconds, "steps": len(marks) - 2,
            "peak_bytes": _peak_bytes(device)}


def _reference_generate(model: Any, prompt: list[int], new_tokens: int, device: "torch.device") -> int:
    import torch

    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=ids).logits[:, -1]  # the whole sequence again, every step
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return new_tokens


def measure_generate(cfg: BenchConfig, mode: str) -> dict[str, Any]:
    """Generation tokens/s at batch 1 and batched. ``mode``: reference, or a KV cache (dynamic, static,
    compiled). One untimed call on the first batch first (for ``compiled``: the compile, reported)."""
    import torch

    from heed.data.encode import prompt_ids
    from heed.data.tasks import make_tasks
    from heed.data.templates import get_template
    from heed.generate import generate_ids, make_decoder
    from heed.model import load_model, load_tokenizer
    from heed.runtime.device import autocast, choose_device, enable_tf32, resolve_precision

    device = choose_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template("alpaca")
    records = make_tasks(cfg.gen_prompts, 7)
    prompts = prompt_ids([template.prompt(r["instruction"], r["input"]) for r in records], tokenizer, template)
    if device.type == "cuda":
        enable_tf32(mode != "reference")
    model = load_model(cfg.model, fast=FastPath.none() if mode == "reference" else FastPath()).to(device).eval()
    precision = "fp32" if mode == "reference" else resolve_precision("auto", device)
    gen = GenerateConfig(max_new_tokens=cfg.gen_tokens, cache="dynamic" if mode == "reference" else mode)
    out: dict[str, Any] = {"mode": mode, "precision": precision}
    for label, batch in (("batch1", 1), ("batched", cfg.gen_prompts)):
        if mode == "reference" and label == "batched":
            continue
        decoder = None if mode == "reference" else make_decoder(model, gen)

        def produce(chunk: list[list[int]]) -> int:
            if mode == "reference":
                return sum(_reference_generate(model, p, cfg.gen_tokens, device) for p in chunk)
            with autocast(precision, device):
                rows = generate_ids(model, chunk, pad_id=tokenizer.pad_token_id, eos=-1, cfg=gen, decoder=decoder)
            return sum(len(r) for r in rows)

        chunks = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
        started = time.perf_counter()
        produce(chunks[0])
        _sync(device)
        out[f"{label}_first_call_s"] = time.perf_counter() - started
        started = time.perf_counter()
        produced = sum(produce(c) for c in chunks)
        _sync(device)
        out[f"{label}_tokens_per_s"] = produced / (time.perf_counter() - started)
    return out


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


class OutOfTime(Exception):
    """A measurement ran past the model's time limit (``BenchConfig.time_limit``)."""


def _child(kind: str, mode: str, cfg: BenchConfig, features: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process, so its allocator and peak memory are its own."""
    from heed.runtime import allocator

    args = [sys.executable, "-m", "heed.commands.bench", kind, mode, json.dumps(cfg.__dict__), json.dumps(features)]
    env = allocator.environment(os.environ, fast=features["allocator"] == "mimalloc") | {"TQDM_DISABLE": "1"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"{kind} {mode}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"bench {kind} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(cfg: BenchConfig, device: torch.device) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Every measurement of one model, in the order run: (result key, kind, mode, features)."""
    modes = TRAIN_MODES | (COMPILED_MODES if cfg.compile or device.type == "cuda" else {})
    steps = [(f"train_{mode}", "train", mode, features) for mode, features in modes.items()]
    if cfg.peer:
        steps.append(("train_trainer", "trainer", "trainer", TRAIN_MODES["fast"]))
    steps += [(f"generate_{name}", "generate", mode, TRAIN_MODES["reference" if name == "reference" else "fast"])
              for name, mode in GENERATE_MODES.items()]
    if cfg.ablation:
        steps += [(f"ablation/{name}", "train", name, features)
                  for name, features in (ABLATIONS | (CUDA_ABLATIONS if device.type == "cuda" else {})).items()]
    return steps


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


def describe_device(device: torch.device) -> str:
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


def main_child(argv: list[str]) -> None:
    import torch

    kind, mode, raw, features = argv
    cfg = BenchConfig(**json.loads(raw))
    torch.manual_seed(0)
    if kind == "trainer":
        result = measure_trainer(cfg)
    else:
        result = measure_train(cfg, json.loads(features)) if kind == "train" else measure_generate(cfg, mode)
    print(json.dumps(result))


if __name__ == "__main__":
    main_child(sys.argv[1:])


def cmd_bench(args: Any) -> int:
    import datetime
    import sys

    import torch

    from heed.commands.options import configure
    from heed.io import write_text

    stamp = datetime.date.today().isoformat()
    sections = []
    rows_started = False
    for model in args.model or ["random:gpt2"]:
        cfg = configure(BenchConfig, args, BenchConfig(model=model))
        validate(cfg)

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
