"""``heed bench``'s settings and what each of its measurements switches on (``heed.commands.bench`` runs
them; ``bench_train`` and ``bench_generate`` measure them; ``bench_report`` writes them out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heed.config import at_least, check_fields, opt


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
HEAD_ABLATION = "fast, heed's head instead of torch's linear_cross_entropy"
CUDA_ABLATIONS = {
    "fast, IEEE fp32 where autocast leaves fp32 (no TF32)": FAST | {"tf32": False},
    HEAD_ABLATION: FAST | {"head": "supervised"},
    "fast + packing, packed rows through a dense mask instead of FlexAttention": FAST | {"pack": True,
                                                                                         "packed_attn": "mask"},
}
# The rows BENCHMARKS.md's GPU targets are read against, in the order ``plan`` measures them on CUDA before
# any other: the reference loop and the fast path at batch 8, the token-budget step, the transformers.Trainer
# peer, generation with the compiled step (batch 1 and batched), the ablation that decides heed's head on
# CUDA, then the compiled token-budget step. Under scripts/gpu-check.sh's time limit per model, a slow
# measurement (the reference generation: 64 prompts one at a time, no KV cache) then costs only rows that
# no target needs.
TARGET_ROWS = ("train_reference", "train_fast", "train_budget", "train_trainer", "generate_compiled",
               f"ablation/{HEAD_ABLATION}", "train_budget_compiled")
