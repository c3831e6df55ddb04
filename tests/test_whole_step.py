"""The whole decoding step (model, argmax, padding, finished flags, positions) compiled as one function must
decode exactly what the dynamic cache decodes, leave the same bookkeeping behind, and stay out of the way
where it does not apply (sampling, a streamed batch)."""

import pytest
import torch

from heed.config import GenerateConfig
from heed.generate import generate_ids, make_decoder
from heed.generate.decode import full_length_cache
from heed.generate.rows import Rows, record
from heed.model import load_model
from tests.test_decode import _prompts, _tiny_gemma3

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2

PAD = 50256
RAW = ["Add 2 and 3.", "Write a long poem about the sea and the stars, with rhymes.", "Hi"]


def test_record_pads_finished_rows_and_stops_rows_at_their_limits():
    """The docstring's worked example, by hand: rows finish on EOS or at their limit, then get padding."""
    rows = Rows.empty(2, 3, torch.device("cpu"))
    rows.start(torch.tensor([[4], [6]]), torch.tensor([3, 1]), pad_id=0, eos=2)
    record(rows, torch.tensor([5, 7]))
    assert rows.finished.tolist() == [False, True]  # row 1: its one token
    record(rows, torch.tensor([2, 9]))
    assert rows.tokens.tolist() == [[5, 2, 0], [7, 0, 0]] and rows.finished.tolist() == [True, True]
    assert rows.token.tolist() == [[2], [0]] and rows.step.tolist() == [2]
    rows.advance_positions()
    assert rows.positions.tolist() == [[5], [6]]  # row 1 stays at its last position: 6 + 1 - 1


def _expected_rows(out, limits, eos, ran):
    """The (B, ran) token buffer the bookkeeping must leave: each row's tokens, its EOS if it chose one, then
    padding."""
    return [(o + ([eos] if len(o) < n else []) + [PAD] * ran)[:ran] for o, n in zip(out, limits)]


def _finishing_steps(out, limits):
    return [len(o) + 1 if len(o) < n else n for o, n in zip(out, limits)]


def _no_model_step(*args):
    raise AssertionError("the per-step path ran: the whole step was expected")


@pytest.mark.parametrize("arch,batch,check_every,eos,limits", [
    ("gpt2", 3, 1, 8991, [16, 11, 6]),  # row 0 ends on EOS after 3 tokens, rows 1 and 2 at their limits
    ("gpt2", 1, 5, 34809, [16]),  # ends on EOS after 8 tokens: checked at 5, then at 10
    ("gemma3", 3, 5, 21741, [24, 20, 24]),  # EOS after 7 and 10 tokens, a limit at 20; past the 16-token window
])
def test_whole_step_decodes_like_the_dynamic_cache(arch, batch, check_every, eos, limits, tokenizer):
    if arch == "gpt2":
        model = load_model("random:gpt2-tiny", seed=5)
        prompts = [tokenizer(t)["input_ids"] for t in (RAW if batch == 3 else RAW[1:2])]
    else:
        model, prompts = _tiny_gemma3(), _prompts(tokenizer)
    cfg = GenerateConfig(max_new_tokens=max(limits))
    expected = generate_ids(model, prompts, pad_id=PAD, eos=eos, cfg=cfg, limits=limits, check_every=check_every)
    finishing = _finishing_steps(expected, limits)
    assert len(set(finishing)) == len(finishing) and any(len(o) < n for o, n in zip(expected, limits))
    decoder = make_decoder(model, GenerateConfig(cache="compiled"))
    assert decoder.whole_steps
    decoder._step = _no_model_step
    got = generate_ids(model, prompts, pad_id=PAD, eos=eos, cfg=cfg, decoder=decoder, limits=limits,
                       check_every=check_every)
    assert got == expected
    # The bookkeeping inside the step: finished rows padded, limits kept, and the loop stopped at the first
    # check after the last row finished (it would run all steps if the finished flags never rose).
    ran = min(cfg.max_new_tokens, -(-max(finishing) // check_every) * check_every)
    rows = decoder.rows()
    assert rows.step.tolist() == [ran] and rows.finished.all()
    assert rows.tokens[:, :ran].tolist() == _expected_rows(expected, limits, eos, ran)
    # Again with other settings on the same buffers and graph: nothing of the first batch is left over.
    again = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg, decoder=decoder)
    assert again == generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg)


def test_full_length_cache_counts_only_in_tensors():
    """Gemma 3's sliding layers keep every position (the mask applies the window), so no layer holds a Python
    counter that a compiled step would see change."""
    model = _tiny_gemma3()
    cache = full_length_cache(model.config, 64)
    assert [type(layer).__name__ for layer in cache.layers] == ["StaticLayer", "StaticLayer"]
    assert all(layer.max_cache_len == 64 for layer in cache.layers)
    assert not any(hasattr(layer, "cumulative_length_int") for layer in cache.layers)


@pytest.mark.parametrize("top_k,top_p,check_every", [(50, None, 1), (None, 0.9, 4)])
def test_sampling_runs_in_the_whole_step_and_draws_what_the_dynamic_cache_draws(top_k, top_p, check_every,
                                                                                  tokenizer):
    """Sampling's uniform numbers come from the caller's generator, drawn up front: the compiled whole step
    picks the dynamic cache's tokens, and leaves the generator where it does. (With top-p at temperature
    1.5 this random model keeps ~45k nearly equal tokens, and the compiled and eager cumulative sums round
    a draw onto neighbouring tokens: 0.7 keeps the test about the step, not the rounding.)"""
    model = load_model("random:gpt2-tiny", seed=5)
    prompts = [tokenizer(t)["input_ids"] for t in RAW]
    cfg = GenerateConfig(max_new_tokens=10, temperature=0.7 if top_p else 1.5, top_k=top_k, top_p=top_p)
    old_rng, new_rng = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg, generator=old_rng)
    decoder = make_decoder(model, GenerateConfig(cache="compiled"))
    decoder._step = _no_model_step
    got = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg, decoder=decoder, generator=new_rng,
                       check_every=check_every)
    assert got == expected
    assert torch.equal(torch.rand(4, generator=new_rng), torch.rand(4, generator=old_rng))
    greedy = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=GenerateConfig(max_new_tokens=10))
    assert got != greedy  # it sampled


def test_a_streamed_batch_goes_step_by_step_through_the_tap(tokenizer):
    """heed serve's Tap hands each step's tokens to a stream, so a tapped compiled decoder must not take the
    whole step (which never calls ``step``): the tokens streamed are the answer's, as greedy as untapped."""
    from heed.serve.batcher import Job, Tap

    model = load_model("random:gpt2-tiny", seed=5)
    prompts = [tokenizer(t)["input_ids"] for t in RAW]
    cfg = GenerateConfig(max_new_tokens=8)
    expected = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg)
    decoder = make_decoder(model, GenerateConfig(cache="compiled"))
    streamed: list[list[int]] = [[], [], []]
    jobs = [Job(p, 8) for p in prompts]
    for job, seen in zip(jobs, streamed):
        job.on_tokens = seen.extend
    tapped = Tap(decoder, jobs, eos=-1)
    assert not tapped.whole_steps
    got = generate_ids(model, prompts, pad_id=PAD, eos=-1, cfg=cfg, decoder=tapped)
    assert got == expected
    assert all(seen == row[:len(seen)] and len(seen) == len(row) - 1 for seen, row in zip(streamed, got))


@pytest.fixture(scope="module")
def gemma():
    from heed.model import load_tokenizer
    from heed.model.gguf import COMPLETE, cache_dir

    if not (cache_dir() / "models" / "gemma-3-270m" / COMPLETE).is_file():
        pytest.skip(f"Gemma 3 270M is not converted under {cache_dir()} (heed converts it on first use of "
                    "gemma-3-270m; converting here would take minutes)")
    return load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")


def test_whole_step_decodes_the_real_gemma3_like_the_dynamic_cache(gemma):
    """The real weights (fp32), one prompt running past the 512-token sliding window as it decodes, one short
    row stopping at its limit: the full-length cache with the window in the mask is token-exact."""
    model, tok = gemma
    text = " ".join(f"Item {i} is {'red' if i % 3 else 'blue'}." for i in range(120)) + " The colour of item 7 is"
    prompts = [tok(text)["input_ids"][-508:], tok("The capital of France is")["input_ids"]]
    cfg, limits = GenerateConfig(max_new_tokens=8), [8, 3]
    eos = tok.eos_token_id
    expected = generate_ids(model, prompts, pad_id=tok.pad_token_id, eos=eos, cfg=cfg, limits=limits)
    decoder = make_decoder(model, GenerateConfig(cache="compiled"))
    decoder._step = _no_model_step
    got = generate_ids(model, prompts, pad_id=tok.pad_token_id, eos=eos, cfg=cfg, decoder=decoder, limits=limits)
    assert got == expected and [len(o) for o in got] == limits
    assert decoder.rows().tokens[1, :8].tolist() == expected[1] + [tok.pad_token_id] * 5
