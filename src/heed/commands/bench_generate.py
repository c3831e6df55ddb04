"""``heed bench``'s generation measurements: tokens/s at batch 1 and batched, for the reference (one
prompt at a time, the whole sequence recomputed for every new token) or a KV cache heed uses."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from heed.commands.bench_config import BenchConfig
from heed.commands.bench_train import sync
from heed.config import FastPath, GenerateConfig

if TYPE_CHECKING:
    import torch


def _reference_generate(model: Any, prompt: list[int], new_tokens: int, device: torch.device) -> int:
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
        sync(device)
        out[f"{label}_first_call_s"] = time.perf_counter() - started
        started = time.perf_counter()
        produced = sum(produce(c) for c in chunks)
        sync(device)
        out[f"{label}_tokens_per_s"] = produced / (time.perf_counter() - started)
    return out
