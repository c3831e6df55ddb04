"""Fast-path switches: the caching allocator, fused activations, and the benchmark that measures them."""

import os
import subprocess
import sys

import pytest
import torch

from heed.config import FastPath
from heed.runtime import allocator
from heed.commands.bench import FAST, GENERATE_MODES, TRAIN_MODES, BenchConfig, measure_generate, measure_train, table
from heed.model import load_model
from tests.tolerances import assert_rounding_close

needs_mimalloc = pytest.mark.skipif(allocator.library() is None or not sys.platform.startswith("linux"),
                                    reason="cmeel-mimalloc is installed on Linux x86-64 only")


@needs_mimalloc
def test_preloaded_child_runs_on_mimalloc_and_system_child_does_not():
    probe = [sys.executable, "-c", "from heed.runtime import allocator; print(allocator.loaded())"]
    fast = subprocess.run(probe, env=allocator.environment(os.environ, fast=True), capture_output=True,
                          text=True, check=True)
    plain = subprocess.run(probe, env=allocator.environment(os.environ, fast=False), capture_output=True,
                           text=True, check=True)
    assert fast.stdout.strip() == "True"
    assert plain.stdout.strip() == "False"


@needs_mimalloc
def test_reexec_only_for_model_commands_and_never_twice(monkeypatch):
    monkeypatch.setattr(allocator, "loaded", lambda: False)  # as in a process started without it
    env = {k: v for k, v in os.environ.items() if k not in (allocator.SWITCH, "LD_PRELOAD")}
    args, child_env = allocator.reexec_command(["train", "--data", "x.json"], env)
    assert args[1:] == ["-m", "heed", "train", "--data", "x.json"]
    assert "mimalloc" in child_env["LD_PRELOAD"] and child_env[allocator.SWITCH] == "mimalloc"
    assert allocator.reexec_command(["data", "check"], env) is None
    assert allocator.reexec_command(["train"], child_env) is None  # the re-executed process goes on
    assert allocator.reexec_command(["train"], env | {allocator.SWITCH: "system"}) is None  # the user's opt-out


def test_system_environment_drops_only_mimalloc_from_preload():
    env = allocator.environment({"LD_PRELOAD": "/x/libmimalloc.so:/y/libother.so"}, fast=False)
    assert env["LD_PRELOAD"] == "/y/libother.so" and env[allocator.SWITCH] == "system"


def test_fused_gelu_gives_the_same_logits():
    from transformers.activations import GELUTanh, NewGELUActivation

    fast, plain = load_model("random:gpt2-tiny", seed=5), load_model("random:gpt2-tiny", seed=5, fast=FastPath.none())
    assert type(fast.transformer.h[0].mlp.act) is GELUTanh
    assert type(plain.transformer.h[0].mlp.act) is NewGELUActivation
    ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():  # the GELU rounds differently; the MLP's 4 x 64 sum carries that to the logits
        assert_rounding_close(fast(input_ids=ids).logits, plain(input_ids=ids).logits, terms=4 * 64)


def test_bench_measures_reference_and_fast_path_on_the_same_batches():
    cfg = BenchConfig(model="random:gpt2-tiny", steps=1, batch_size=4)
    ref = measure_train(cfg, TRAIN_MODES["reference"])
    fast = measure_train(cfg, FAST | {"precision": "fp32"})
    assert ref["batch"] == fast["batch"] == 4 and ref["mean_len"] == fast["mean_len"]
    assert ref["tokens_per_s"] > 0 and fast["tokens_per_s"] > 0
    budget = measure_train(cfg, TRAIN_MODES["budget"] | {"precision": "fp32"})
    assert budget["batch"] == 4 * cfg.budget_scale
    compiled = {"batch1_tokens_per_s": 12.0, "batched_tokens_per_s": 80.0, "batch1_first_call_s": 9.0}
    gen = {"batch1_tokens_per_s": 10.0, "batched_tokens_per_s": 40.0}
    results = {"config": cfg.__dict__, "device": "cpu", "peak_flops": 1e12, "train_reference": ref,
               "train_fast": fast, "train_packed": fast, "train_budget": budget,
               "generate_reference": gen, "generate_fast": gen, "generate_compiled": compiled,
               "ablation": {"fast, fp32": ref}}
    text = table(results)
    assert "| train: non-padding tokens/s |" in text and "16 examples a step" in text
    assert "| fast, fp32 |" in text
    assert "static KV cache, compiled step: tokens/s, batch 1 (first call" in text


def test_bench_generation_modes_produce_tokens():
    cfg = BenchConfig(model="random:gpt2-tiny", gen_prompts=2, gen_tokens=3)
    for mode in GENERATE_MODES.values():
        out = measure_generate(cfg, mode)
        assert out["batch1_tokens_per_s"] > 0 and out["batch1_first_call_s"] > 0
        assert ("batched_tokens_per_s" in out) == (mode != "reference")


def test_bench_compiled_training_warms_up_every_timed_shape():
    from heed.commands.bench import COMPILED_MODES

    cfg = BenchConfig(model="random:gpt2-tiny", steps=3, batch_size=2, pack_length=128)
    out = measure_train(cfg, COMPILED_MODES["compiled"] | {"precision": "fp32"})
    assert out["tokens_per_s"] > 0 and out["warmup_steps"] >= 2
    gen = {"batch1_tokens_per_s": 10.0, "batched_tokens_per_s": 40.0}
    results = {"config": cfg.__dict__, "device": "cpu", "peak_flops": 1e12, "train_reference": out,
               "train_fast": out, "train_packed": out, "train_budget": out, "train_compiled": out,
               "generate_reference": gen, "generate_fast": gen}
    assert "packing, compiled (static shapes; compiling took" in table(results)
