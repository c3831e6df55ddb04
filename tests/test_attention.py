"""Short-row attention on the CPU (``heed.attention``): the same function as SDPA, where it is used."""

import json

import pytest
import torch

import heed.model.attention as attention
from heed.config import FastPath
from heed.model.attention import NAME, use_short_attention
from heed.model import load_model
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2


def _gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
    return Gemma3ForCausalLM(config)


def _gpt2():
    return load_model("random:gpt2-tiny", seed=3, fast=FastPath.none())


def _count_sdpa(monkeypatch):
    calls = []
    real = attention._sdpa()
    monkeypatch.setattr(attention, "_sdpa", lambda: lambda *a, **k: (calls.append(a[1].shape), real(*a, **k))[1])
    return calls


def _logits_and_grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    (logits[mask.bool()].float() ** 2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [_gpt2, _gemma])  # plain heads; grouped-query heads with a sliding window
def test_same_outputs_and_gradients_as_sdpa(build, monkeypatch):
    model = build().train()
    torch.manual_seed(1)
    ids = torch.randint(1, 500, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0  # right padding
    expected, expected_grads = _logits_and_grads(model, ids, mask)
    assert model.config._attn_implementation == "sdpa"
    use_short_attention(model)
    assert model.config._attn_implementation == NAME
    calls = _count_sdpa(monkeypatch)
    logits, grads = _logits_and_grads(model, ids, mask)
    assert calls == [], "40-token rows are written out"
    keep = mask.bool()
    # Another order of the same sums: the logits went through sums of at most 256 (GPT-2 tiny's MLP), the
    # gradients through the loss's mean over every logit, of which each position has a vocabulary's worth.
    assert_rounding_close(logits[keep], expected[keep], terms=256)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert_rounding_close(grads[name], expected_grads[name], terms=model.config.vocab_size, msg=name)


def test_bf16_stays_close_to_fp32():
    model = use_short_attention(_gemma().eval())
    ids = torch.randint(1, 500, (2, 60))
    with torch.no_grad():
        exact = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(input_ids=ids).logits.float()
    # Each of the 9 matmuls from the embeddings to the logits (4 a layer, then the head) rounds its inputs
    # to bf16 once; those relative errors add up along the way.
    assert_rounding_close(fast, exact, dtype=torch.bfloat16, terms=9)


def test_long_rows_decoding_and_wide_heads_go_to_sdpa(monkeypatch):
    model = use_short_attention(_gpt2().eval())
    calls = _count_sdpa(monkeypatch)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 50000, (1, attention.SHORT + 1)))
    assert len(calls) == 2  # both layers: the row is too long
    calls.clear()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 50000, (1, 10)), use_cache=True)
        model(input_ids=torch.tensor([[5]]), past_key_values=out.past_key_values, use_cache=True)
    assert [shape[2] for shape in calls] == [1, 1]  # the prompt is written out, the one-token step is not
    calls.clear()
    monkeypatch.setattr(attention, "WIDEST_HEAD", 16)  # gpt2-tiny's heads are 32 wide
    with torch.no_grad():
        model(input_ids=torch.randint(0, 50000, (1, 10)))
    assert len(calls) == 2


def test_greedy_generation_unchanged_and_left_padding_gives_no_nan():
    from heed.config import GenerateConfig
    from heed.generate import generate_ids

    plain, fast = _gpt2(), use_short_attention(_gpt2())
    prompts = [[464, 3290, 318], [40, 1101, 257, 3797, 11, 340, 318, 257]]  # left-padded together
    with torch.no_grad():
        logits = fast(input_ids=torch.tensor([[50256] * 5 + prompts[0]]),
                      attention_mask=torch.tensor([[0] * 5 + [1] * 3])).logits
    assert torch.isfinite(logits).all()
    cfg = GenerateConfig(max_new_tokens=8)
    a = generate_ids(plain, prompts, pad_id=50256, eos=-1, cfg=cfg)
    b = generate_ids(fast, prompts, pad_id=50256, eos=-1, cfg=cfg)
    assert a == b and all(len(x) == 8 for x in a)


def test_fast_models_use_it_and_the_saved_config_does_not(tmp_path):
    assert load_model("random:gpt2-tiny").config._attn_implementation == NAME
    assert load_model("random:gpt2-tiny", fast=FastPath.none()).config._attn_implementation == "sdpa"
    load_model("random:gpt2-tiny").save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())


def test_cudnn_attention_only_for_static_shapes_on_cuda():
    """cuDNN builds a plan per new shape (~430 µs of CPU each on an H100): excluded for dynamic shapes on
    CUDA, kept for static ones; the CPU is never restricted."""
    from torch.nn.attention import SDPBackend

    from heed.model.attention import attention_backends, sdpa_backends

    dynamic = sdpa_backends("cuda", static=False)
    assert SDPBackend.CUDNN_ATTENTION not in dynamic
    assert {SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH} <= set(dynamic)
    assert sdpa_backends("cuda", static=True) is None
    assert sdpa_backends("cpu", static=False) is None and sdpa_backends("cpu", static=True) is None
    q = torch.randn(1, 2, 5, 8)
    with attention_backends(torch.device("cpu"), static=False):  # a no-op on the CPU: every kernel allowed
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)


def test_train_step_and_decoding_ask_for_the_backends_their_shapes_need(monkeypatch, tokenizer):
    """The training step asks with its static flag; generation's prefill as dynamic, a static cache's steps
    as static."""
    import heed.generate.responses as responses
    import heed.train.loop as loop
    from heed.config import GenerateConfig
    from heed.model import load_model

    asked = []

    def spy(device, static):
        asked.append(static)
        import contextlib
        return contextlib.nullcontext()

    monkeypatch.setattr(responses, "attention_backends", spy)
    model = load_model("random:gpt2-tiny", seed=3)
    responses.generate_ids(model, [[1, 2, 3]], pad_id=0, eos=-1, cfg=GenerateConfig(max_new_tokens=2, cache="static"))
    responses.generate_ids(model, [[1, 2, 3]], pad_id=0, eos=-1, cfg=GenerateConfig(max_new_tokens=2, cache="dynamic"))
    assert asked == [False, True, False, False]
    monkeypatch.setattr(loop, "attention_backends", spy)
    asked.clear()
    from heed.data.encode import build_example

    examples = [build_example(0, [1, 2, 3], [4, 5]), build_example(1, [6], [7, 8, 9])]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for static in (False, True):
        loop.train_step(model, opt, None, examples, grad_accum=2, pad_id=0, clip=None, precision="fp32",
                        device=torch.device("cpu"), static=static)
    assert asked == [False, False, True, True]  # one question per micro-batch
