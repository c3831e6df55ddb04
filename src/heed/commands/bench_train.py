"""``heed bench``'s training measurements: one set of features through ``heed train``'s own step
(``measure_train``: the reference loop, the fast path, its ablations) and the transformers.Trainer peer
row (``measure_trainer``), each on the same examples, 2 warmup steps before the timed ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heed.commands.bench_config import BenchConfig
from heed.config import FastPath
from heed.errors import HeedError

if TYPE_CHECKING:
    import torch


def _examples(cfg: BenchConfig, tokenizer: Any) -> list[Any]:
    from heed.data.encode import encode_records
    from heed.data.records import Record, load_records
    from heed.data.tasks import make_tasks
    from heed.data.templates import get_template

    if cfg.data and Path(cfg.data).is_file():
        records = load_records(cfg.data)
    else:
        records = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(make_tasks(400, 1))]
    examples, _ = encode_records(records, get_template("alpaca"), tokenizer, max_length=1024)
    return examples


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device: torch.device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:  # high-water mark of resident memory
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def fast_path(features: dict[str, Any]) -> FastPath:
    """The library's feature set for one measurement's switches."""
    return FastPath(head=features["head"], tied_lookup=features["tied_lookup"],
                    fused_adamw=features["optimizer"] == "fused", fold_clip=features["fold_clip"],
                    fused_act=features["fused_act"], short_attn=features["short_attn"],
                    packed_attn=features.get("packed_attn", "auto"))


def measure_train(cfg: BenchConfig, features: dict[str, Any]) -> dict[str, Any]:
    """Training tokens/s of one set of features, through ``heed train``'s own step (``train_step``)."""
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
    sync(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for group in timed:
        step(group)
    sync(device)
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
            "achieved_flops": flops_per_token * tokens / seconds, "peak_bytes": peak_bytes(device),
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
    if not groups:
        raise HeedError(f"--data {cfg.data or 'built-in tasks'}: {len(examples)} examples, fewer than one "
                        f"{'larger-budget ' if budget else ''}step needs ("
                        + (f"--tokens-per-step {cfg.tokens_per_step}" if budget and cfg.tokens_per_step else
                           f"{size} = --batch-size {cfg.batch_size}" + (f" x {cfg.budget_scale}" if budget else ""))
                        + "); give more records or a smaller step")
    return [groups[step % len(groups)] for step in range(cfg.steps + 2)]


def measure_trainer(cfg: BenchConfig) -> dict[str, Any]:
    """The peer row: the same model, examples and batch size through ``transformers.Trainer`` as people use
    it (bf16 where the hardware has it, fused AdamW, ``DataCollatorForSeq2Seq`` padding each batch);
    non-padding tokens/s over the steps after 2 warmup steps."""
    import tempfile

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
            sync(device)
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
            "peak_bytes": peak_bytes(device)}
