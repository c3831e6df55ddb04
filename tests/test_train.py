import json
import math

import pytest
import torch

from heed.train import checkpoint
from heed.config import DataConfig, LoraConfig, RunConfig, TrainConfig
from heed.data.batch import collate
from heed.data.encode import encode_records
from heed.data.records import Record
from heed.data.templates import TEMPLATES
from heed.model import load_model, load_tokenizer
from heed.commands.finetune import finetune
from heed.train import evaluate
from heed.train.loss import loss_sum
from tests.conftest import RECORDS
from tests.tolerances import assert_rounding_close, tolerance

CPU = torch.device("cpu")
VOCAB = 50257  # GPT-2's: each token's log-sum-exp, the longest sum in these losses and gradients


def train(run, **kwargs):
    """The finetune job (train → save → test responses), returning the training result."""
    return finetune(run, **kwargs).result


def stop_at(step):
    def on_step(state):
        if state.step == step:
            raise KeyboardInterrupt

    return on_step


def examples(tokenizer, records=RECORDS):
    recs = [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(records)]
    return encode_records(recs, TEMPLATES["alpaca"], tokenizer, max_length=1024)[0]


def run_config(data, out, **train):
    base = dict(model="random:gpt2-tiny", out=str(out), lr=1e-3, batch_size=2, epochs=2, eval_every=2,
                eval_batches=2, precision="fp32", sample_every_epoch=False, generate_test=False)
    return RunConfig(DataConfig(data=data, train_frac=0.6, test_frac=0.2), TrainConfig(**(base | train)))


def quiet(_):
    pass


@pytest.mark.kernels
def test_first_loss_is_ln_vocab(tokenizer):
    model = load_model("random:gpt2-tiny")
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        loss = float(loss_sum(model, batch, "fp32", CPU)) / batch.supervised_tokens
    assert abs(loss - math.log(50257)) < 0.05


@pytest.mark.kernels
def test_supervised_only_head_equals_full_logits(tokenizer):
    model = load_model("random:gpt2-tiny")
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        fast = loss_sum(model, batch, "fp32", CPU)
        logits = model(input_ids=batch.inputs).logits
        full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
    assert_rounding_close(fast, full, terms=VOCAB)


@pytest.mark.kernels
def test_a_few_steps_lower_the_loss_and_change_weights(data_file, tmp_path, tokenizer):
    before = {k: v.clone() for k, v in load_model("random:gpt2-tiny").state_dict().items()}
    result = train(run_config(data_file, tmp_path / "run", epochs=3, eval_every=1), log=quiet)
    losses = [m["train_loss"] for m in result.metrics]
    assert losses[-1] < losses[0] - 0.5
    after = load_model(str(tmp_path / "run")).state_dict()
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert "transformer.h.0.attn.c_attn.weight" in changed and "transformer.wte.weight" in changed
    assert (tmp_path / "run" / "audit.json").is_file()


def test_packed_bf16_training_without_audit(data_file, tmp_path):
    out = tmp_path / "run"
    result = train(run_config(data_file, out, epochs=3, eval_every=1, pack=True, pack_length=64, precision="bf16",
                              audit=False), log=quiet)
    losses = [m["train_loss"] for m in result.metrics]
    assert losses[-1] < losses[0] - 0.5
    assert not (out / "audit.json").exists() and (out / "heed.json").is_file()


def test_outputs_and_saved_model_reload_with_identical_logits(data_file, tmp_path, tokenizer):
    out = tmp_path / "run"
    result = train(run_config(data_file, out, generate_test=True, max_new_tokens=8), log=quiet)
    meta = json.loads((out / "heed.json").read_text())
    assert meta["template"] == "alpaca" and meta["max_length"] == 1024 and meta["train_on_prompt"] is False
    assert meta["steps"] == result.steps == 6 and meta["config"]["train"]["lr"] == 1e-3
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 4, 6]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    responses = json.loads((out / "test-with-response.json").read_text())
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in RECORDS[6:8]]
    assert all(isinstance(r["model_response"], str) for r in responses)
    reloaded = load_model(str(out))
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    # The in-memory model at the end of training is what was saved: reload twice and compare.
    with torch.no_grad():
        a = reloaded(input_ids=batch.inputs).logits
        b = load_model(str(out))(input_ids=batch.inputs).logits
    # Exact: the same weights (safetensors keeps fp32 bits) through the same kernels in the same process.
    assert torch.equal(a, b)
    assert load_tokenizer(str(out))("Hello, world!<|endoftext|>")["input_ids"] == [15496, 11, 995, 0, 50256]


@pytest.mark.kernels
def test_saved_logits_equal_trained_logits(data_file, tmp_path, tokenizer, monkeypatch):
    captured = {}
    import heed.commands.finetune as job

    real = job.save_run

    def spy(trained):
        model = trained.model
        batch = collate(examples(tokenizer), tokenizer.pad_token_id)
        with torch.no_grad():
            captured["logits"] = model(input_ids=batch.inputs).logits
        return real(trained)

    monkeypatch.setattr(job, "save_run", spy)
    train(run_config(data_file, tmp_path / "run", epochs=1), log=quiet)
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():  # exact, as above: what was saved is the trained model bit for bit
        assert torch.equal(load_model(str(tmp_path / "run"))(input_ids=batch.inputs).logits, captured["logits"])


def test_early_stopping_restores_the_best_weights(write_json, tmp_path, tokenizer):
    # Validation asks for answers that contradict training, so its loss rises as training fits.
    train_recs = [{"instruction": f"Say the word {i}.", "input": "", "output": "apple"} for i in range(16)]
    val_recs = [{"instruction": f"Say the word {i}.", "input": "", "output": "banana split"} for i in range(4)]
    data, val = write_json(train_recs), write_json(val_recs, "val.json")
    run = run_config(data, tmp_path / "run", lr=3e-3, epochs=8, eval_every=1, patience=3, batch_size=4)
    run.data = DataConfig(data=data, val_file=val, test_frac=0.0, train_frac=1.0)
    result = train(run, log=quiet)
    assert result.stopped_early and result.best_step < result.steps
    vals = [m["val_loss"] for m in result.metrics]
    assert vals[-1] > min(vals)
    # The saved model is the best one: its validation loss is the best recorded.
    model = load_model(str(tmp_path / "run"))
    val_ex = examples(tokenizer, val_recs)
    got = evaluate(model, val_ex, batch_size=4, pad_id=50256, num_batches=3, precision="fp32", device=CPU)
    assert_rounding_close(got, result.best_val_loss, terms=VOCAB)
    assert json.loads((tmp_path / "run" / "heed.json").read_text())["best_step"] == result.best_step


@pytest.mark.parametrize("extra", [{}, {"patience": 50, "grad_accum": 2}])
@pytest.mark.kernels
def test_resume_equals_uninterrupted(data_file, tmp_path, extra):
    full = train(run_config(data_file, tmp_path / "full", epochs=3, **extra), log=quiet)
    run = run_config(data_file, tmp_path / "cut", epochs=3, **extra)
    with pytest.raises(KeyboardInterrupt):
        train(run, log=quiet, on_step=stop_at(4))
    state = checkpoint.load(tmp_path / "cut")
    assert state["loop"]["step"] == 4
    resumed = train(run_config(data_file, tmp_path / "cut", epochs=3, **extra), resume=state, log=quiet)
    assert resumed.steps == full.steps
    # Bit-identical, on any CPU: both runs are in this process, so they dispatch to the same kernels (one
    # instruction set, one thread count); the resumed run restarts from the exact weights, Adam moments,
    # schedule, data position and RNG state, so it performs the same operations on the same values in the
    # same order; and the CPU kernels used are deterministic (fixed blocking, no atomics: none of them is
    # refused under torch.use_deterministic_algorithms). An off-by-one in any of that state shows here.
    assert [m["val_loss"] for m in resumed.metrics] == [m["val_loss"] for m in full.metrics]
    a, b = load_model(str(tmp_path / "full")).state_dict(), load_model(str(tmp_path / "cut")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.kernels
def test_grad_accum_normalises_by_total_supervised_tokens(tokenizer):
    from heed.train import train_step

    exs = examples(tokenizer)[:4]
    grads = []
    for accum in (1, 2, 4):
        model = load_model("random:gpt2-tiny")
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        captured = {}
        opt.register_step_pre_hook(lambda *_: captured.update(g=model.transformer.h[0].mlp.c_fc.weight.grad.clone()))
        train_step(model, opt, sched, exs, grad_accum=accum, pad_id=50256, clip=None, precision="fp32", device=CPU)
        grads.append(captured["g"])
    # One batch or micro-batches: the same per-token mean, summed in another order.
    assert_rounding_close(grads[1], grads[0], terms=VOCAB)
    assert_rounding_close(grads[2], grads[0], terms=VOCAB)


def test_lora_trains_only_adapters_and_merges(data_file, tmp_path, tokenizer):
    pytest.importorskip("peft")
    from heed.model.lora import add_adapters, merged

    base = load_model("random:gpt2-tiny")
    model = add_adapters(base, LoraConfig(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    result = train(run_config(data_file, tmp_path / "lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0)), log=quiet)
    assert result.steps == 6
    saved = load_model(str(tmp_path / "lora"))
    assert not any("lora" in k for k in saved.state_dict())
    original = load_model("random:gpt2-tiny").state_dict()
    k = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(saved.state_dict()[k], original[k]), "adapters were merged into the base weights"
    # Exact: the embedding has no adapter, so it is never written to.
    assert torch.equal(saved.state_dict()["transformer.wte.weight"], original["transformer.wte.weight"])

    # Merging does not change what the model computes. The adapters get weights of the base weights' size
    # (0.02): far larger ones make attention scores large, whose rounding the logits then carry.
    model = add_adapters(load_model("random:gpt2-tiny"), LoraConfig(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    batch = collate(examples(tokenizer), 50256)
    with torch.no_grad():
        plain = load_model("random:gpt2-tiny")(input_ids=batch.inputs).logits
        adapted = model(input_ids=batch.inputs).logits
        folded = merged(model)(input_ids=batch.inputs).logits
    mlp_width = 4 * 64  # the widest sum between the adapters and the logits
    assert_rounding_close(folded, adapted, terms=mlp_width)
    # ... and the adapters do change it, by far more than that rounding.
    assert (adapted - plain).abs().max() > 1000 * tolerance(terms=mlp_width) * plain.abs().max()


@pytest.mark.kernels
def test_chunked_head_loss_and_gradients_equal_full_logits(tokenizer, monkeypatch):
    import heed.train.loss as loss_module

    model = load_model("random:gpt2-tiny")
    batch = collate(examples(tokenizer) * 3, tokenizer.pad_token_id)
    assert batch.supervised_tokens > 3 * 8
    monkeypatch.setattr(loss_module, "HEAD_BUDGET", 8 * 50257 * 4 * 3)  # 8 rows a chunk: several chunks
    chunked = loss_sum(model, batch, "fp32", CPU)
    chunked.backward()
    grad_chunked = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    logits = model(input_ids=batch.inputs).logits
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
    full.backward()
    assert_rounding_close(chunked, full, terms=VOCAB)
    assert_rounding_close(grad_chunked, model.transformer.wte.weight.grad, terms=VOCAB)


def test_tokens_per_step_forms_steps_by_a_token_budget(data_file, tmp_path, monkeypatch):
    """--tokens-per-step: each step's examples fill at most N input tokens (one longer example alone),
    every training example is seen once an epoch, the step count follows, and each step's loss is still
    normalised by that step's supervised tokens (train_step's rule, given the step's examples)."""
    import heed.train.loop as loop
    from heed.data.batch import token_budget_order

    steps = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda model, opt, sched, exs, **kw: (steps.append(list(exs)),
                                                                                   real(model, opt, sched, exs, **kw))[1])
    budget = 120
    result = train(run_config(data_file, tmp_path / "run", epochs=1, tokens_per_step=budget, batch_size=1), log=quiet)
    sizes = [sum(len(e.input_ids) - 1 for e in step) for step in steps]
    assert all(size <= budget or len(step) == 1 for size, step in zip(sizes, steps))
    assert any(len(step) > 1 for step in steps)  # not one example a step (--batch-size 1 is ignored)
    seen = sorted(e.index for step in steps for e in step)
    assert len(seen) == len(set(seen)) and result.steps == len(steps)
    lengths = [5, 4, 3, 9, 2]
    assert token_budget_order(lengths, 9, shuffle=False, seed=0) == [[0, 1], [2], [3], [4]]
    shuffled = token_budget_order(lengths, 9, shuffle=True, seed=1)
    assert sorted(sum(shuffled, [])) == [0, 1, 2, 3, 4]
    assert sum(shuffled, []) == loop.batch_order(5, 5, shuffle=True, seed=1)[0]  # the same visiting order


def test_group_by_length_pads_less_and_still_sees_every_example_once(data_file, tmp_path, monkeypatch):
    """--group-by-length: each epoch every training example once, in batches of --batch-size whose widths
    (the longest member) add up to less than random batches', in an order that changes with the epoch."""
    import random

    import heed.train.loop as loop
    from heed.data.batch import length_grouped_order

    steps = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda model, opt, sched, exs, **kw: (steps.append(list(exs)),
                                                                                   real(model, opt, sched, exs, **kw))[1])
    result = train(run_config(data_file, tmp_path / "run", epochs=2, batch_size=2, group_by_length=True), log=quiet)
    per_epoch = len(steps) // 2
    for epoch in (steps[:per_epoch], steps[per_epoch:]):
        seen = sorted(e.index for step in epoch for e in step)
        assert len(seen) == len(set(seen)) and all(len(step) <= 2 for step in epoch)
    assert [[e.index for e in s] for s in steps[:per_epoch]] != [[e.index for e in s] for s in steps[per_epoch:]]
    assert result.steps == len(steps)

    lengths = [random.Random(i).randint(10, 60) for i in range(640)]
    width = lambda batches: sum(max(lengths[i] for i in b) * len(b) for b in batches)  # noqa: E731
    grouped = length_grouped_order(lengths, 8, shuffle=True, seed=3)
    assert sorted(sum(grouped, [])) == list(range(640)) and {len(b) for b in grouped} == {8}
    assert width(grouped) < 0.8 * width(loop.batch_order(640, 8, shuffle=True, seed=3))
    assert grouped == length_grouped_order(lengths, 8, shuffle=True, seed=3)  # resumable: the seed decides
    assert length_grouped_order(lengths[:13], 4, shuffle=True, seed=0, drop_last=True) and all(
        len(b) == 4 for b in length_grouped_order(lengths[:13], 4, shuffle=True, seed=0, drop_last=True))
