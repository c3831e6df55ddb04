"""Tied input and output embeddings: the lookup's gradient joins the head's (``heed.loss.tied_lookup``).
The loss and every gradient must be what autograd gives with the model's own embedding lookup."""

import pytest
import torch

import heed.train.loss as loss_module
from heed.data.batch import collate, collate_packed, pack_rows
from heed.data.encode import encode_records
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from heed.train.loss import loss_sum
from heed.model import load_model
from tests.conftest import RECORDS
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2

CPU = torch.device("cpu")


def _examples(tokenizer):
    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    return encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)[0]


def _gemma(pad_token_id):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=pad_token_id)
    return Gemma3ForCausalLM(config).train()


def _gpt2(pad_token_id):
    return load_model("random:gpt2-tiny", seed=3).train()


def _grads(model, batches, monkeypatch, tied):
    if not tied:
        monkeypatch.setattr(loss_module, "_tied_embedding", lambda model, head: None)
    model.zero_grad(set_to_none=True)
    losses = []
    for batch in batches:  # two backward passes: the gradient accumulates as autograd's would
        loss = loss_sum(model, batch, "fp32", CPU)
        loss.backward()
        losses.append(loss.detach())
    monkeypatch.undo()
    return losses, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("build", [_gpt2, _gemma])
@pytest.mark.parametrize("packed", [False, True])
def test_tied_lookup_gives_autograds_loss_and_gradients(tokenizer, monkeypatch, build, packed):
    examples = _examples(tokenizer)
    # Gemma's embedding has a padding_idx, whose row gets no gradient from the lookup: make it a token that
    # every prompt starts with, so that a lookup that forgot it would differ.
    model = build(pad_token_id=examples[0].input_ids[0])
    head = model.get_output_embeddings()
    embedding = loss_module._tied_embedding(model, head)
    assert embedding is not None and embedding.weight is head.weight
    halves = [examples[:3], examples[3:]]
    batches = ([collate_packed(pack_rows(h, 200), 50256) for h in halves] if packed
               else [collate(h, 50256) for h in halves])
    calls = []
    real = loss_module._TiedLookup.backward
    monkeypatch.setattr(loss_module._TiedLookup, "backward",
                        staticmethod(lambda ctx, g: (calls.append(1), real(ctx, g))[1]))
    tied_losses, tied = _grads(model, batches, monkeypatch, tied=True)
    assert len(calls) == 2, "the tied lookup ran"
    plain_losses, plain = _grads(model, batches, monkeypatch, tied=False)
    vocab = model.config.vocab_size  # the longest sum: each token's log-sum-exp
    for a, b in zip(tied_losses, plain_losses):
        assert_rounding_close(a, b, terms=vocab)
    assert tied.keys() == plain.keys()
    for name in tied:  # the lookup's rows are added into the head's gradient instead of the other way round
        assert_rounding_close(tied[name], plain[name], terms=vocab, msg=name)


def test_untied_frozen_or_no_grad_use_the_models_lookup(tokenizer):
    model = load_model("random:gpt2-tiny", seed=3)
    head = model.get_output_embeddings()
    model.lm_head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untie
    assert loss_module._tied_embedding(model, model.get_output_embeddings()) is None
    model = load_model("random:gpt2-tiny", seed=3)
    batch = collate(_examples(tokenizer)[:2], 50256)
    with torch.no_grad():
        expected = loss_sum(model, batch, "fp32", CPU)
    model.get_output_embeddings().weight.requires_grad_(False)  # frozen matrix: nothing to hand over
    loss = loss_sum(model, batch, "fp32", CPU)
    loss.backward()
    assert_rounding_close(loss.detach(), expected, terms=model.config.vocab_size)
    assert model.get_output_embeddings().weight.grad is None
