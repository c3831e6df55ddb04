import pytest
import torch

from heed.data.batch import collate, collate_packed, pack_rows
from heed.data.encode import IGNORE_INDEX, build_example, encode_records
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from heed.model import load_model
from tests.conftest import RECORDS
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2

VOCAB = 50257  # each position's log-sum-exp: the longest sum in these losses and gradients


def per_position_loss(model, batch):
    with torch.no_grad():
        extra = {"use_cache": False}
        if batch.position_ids is not None:
            extra["position_ids"] = batch.position_ids
        logits = model(input_ids=batch.inputs, **extra).logits
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none",
                                             ignore_index=IGNORE_INDEX)  # (B, T)


def test_pack_rows_fits_capacity_and_keeps_every_example():
    exs = [build_example(i, [1] * (i + 2), [2, 3]) for i in range(10)]
    rows = pack_rows(exs, capacity=16)
    assert sorted(e.index for row in rows for e in row) == list(range(10))
    assert all(sum(len(e.input_ids) - 1 for e in row) <= 16 for row in rows)
    assert len(rows) < 10


def test_packed_per_example_losses_equal_unpacked(tokenizer):
    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    examples, _ = encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    model = load_model("random:gpt2-tiny", seed=3)
    rows = pack_rows(examples, capacity=200)
    assert any(len(row) > 1 for row in rows), "several examples share a row"
    packed = collate_packed(rows, tokenizer.pad_token_id)
    assert packed.tokens == sum(len(e.input_ids) - 1 for e in examples)
    losses = per_position_loss(model, packed)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids) - 1
            alone = per_position_loss(model, collate([example], tokenizer.pad_token_id))[0]
            assert_rounding_close(losses[r, at:at + n], alone, terms=VOCAB, msg=f"example {example.index}")
            at += n


def test_packed_training_loss_equals_padded(tokenizer):
    from heed.train.loss import loss_sum

    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    examples, _ = encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    model = load_model("random:gpt2-tiny", seed=3)
    cpu = torch.device("cpu")
    with torch.no_grad():
        padded = loss_sum(model, collate(examples, 50256), "fp32", cpu)
        packed = loss_sum(model, collate_packed(pack_rows(examples, 256), 50256), "fp32", cpu)
    assert_rounding_close(packed, padded, terms=VOCAB)


def test_packed_train_step_respects_capacity_and_matches_padded_gradients(tokenizer, monkeypatch):
    import heed.train.loop as train_module
    from heed.train import train_step

    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    examples, _ = encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    seen = []
    real = train_module.loss_sum
    monkeypatch.setattr(train_module, "loss_sum", lambda m, b, p, d, f: (seen.append(b), real(m, b, p, d, f))[1])
    grads = []
    for capacity in (None, 120):
        model = load_model("random:gpt2-tiny", seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        opt.register_step_pre_hook(
            lambda *_, model=model: grads.append(model.transformer.h[0].mlp.c_fc.weight.grad.clone()))
        train_step(model, opt, sched, examples, grad_accum=1, pad_id=50256, clip=None, precision="fp32",
                   device=torch.device("cpu"), pack_capacity=capacity)
    packed = seen[-1]
    assert packed.position_ids is not None and packed.inputs.shape[0] > 1 and packed.inputs.shape[1] <= 120
    assert_rounding_close(grads[1], grads[0], terms=VOCAB)


def test_packed_losses_equal_padded_on_a_tiny_gemma3(tokenizer):
    """Packing must hold for the offline default's architecture too (rotary positions, local layers)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from heed.train.loss import loss_sum

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=50256)
    model = Gemma3ForCausalLM(config).eval()
    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    examples, _ = encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    cpu = torch.device("cpu")
    with torch.no_grad():
        padded = loss_sum(model, collate(examples, 50256), "fp32", cpu)
        packed = loss_sum(model, collate_packed(pack_rows(examples, 200), 50256), "fp32", cpu)
    assert_rounding_close(packed, padded, terms=VOCAB)


def _tiny_gemma3_sliding():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=50256)
    return Gemma3ForCausalLM(config)


def test_packed_rows_through_flex_attention_equal_padded_loss_and_gradients(tokenizer, monkeypatch):
    """FlexAttention with the per-example block mask (causal within each example; Gemma 3's 16-token
    sliding window on its first layer, GQA with one key head): the loss and every gradient equal padded
    attention's. torch 2.13 has no FlexAttention backward on a CPU, so with gradients the block mask's
    own mask function is expanded densely (the mask logic is what is checked); without gradients the
    FlexAttention kernel itself runs and must give the same loss."""
    import heed.model.attention as attention
    from heed.config import FastPath
    from heed.train.loss import loss_sum

    calls = []
    real = attention.packed_flex_attention
    monkeypatch.setattr(attention, "packed_flex_attention",
                        lambda *a, **k: (calls.append(type(a[4]).__name__), real(*a, **k))[1])
    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(RECORDS)]
    examples, _ = encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)
    assert max(len(e.input_ids) for e in examples) > 16  # the sliding window is exceeded
    cpu = torch.device("cpu")
    for make in (lambda: load_model("random:gpt2-tiny", seed=3), _tiny_gemma3_sliding):
        results = []
        for batch, fast in ((collate(examples, 50256), FastPath()),
                            (collate_packed(pack_rows(examples, 256), 50256), FastPath(packed_attn="flex"))):
            model = make()
            loss = loss_sum(model, batch, "fp32", cpu, fast)
            with torch.no_grad():
                assert_rounding_close(loss_sum(model, batch, "fp32", cpu, fast), loss, terms=VOCAB)
            loss.backward()
            results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None}))
            assert model.config._attn_implementation != attention.FLEX  # switched back after the forward
        (padded, padded_grads), (packed, packed_grads) = results
        assert_rounding_close(packed, padded, terms=VOCAB)
        assert padded_grads.keys() == packed_grads.keys()
        for name in padded_grads:  # through the vocabulary's softmax, the longest sum either path rounds
            assert_rounding_close(packed_grads[name], padded_grads[name], terms=VOCAB, msg=name)
    assert calls and set(calls) == {"BlockMask"}


def test_flex_attention_only_where_it_computes_the_same():
    """Attention dropout while training or soft-capped scores: the dense-mask path stays."""
    from heed.model.attention import flex_fits, use_packed_attention

    model = load_model("random:gpt2-tiny", seed=3)
    assert flex_fits(model.train())
    model.config.attn_pdrop = 0.1
    assert not flex_fits(model.train()) and flex_fits(model.eval())
    gemma = _tiny_gemma3_sliding()
    gemma.config.attn_logit_softcapping = 50.0
    assert not flex_fits(gemma)
    assert use_packed_attention("auto", torch.device("cuda")) and not use_packed_attention("auto", torch.device("cpu"))
    assert use_packed_attention("flex", torch.device("cpu")) and not use_packed_attention("mask", torch.device("cuda"))
