"""Resuming: checkpoints hold data, never code; a run resumes in its own directory from anywhere; flags
given with --resume are applied or refused, never ignored; a finished run is not mistaken for a cut one."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from heed.commands.cli import main
from heed.commands.finetune import finetune
from heed.config import DataConfig, RunConfig, TrainConfig
from heed.train import checkpoint


def quiet(_):
    pass


def stop_at(step):
    def on_step(state):
        if state.step == step:
            raise KeyboardInterrupt

    return on_step


def cut_run(tmp_path, data_file, name="a", **train):
    """A run of 3 epochs (9 steps) interrupted after step 4, started from tmp_path with a relative --data."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        if Path(data_file) != tmp_path / "data.json":
            shutil.copy(data_file, tmp_path / "data.json")
        base = dict(model="random:gpt2-tiny", out=name, lr=1e-3, batch_size=2, epochs=3, eval_every=2,
                    eval_batches=2, precision="fp32", sample_every_epoch=False, generate_test=False, audit=False)
        run = RunConfig(DataConfig(data="data.json", train_frac=0.6, test_frac=0.2), TrainConfig(**(base | train)))
        with pytest.raises(KeyboardInterrupt):
            finetune(run, log=quiet, on_step=stop_at(4))
    finally:
        os.chdir(cwd)
    return tmp_path / name


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/heed-pwned",))


def test_a_pickled_checkpoint_is_never_loaded(tmp_path, capsys):
    marker = "/tmp/heed-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"model": Payload()}))
    assert main(["train", "--resume", str(run)]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
    assert main(["train", "--resume", str(run / "checkpoint.pt")]) == 2
    assert "heed no longer reads .pt checkpoints" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_checkpoints_are_safetensors_and_json(tmp_path, data_file):
    run = cut_run(tmp_path, data_file)
    files = sorted(p.name for p in (run / "checkpoint").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["loop"]["step"] == 4 and state["finished"] is False
    assert state["aliases"] == {"lm_head.weight": "transformer.wte.weight"}  # the tied matrix stored once


def test_a_damaged_checkpoint_is_one_line(tmp_path, data_file, capsys):
    run = cut_run(tmp_path, data_file)
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a readable heed checkpoint" in err and len(err.strip().splitlines()) == 1


def test_a_copied_run_resumes_in_its_own_directory_from_anywhere(tmp_path, data_file, monkeypatch):
    a = cut_run(tmp_path, data_file)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(b)]) == 0
    assert (b / "model.safetensors").is_file() and json.loads((b / "heed.json").read_text())["steps"] == 9
    assert not (a / "model.safetensors").exists()  # the original run is left as it was
    assert not (elsewhere / "b").exists()


def test_flags_with_resume_are_applied_or_refused(tmp_path, data_file, capsys):
    run = cut_run(tmp_path, data_file)
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "--lr, --batch-size cannot change when a run is resumed" in err
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--checkpoint-every", "2"]) == 0
    assert json.loads((run / "heed.json").read_text())["steps"] == 6


def test_flags_that_repeat_the_stored_values_are_accepted(tmp_path, data_file, capsys):
    run = cut_run(tmp_path, data_file)
    same = ["--lr", "0.001", "--batch-size", "2", "--data", str(tmp_path / "data.json"), "--out", str(run),
            "--model", "random:gpt2-tiny", "--precision", "fp32", "train.eval_every=2"]
    assert main(["train", "--resume", str(run), *same, "--max-steps", "5"]) == 0
    assert json.loads((run / "heed.json").read_text())["steps"] == 5
    # a changed value is still refused, named as it was written
    assert main(["train", "--resume", str(run), "--lr", "0.001", "--eval-batches", "3", "train.seed=7"]) == 2
    assert "--eval-batches, train.seed cannot change when a run is resumed" in capsys.readouterr().err


def test_a_run_that_ended_mid_epoch_is_described_in_steps(tmp_path, data_file, capsys):
    run = tmp_path / "run"  # 3 steps an epoch; it stops at step 4, in the second
    assert main(["train", "--model", "random:gpt2-tiny", "--data", data_file, "--out", str(run), "--max-steps", "4",
                 "--checkpoint-every", "2", "--batch-size", "2", "--precision", "fp32", "--no-sample", "--no-generate",
                 "--train-frac", "0.6", "--test-frac", "0.2"]) == 0
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "that run finished after 4 steps; there is nothing to resume" in err and "epoch" not in err.split(";")[0]


def test_a_finished_run_is_not_resumed_unless_it_can_go_further(tmp_path, data_file, capsys):
    run = cut_run(tmp_path, data_file, checkpoint_every=2)
    assert main(["train", "--resume", str(run)]) == 0  # the cut run goes on to the end
    assert json.loads((run / "checkpoint" / "state.json").read_text())["finished"] is True
    assert main(["train", "--resume", str(run)]) == 2
    assert "that run finished after 9 steps (3 epochs); there is nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 0
    assert json.loads((run / "heed.json").read_text())["steps"] == 12


def test_load_returns_what_was_saved(tmp_path, data_file):
    state = checkpoint.load(cut_run(tmp_path, data_file))
    assert state["loop"]["step"] == 4
    assert state["model"]["lm_head.weight"] is state["model"]["transformer.wte.weight"]
    assert set(state["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
