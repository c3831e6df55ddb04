"""Static and compiled KV caches must decode exactly what the dynamic cache decodes."""

import pytest
import torch

from heed.config import GenerateConfig
from heed.data.encode import prompt_ids
from heed.data.templates import TEMPLATES
from heed.generate.decode import KEPT_SHAPES, StaticDecoder
from heed.runtime.compile import BUCKET, cache_length as bucket
from heed.generate import generate_ids, make_decoder
from heed.model import load_model
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2

PROMPTS = ["Add 2 and 3.", "Write a long poem about the sea and the stars, with rhymes.", "Hi"]


def _prompts(tokenizer):
    return prompt_ids([TEMPLATES["alpaca"].prompt(p, "") for p in PROMPTS], tokenizer, TEMPLATES["alpaca"])


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=50256)
    return Gemma3ForCausalLM(config).eval()


def test_bucket():
    assert [bucket(n) for n in (1, BUCKET, BUCKET + 1)] == [BUCKET, BUCKET, 2 * BUCKET]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
@pytest.mark.parametrize("bf16", [False, True])
def test_static_cache_decodes_like_the_dynamic_cache(arch, bf16, tokenizer):
    model = load_model("random:gpt2-tiny", seed=3) if arch == "gpt2" else _tiny_gemma3()
    ps = _prompts(tokenizer)
    assert len({len(p) for p in ps}) == 3  # left padding in play; Gemma's 16-token window is exceeded
    run = {}
    for cache in ("dynamic", "static"):
        cfg = GenerateConfig(max_new_tokens=20, cache=cache)
        # Under autocast Gemma 3's keys stay fp32 while its values are bf16: the static cache must cope.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run[cache] = generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg)
    assert run["static"] == run["dynamic"]
    assert all(len(r) == 20 for r in run["static"])


def test_static_decoder_is_reused_across_batches(tokenizer):
    model = load_model("random:gpt2-tiny", seed=3)
    ps = _prompts(tokenizer)
    decoder = make_decoder(model, GenerateConfig(cache="static"))
    cfg = GenerateConfig(max_new_tokens=8)
    first = generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    cache = decoder.cache
    again = generate_ids(model, ps[::-1], pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    assert decoder.cache is cache  # same shape: reset, not reallocated
    assert again == first[::-1]  # and nothing of the first batch leaks into the second
    generate_ids(model, ps[:1], pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    assert decoder.cache is not cache  # another batch size: a new cache
    mask = decoder.mask
    back = generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    assert decoder.cache is cache and back == first  # the first shape's buffers were kept, and reset
    for extra in range(1, 1 + KEPT_SHAPES):  # more batch sizes than are kept: the least recent goes
        generate_ids(model, (ps * 8)[:len(ps) + extra], pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    assert len(decoder._kept) == KEPT_SHAPES
    generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg, decoder=decoder)
    assert decoder.mask is not mask and decoder.cache is not cache


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_compiled_step_decodes_like_the_dynamic_cache(arch, tokenizer):
    """In fp32 the compiled step is token-exact, past Gemma's full sliding window (16 positions)."""
    model = load_model("random:gpt2-tiny", seed=3) if arch == "gpt2" else _tiny_gemma3()
    ps = _prompts(tokenizer)
    cfg = GenerateConfig(max_new_tokens=24)
    dynamic = generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg)
    decoder = make_decoder(model, GenerateConfig(cache="compiled"))
    assert isinstance(decoder, StaticDecoder) and decoder.compile
    assert generate_ids(model, ps, pad_id=50256, eos=-1, cfg=cfg, decoder=decoder) == dynamic
    assert generate_ids(model, ps[:1], pad_id=50256, eos=-1, cfg=cfg, decoder=decoder) == dynamic[:1]


def test_unknown_cache_is_a_one_line_error():
    from heed.errors import HeedError

    with pytest.raises(HeedError, match="--cache paged: choose auto, dynamic, static or compiled"):
        make_decoder(load_model("random:gpt2-tiny"), GenerateConfig(cache="paged"))


def test_matmul_weights_same_logits_under_autocast_and_model_restored():
    from heed.runtime.compile import matmul_weights

    model = load_model("random:gpt2-tiny", seed=3).eval()
    head, wte = model.get_output_embeddings(), model.get_input_embeddings()
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    ids = torch.randint(0, 50257, (2, 9))
    copies: dict = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits
        with matmul_weights(model, torch.bfloat16, copies):
            assert head.weight.dtype == torch.bfloat16 and head.weight is not wte.weight
            assert wte.weight.dtype == torch.float32  # the embedding keeps its weights
            assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
            got = model(input_ids=ids).logits
    # Exact: autocast casts the fp32 weights to the same bf16 values on each call, so the same kernels see the
    # same operands in the same process.
    assert torch.equal(got, expected)
    assert copies  # made once, kept for the next call
    assert head.weight is wte.weight  # tied again
    for name, p in model.named_parameters():
        original, values = params[name]
        assert p is original and p.dtype == torch.float32 and torch.equal(p, values), name


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_compiled_step_under_bf16_autocast_matches_eager_logits(arch, tokenizer):
    """Under bf16 the compiled step rounds differently (inductor keeps fused intermediates in fp32), so
    near-tied greedy tokens may differ: compare one step's logits, and the model must come back fp32."""
    model = load_model("random:gpt2-tiny", seed=3) if arch == "gpt2" else _tiny_gemma3()
    model.eval()
    ps = _prompts(tokenizer)
    ids = torch.full((3, max(map(len, ps))), 50256)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(ps):
        ids[row, ids.shape[1] - len(p):], mask[row, ids.shape[1] - len(p):] = torch.tensor(p), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    token, step_pos = torch.tensor([[11], [12], [13]]), positions[:, -1:] + 1
    logits = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name, decoder in (("eager", StaticDecoder(model)), ("compiled", StaticDecoder(model, compile=True))):
            with decoder.running():
                decoder.prefill(ids, mask, positions, 8)
                logits[name] = decoder.step(token, step_pos).float()
    # Both round the matmuls' inputs to bf16 alike; only eager's extra roundings of elementwise results
    # differ, and the bf16 logits themselves round: a few bf16 units of the largest logit.
    assert_rounding_close(logits["compiled"], logits["eager"], dtype=torch.bfloat16, terms=1)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# --- decoding without a host round trip per token ------------------------------------------------


@torch.no_grad()
def _per_token_loop(model, prompts, *, pad_id, eos, cfg, generator=None):
    """generate_ids as it was before the bookkeeping moved to the device: asks the host every token."""
    from heed.generate.responses import choose

    model.eval()
    decoder = make_decoder(model, cfg)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p))
        mask[row, width - len(p):] = 1
    prompt_positions = (mask.cumsum(-1) - 1).clamp(min=0)
    positions = prompt_positions[:, -1:]
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    out = [[] for _ in prompts]
    noise = torch.rand((len(prompts), cfg.max_new_tokens), generator=generator) if cfg.temperature > 0 else None
    with decoder.running():
        logits = decoder.prefill(ids, mask, prompt_positions, cfg.max_new_tokens)
        for i in range(cfg.max_new_tokens):
            token = choose(logits.float(), cfg, None if noise is None else noise[:, i])
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            for row in (~finished & (token != eos)).nonzero().flatten().tolist():
                out[row].append(int(token[row]))
            finished |= token == eos
            if bool(finished.all()) or i == cfg.max_new_tokens - 1:
                break
            positions = positions + 1
            logits = decoder.step(token[:, None], positions)
    return out


@pytest.mark.parametrize("arch,cache,temperature,check_every", [
    ("gpt2", "dynamic", 0.0, 5), ("gpt2", "static", 1.5, 5), ("gemma3", "dynamic", 1.5, 5),
    ("gemma3", "static", 0.0, 5), ("gemma3", "static", 1.5, 1)])
def test_device_bookkeeping_decodes_like_the_per_token_loop(arch, cache, temperature, check_every, tokenizer):
    """Same tokens as the loop that synced every token, greedy and seeded sampling, each row stopping at its
    own EOS; checking "all finished" only every 5 steps runs extra steps, which must leave the sampling
    generator exactly where the per-token loop leaves it (the next batch draws the same numbers): both
    draw a batch's uniform numbers up front."""
    model = load_model("random:gpt2-tiny", seed=3) if arch == "gpt2" else _tiny_gemma3()
    ps = _prompts(tokenizer)
    cfg = GenerateConfig(max_new_tokens=18, cache=cache, temperature=temperature, top_k=50)
    free = _per_token_loop(model, ps, pad_id=50256, eos=-1, cfg=cfg, generator=torch.Generator().manual_seed(5))
    eos = free[1][3]  # a token row 1 makes early: rows stop at different steps (or never)
    old_rng, new_rng = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = _per_token_loop(model, ps, pad_id=50256, eos=eos, cfg=cfg, generator=old_rng)
    got = generate_ids(model, ps, pad_id=50256, eos=eos, cfg=cfg, generator=new_rng, check_every=check_every)
    assert got == expected
    assert any(len(r) < 18 for r in got) and eos not in sum(got, [])
    assert torch.equal(torch.rand(4, generator=new_rng), torch.rand(4, generator=old_rng))


def test_one_generate_call_syncs_a_constant_number_of_times():
    """Counting the calls that make the host wait for the device (tolist, item, bool, nonzero) in heed's
    decoding loop, with a stand-in decoder: the per-token loop made 2 per token, now 1 per check_every."""
    from torch.overrides import TorchFunctionMode

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    class Decoder:
        def running(self):
            import contextlib
            return contextlib.nullcontext()

        def prefill(self, ids, mask, positions, n):
            return torch.arange(10.0).expand(len(ids), 10)

        def step(self, token, positions):
            return torch.arange(10.0).expand(len(token), 10)

    class CountSyncs(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("tolist", "item", "__bool__", "nonzero", "__int__"):
                CountSyncs.count += 1
            return func(*args, **(kwargs or {}))

    cfg = GenerateConfig(max_new_tokens=64)
    with CountSyncs():
        out = generate_ids(Stub(), [[1, 2], [3]], pad_id=0, eos=-1, cfg=cfg, decoder=Decoder(), check_every=16)
    assert out == [[9] * 64, [9] * 64]
    assert CountSyncs.count <= 64 // 16 + 1  # 3 checks + the final copy; the per-token loop made 126


def test_auto_cache_is_dynamic_on_cpu_and_compiled_on_cuda():
    from heed.generate.decode import DynamicDecoder
    from heed.generate.responses import resolve_cache

    assert resolve_cache("auto", torch.device("cpu")) == "dynamic"
    assert resolve_cache("auto", torch.device("cuda", 0)) == "compiled"
    assert resolve_cache("static", torch.device("cuda", 0)) == "static"
    assert GenerateConfig().cache == "auto"
    assert isinstance(make_decoder(load_model("random:gpt2-tiny"), GenerateConfig()), DynamicDecoder)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_prefill_projects_only_the_last_position_onto_the_vocabulary(cache, arch, tokenizer):
    """The vocabulary head sees one position a row in the prefill as in every step, and the greedy
    tokens are still those of a full forward pass without a cache."""
    model = load_model("random:gpt2-tiny", seed=3) if arch == "gpt2" else _tiny_gemma3()
    widths = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: widths.append(out.shape[1]))
    try:
        got = generate_ids(model, _prompts(tokenizer), pad_id=50256, eos=-1,
                           cfg=GenerateConfig(max_new_tokens=3, cache=cache))
    finally:
        hook.remove()
    assert widths == [1, 1, 1]  # the prefill and two steps; without logits_to_keep the first is the prompt's width
    with torch.no_grad():
        first = [int(model(input_ids=torch.tensor([p])).logits[0, -1].argmax()) for p in _prompts(tokenizer)]
    assert [g[0] for g in got] == first
