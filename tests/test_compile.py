"""Compiled training: bucketed static shapes, the same losses as eager, generation left eager."""

import json

import pytest
import torch

from heed.data.batch import collate, make_batch
from heed.runtime.compile import BUCKET, row_bucket
from heed.data.encode import IGNORE_INDEX
from heed.runtime.compile import compiled as compiled_for
from heed.train.loss import compile_body, loss_sum
from heed.model import load_model
from heed.commands.finetune import finetune
from tests.test_train import CPU, VOCAB, examples, quiet, run_config
from tests.tolerances import assert_rounding_close


def test_static_batches_are_bucketed_and_lose_nothing(tokenizer):
    exs = examples(tokenizer)
    padded = make_batch(exs, 50256, static=True)
    assert padded.inputs.shape[1] % BUCKET == 0
    plain = collate(exs, 50256)
    assert padded.tokens == plain.tokens and padded.supervised_tokens == plain.supervised_tokens
    packed = make_batch(exs[:3], 50256, pack_capacity=200, static=True)
    loose = make_batch(exs[:3], 50256, pack_capacity=200)
    rows = packed.inputs.shape[0]
    assert packed.inputs.shape[1] == 200 and rows == row_bucket(loose.inputs.shape[0])
    assert packed.tokens == loose.tokens and packed.supervised_tokens == loose.supervised_tokens
    assert (packed.targets[loose.inputs.shape[0]:] == IGNORE_INDEX).all()  # padding rows train nothing
    model = load_model("random:gpt2-tiny", seed=1)
    with torch.no_grad():
        for a, b in ((padded, plain), (packed, loose)):
            assert_rounding_close(loss_sum(model, a, "fp32", CPU), loss_sum(model, b, "fp32", CPU), terms=VOCAB)


def test_static_packing_handles_an_example_longer_than_a_row(tokenizer):
    exs = examples(tokenizer)
    longest = max(len(e.input_ids) - 1 for e in exs)
    batch = make_batch(exs, 50256, pack_capacity=longest - 5, static=True)
    assert batch.inputs.shape[1] == -(-longest // BUCKET) * BUCKET
    assert batch.tokens == sum(len(e.input_ids) - 1 for e in exs)


def test_row_buckets_are_few_and_tight():
    assert [row_bucket(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert row_bucket(17) == 24 and row_bucket(25) == 32 and row_bucket(33) == 48
    assert all(n <= row_bucket(n) and (row_bucket(n) - n) * 3 < row_bucket(n) for n in range(1, 500))
    assert len({row_bucket(n) for n in range(1, 1025)}) == 20


@pytest.mark.kernels
def test_compiled_loss_matches_eager_and_model_stays_eager(tokenizer):
    model = load_model("random:gpt2-tiny", seed=1)
    batch = make_batch(examples(tokenizer), 50256, static=True)
    eager = loss_sum(model, batch, "fp32", CPU)
    compile_body(model)
    assert compiled_for(model) is not None
    compiled = loss_sum(model, batch, "fp32", CPU)
    assert_rounding_close(compiled, eager, terms=VOCAB)
    compiled.backward()
    assert model.transformer.h[0].mlp.c_fc.weight.grad is not None
    assert not hasattr(model, "_orig_mod") and type(model).__name__ == "GPT2LMHeadModel"
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())  # saves as a plain model


@pytest.mark.kernels
def test_compiled_training_run_matches_eager(data_file, tmp_path):
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        runs[compiled] = finetune(run_config(data_file, out, compile=compiled, generate_test=True, max_new_tokens=4),
                               log=quiet).result
    eager, compiled = ([m["val_loss"] for m in runs[c].metrics] for c in (False, True))
    # Six steps of AdamW carry the fused kernels' other rounding of each loss and gradient into the weights
    # (Adam's step is a ratio, which does not amplify a relative error), then into the validation losses.
    assert_rounding_close(compiled, eager, terms=VOCAB)
    meta = json.loads((tmp_path / "run-True" / "heed.json").read_text())
    assert meta["config"]["train"]["compile"] is True
    responses = json.loads((tmp_path / "run-True" / "test-with-response.json").read_text())
    assert all(isinstance(r["model_response"], str) for r in responses)
