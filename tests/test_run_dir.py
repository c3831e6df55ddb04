"""The run directory: refused when it cannot take the run, nothing written by a refusal, an earlier run's
files never mixed into a new one, temporaries of a killed run cleared, a diverging run stopped."""

import json

import pytest

from heed.commands.cli import main
from heed.commands.finetune import finetune
from heed.config import DataConfig, RunConfig, TrainConfig
from heed.errors import HeedError

TINY = ["--model", "random:gpt2-tiny", "--batch-size", "2", "--epochs", "1", "--eval-batches", "1",
        "--precision", "fp32", "--no-sample", "--max-new-tokens", "4", "--train-frac", "0.6", "--test-frac", "0.2"]


def tiny_run(data_file, out, **train):
    """A run of GPT-2 tiny on the test records, batches of 2, fp32, no sample or test responses."""
    return RunConfig(DataConfig(data=data_file, train_frac=0.6, test_frac=0.2),
                     TrainConfig(model="random:gpt2-tiny", out=str(out), batch_size=2, precision="fp32",
                                 sample_every_epoch=False, generate_test=False, **train))


def quiet(_):
    pass


def test_a_refused_run_writes_nothing(tmp_path, write_json, capsys):
    bad = write_json([{"instruction": "x"}])  # no output
    out = tmp_path / "run"
    assert main(["train", "--data", bad, "--out", str(out), *TINY]) == 2
    assert "'output' is missing" in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tmp_path, data_file, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["train", "--data", data_file, "--out", str(out), *TINY]) == 2
    assert capsys.readouterr().err.strip() == f"heed: error: --out {out}: a file, not a directory; choose another --out"


def test_a_non_empty_out_needs_overwrite_which_removes_stale_outputs(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", data_file, "--out", str(out), *TINY]) == 0
    assert (out / "test-scores.json").is_file()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "test-scores.json").is_file()
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate", "--overwrite"]) == 0
    # The earlier run's test responses and scores would be mistaken for this run's: they are gone.
    assert not (out / "test-scores.json").exists() and not (out / "test-with-response.json").exists()
    assert (out / "heed.json").is_file() and (out / "notes.txt").read_text() == "mine"


def test_temporaries_of_a_killed_run_are_cleared(tmp_path, data_file):
    out = tmp_path / "run"  # named as heed.io's tempfile staging names them
    (out / ".staging.k2_9xq0a").mkdir(parents=True)
    (out / ".staging.k2_9xq0a" / "model.safetensors").write_bytes(b"half")
    (out / ".model.abc12345").mkdir()  # an earlier heed's staging
    (out / ".checkpoint.x1y2z3w4.tmp").mkdir()
    (out / ".checkpoint.x1y2z3w4.old").mkdir()
    (out / ".metrics.jsonl.q0w9e8r7.tmp").write_text("half")
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate"]) == 0
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_overwrite_removes_only_what_heed_writes(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate"]) == 0
    mine = ["tokenizer_notes.txt", "tokenizer-v2.json", "mine.safetensors", "model.safetensors.bak",
            ".notes.tmp", ".draft.abcdefgh.tmp", ".staging", "checkpoints"]
    for name in mine:
        (out / name).write_text("mine")
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate", "--overwrite"]) == 0
    assert all((out / name).read_text() == "mine" for name in mine)
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_a_file_that_only_looks_temporary_is_not_ignored(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("mine")
    assert main(["train", "--data", data_file, "--out", str(out), *TINY, "--no-generate"]) == 2
    assert "not empty (1 entries, e.g. .notes.tmp)" in capsys.readouterr().err
    assert (out / ".notes.tmp").read_text() == "mine"


def test_a_diverging_loss_stops_before_the_weights_change(tmp_path, data_file, monkeypatch):
    import heed.train.loop as loop

    real, calls = loop.loss_sum, []

    def loss_sum(model, batch, precision, device, fast):
        value = real(model, batch, precision, device, fast)
        if model.training:
            calls.append(1)
            if len(calls) == 3:
                return value * float("nan")
        return value

    monkeypatch.setattr(loop, "loss_sum", loss_sum)
    run = tiny_run(data_file, tmp_path / "run", epochs=2, checkpoint_every=1)
    with pytest.raises(HeedError, match=r"step 3: the training loss is nan; training stopped before the weights "
                                        r"changed and the last checkpoint \(step 2, in .*\) is kept"):
        finetune(run, log=quiet)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["loop"]["step"] == 2 and not (tmp_path / "run" / "model.safetensors").exists()


def test_the_last_metrics_row_does_not_count_time_twice(tmp_path, data_file, monkeypatch):
    import heed.train.loop as loop

    clock = [0.0]
    real_step = loop.train_step

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock[0]

    def train_step(*args, **kwargs):
        clock[0] += 100.0  # each step takes 100 s; evaluations take none
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "time", FakeTime)
    monkeypatch.setattr(loop, "train_step", train_step)
    run = tiny_run(data_file, tmp_path / "run", epochs=1, eval_every=2)
    result = finetune(run, log=quiet).result
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and result.steps == 3
    assert [r["seconds"] for r in rows] == [100.0, 200.0, 300.0] and result.seconds == 300.0


def test_a_diverging_loss_before_any_checkpoint_says_none_was_written(tmp_path, data_file, monkeypatch):
    import heed.train.loop as loop

    real = loop.loss_sum

    def loss_sum(model, batch, precision, device, fast):
        value = real(model, batch, precision, device, fast)
        return value * float("nan") if model.training else value

    monkeypatch.setattr(loop, "loss_sum", loss_sum)
    run = tiny_run(data_file, tmp_path / "run", epochs=1, checkpoint_every=5)
    with pytest.raises(HeedError, match=r"step 1: the training loss is nan; training stopped before the weights "
                                        r"changed and no checkpoint was written\. Lower --lr"):
        finetune(run, log=quiet)
    assert not (tmp_path / "run" / "checkpoint").exists()
