"""torchrun: 2 gloo processes train exactly like one process with the whole batch, data parallel and
sharded (--fsdp); only rank 0 writes; a checkpoint written under torchrun resumes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import RECORDS
from tests.tolerances import assert_adam_steps_close, assert_rounding_close

COMMON = ["--model", "random:gpt2-tiny", "--data", "data.json", "--batch-size", "4", "--epochs", "1", "--eval-every", "2",
          "--eval-batches", "2", "--precision", "fp32", "--no-sample", "--max-new-tokens", "4", "--lr", "1e-3",
          "--train-frac", "0.8", "--test-frac", "0.1", "--no-audit"]


def heed(*argv, procs=1, cwd):
    env = dict(os.environ, HEED_ALLOCATOR="system", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                if procs > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "heed", "train", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run):
    return [(m["train_loss"], m["val_loss"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def weights(run):
    return load_file(str(run / "model.safetensors"))


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(RECORDS * 2))
    return tmp_path


# LoRA without dropout: with it, each process draws its own dropout masks, as one process would not.
@pytest.mark.parametrize("extra", [["--pack", "--grad-accum", "2"], ["--lora", "--lora-r", "4", "--lora-dropout", "0"]])
def test_two_processes_train_like_one(data, extra):
    if "--lora" in extra:
        pytest.importorskip("peft")
    one = heed(*COMMON, *extra, "--out", "one", cwd=data)
    two = heed(*COMMON, *extra, "--out", "two", procs=2, cwd=data)
    assert "data parallel over 2 processes" in two.stdout and two.stdout.count("done:") == 1  # rank 0 speaks
    a, b = torch.tensor(losses(data / "one")), torch.tensor(losses(data / "two"))
    assert a.shape == b.shape == (3, 2)
    assert_rounding_close(b, a, terms=700)  # a step's ~700 tokens summed in another order
    assert_adam_steps_close(weights(data / "two"), weights(data / "one"), lr=1e-3, steps=4)
    assert json.loads((data / "two" / "heed.json").read_text())["steps"] == 4
    assert len(json.loads((data / "two" / "test-with-response.json").read_text())) == 2


def test_a_torchrun_checkpoint_resumes_in_one_process(data):
    heed(*COMMON, "--out", "cut", "--max-steps", "2", "--checkpoint-every", "1", procs=2, cwd=data)
    heed("--resume", "cut", "--max-steps", "4", cwd=data)
    heed(*COMMON, "--out", "whole", "--max-steps", "4", cwd=data)
    assert_rounding_close(torch.tensor(losses(data / "cut")), torch.tensor(losses(data / "whole")), terms=700)


# Sharded (FSDP2): the same steps as one process with the whole batch. Losses differ by fp32 rounding over
# a step's ~700 tokens; weights, as in the DDP test, by Adam steps taken from gradients summed in another
# order (a loss normalised by one rank's tokens instead of the step's moves both by far more).
@pytest.mark.parametrize("extra", [["--pack", "--grad-accum", "2"], ["--lora", "--lora-r", "4", "--lora-dropout", "0"]])
def test_fsdp_trains_like_one_process(data, extra):
    if "--lora" in extra:
        pytest.importorskip("peft")
    one = heed(*COMMON, *extra, "--out", "one", cwd=data)
    two = heed(*COMMON, *extra, "--fsdp", "--out", "two", procs=2, cwd=data)
    assert "sharded (FSDP) over 2 processes" in two.stdout and two.stdout.count("done:") == 1
    assert "sharded" not in one.stdout
    a, b = torch.tensor(losses(data / "one")), torch.tensor(losses(data / "two"))
    assert a.shape == b.shape == (3, 2)
    assert_rounding_close(b, a, terms=700)
    assert_adam_steps_close(weights(data / "two"), weights(data / "one"), lr=1e-3, steps=4)
    if "--lora" in extra:  # the adapter is saved beside the merged model, as in one process
        adapters = [load_file(str(data / run / "adapter" / "adapter_model.safetensors")) for run in ("one", "two")]
        assert adapters[0]
        assert_adam_steps_close(adapters[1], adapters[0], lr=1e-3, steps=4)
    assert len(json.loads((data / "two" / "test-with-response.json").read_text())) == 2


def test_an_fsdp_checkpoint_is_a_single_process_one_and_resumes(data):
    heed(*COMMON, "--out", "whole", "--max-steps", "4", "--checkpoint-every", "2", "--fsdp", cwd=data)
    heed(*COMMON, "--out", "cut", "--max-steps", "2", "--checkpoint-every", "1", "--fsdp", procs=2, cwd=data)
    for name in ("model.safetensors", "optimizer.safetensors"):  # gathered whole, keyed as one process keys them
        cut, whole = (load_file(str(data / run / "checkpoint" / name)) for run in ("cut", "whole"))
        assert cut.keys() == whole.keys(), name
        assert all(cut[k].shape == whole[k].shape for k in cut), name
    state = json.loads((data / "cut" / "checkpoint" / "state.json").read_text())
    assert state["loop"]["step"] == 2 and state["config"]["train"]["fsdp"] is True
    resumed = heed("--resume", "cut", "--max-steps", "4", procs=2, cwd=data)
    assert "resumed at step 2" in resumed.stdout and "sharded (FSDP)" in resumed.stdout
    assert_rounding_close(torch.tensor(losses(data / "cut")), torch.tensor(losses(data / "whole")), terms=700)
    assert_adam_steps_close(weights(data / "cut"), weights(data / "whole"), lr=1e-3, steps=4)


def test_fsdp_refuses_compile(capsys):
    from heed.commands.cli import main

    assert main(["train", "--model", "random:gpt2-tiny", "--data", "x.json", "--fsdp", "--compile"]) == 2
    assert "--fsdp does not run with --compile" in capsys.readouterr().err


def test_other_commands_refuse_torchrun(monkeypatch, capsys):
    from heed.commands.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", "--model", "random:gpt2-tiny", "--instruction", "hi"]) == 2
    assert "only heed train runs under torchrun" in capsys.readouterr().err
