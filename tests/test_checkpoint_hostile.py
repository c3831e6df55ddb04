"""Checkpoints that were edited or damaged: `heed train --resume` refuses each with one line naming the file
and what is wrong, exit 2, before anything in the run directory changes; and a diverging run never leaves a
checkpoint of its diverged weights."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from heed.commands.cli import main
from heed.commands.finetune import finetune
from heed.config import DataConfig, RunConfig, TrainConfig
from heed.errors import HeedError
from heed.train import checkpoint, checkpoint_check
from heed.train.state import LoopState

TINY = ["--batch-size", "2", "--precision", "fp32", "--no-sample", "--no-generate", "--no-audit",
        "--train-frac", "0.6", "--test-frac", "0.2"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real run of two steps with a checkpoint after each (random:gpt2-tiny)."""
    from tests.conftest import RECORDS

    root = tmp_path_factory.mktemp("real")
    (root / "data.json").write_text(json.dumps(RECORDS))
    out = root / "run"
    assert main(["train", "--model", "random:gpt2-tiny", "--data", str(root / "data.json"), "--out", str(out),
                 "--max-steps", "2", "--checkpoint-every", "1", *TINY]) == 0
    return out


def snapshot(run: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                      p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def edit_state(change):
    def damage(ckpt: Path) -> None:
        state = json.loads((ckpt / "state.json").read_text())
        change(state)
        (ckpt / "state.json").write_text(json.dumps(state))
    return damage


def edit_tensors(name, change):
    def damage(ckpt: Path) -> None:
        tensors = load_file(str(ckpt / name))
        change(tensors)
        save_file(tensors, str(ckpt / name))
    return damage


def first_weight(tensors):
    return next(k for k in sorted(tensors) if k.endswith("attn.c_attn.weight"))


DAMAGES = {
    "loop without its keys": (edit_state(lambda s: s.update(loop={})), "state.json: 'loop.step' is missing"),
    "loop without stopped_early": (edit_state(lambda s: s["loop"].pop("stopped_early")),
                                   "state.json: 'loop.stopped_early' is missing"),
    "loop with an unknown key": (edit_state(lambda s: s["loop"].update(extra=1)),
                                 "state.json: 'loop.extra' is not a key heed writes"),
    "a step that is text": (edit_state(lambda s: s["loop"].update(step="2")),
                            "state.json: 'loop.step' should be a whole number of at least 0, not \"2\""),
    "a wrong rng": (edit_state(lambda s: s.update(rng=[3, [1, 2], None])),
                    "state.json: 'rng' is not the state of Python's generator"),
    "rng that is not a list": (edit_state(lambda s: s.update(rng={"a": 1})), "state.json: 'rng' should be a list"),
    "scheduler without lr_lambdas": (edit_state(lambda s: s["scheduler"].pop("lr_lambdas")),
                                     "state.json: 'scheduler.lr_lambdas' is missing"),
    "scheduler that sets an attribute": (edit_state(lambda s: s["scheduler"].update(optimizer=1)),
                                         "state.json: 'scheduler.optimizer' is not a key of heed's schedule"),
    "empty param_groups": (edit_state(lambda s: s["optimizer"].update(param_groups=[])),
                           "state.json: 'optimizer.param_groups' is empty"),
    "a group without lr": (edit_state(lambda s: s["optimizer"]["param_groups"][0].pop("lr")),
                           "state.json: 'optimizer.param_groups.0.lr' is missing"),
    "a group of too few params": (edit_state(lambda s: s["optimizer"]["param_groups"][0]["params"].pop()),
                                  "state.json: 'optimizer.param_groups.0.params' should be the 28 parameters"),
    "a group that cannot run": (edit_state(lambda s: s["optimizer"]["param_groups"][0].update(differentiable=True)),
                                "state.json: 'optimizer.param_groups.0.differentiable' should be false, not true"),
    "settings that do not validate": (edit_state(lambda s: s["config"]["data"].update(test_frac=2.0)),
                                      "state.json: 'config': --test-frac must be between 0 and 1 (got 2.0)"),
    "an alias to nothing": (edit_state(lambda s: s.update(aliases={"lm_head.weight": "nothing"})),
                            "state.json: 'aliases.lm_head.weight' names \"nothing\""),
    "a model tensor missing": (edit_tensors("model.safetensors", lambda t: t.pop(first_weight(t))),
                               "model.safetensors: 'transformer.h.0.attn.c_attn.weight' is missing"),
    "a model tensor of the wrong shape": (
        edit_tensors("model.safetensors", lambda t: t.update({first_weight(t): t[first_weight(t)][:, :-1].clone()})),
        "model.safetensors: 'transformer.h.0.attn.c_attn.weight' has shape [64, 191], the model's is [64, 192]"),
    "a tensor the model lacks": (edit_tensors("model.safetensors", lambda t: t.update(extra=torch.zeros(2))),
                                 "model.safetensors: 'extra' is not a tensor of this model"),
    "a weight that is not finite": (
        edit_tensors("model.safetensors", lambda t: t[first_weight(t)].view(-1).__setitem__(0, float("nan"))),
        "model.safetensors: 'transformer.h.0.attn.c_attn.weight' holds values that are not finite"),
    "a moment of the wrong shape": (
        edit_tensors("optimizer.safetensors", lambda t: t.update({"0.exp_avg": torch.zeros(3)})),
        "optimizer.safetensors: '0.exp_avg' has shape [3], the parameter's is"),
    "a moment missing": (edit_tensors("optimizer.safetensors", lambda t: t.pop("1.exp_avg_sq")),
                         "optimizer.safetensors: parameter 1: holds exp_avg, step, not exp_avg, exp_avg_sq, step"),
    "a moment of a parameter the model lacks": (
        edit_tensors("optimizer.safetensors", lambda t: t.update({"99.exp_avg": torch.zeros(3)})),
        "optimizer.safetensors: parameter 99: the model trains 28 parameters"),
    "a torch rng of the wrong size": (
        edit_tensors("rng.safetensors", lambda t: t.update(torch=t["torch"][:10].clone())),
        "rng.safetensors: 'torch' is not a generator state"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_tampered_checkpoint_is_refused_before_anything_changes(real_run, tmp_path, damage, capsys):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    change, expected = DAMAGES[damage]
    change(run / "checkpoint")
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{run / 'checkpoint'}/{expected}" in err, err
    assert err.strip().endswith("this is not a checkpoint heed wrote (or it was damaged): start a new run"), err
    assert snapshot(run) == before


def test_the_undamaged_checkpoint_resumes(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    assert main(["train", "--resume", str(run), "--max-steps", "4"]) == 0
    assert json.loads((run / "checkpoint" / "state.json").read_text())["loop"]["step"] == 4


def test_how_adamw_runs_is_this_machines_choice(real_run, tmp_path):
    """foreach/fused/capturable describe the machine that wrote the checkpoint: the resumed run keeps its own,
    whatever the checkpoint holds."""
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    edit_state(lambda s: s["optimizer"]["param_groups"][0].update(foreach=True, fused=True))(run / "checkpoint")
    assert main(["train", "--resume", str(run), "--max-steps", "3"]) == 0
    assert json.loads((run / "heed.json").read_text())["steps"] == 3


def test_the_checked_loop_keys_are_loop_states_fields():
    from dataclasses import fields

    assert set(checkpoint_check.LOOP) == {f.name for f in fields(LoopState)}


def quiet(_):
    pass


def tiny_run(data_file, out, **train):
    base = dict(model="random:gpt2-tiny", out=str(out), batch_size=2, epochs=2, precision="fp32",
                checkpoint_every=1, sample_every_epoch=False, generate_test=False, audit=False)
    return RunConfig(DataConfig(data=data_file, train_frac=0.6, test_frac=0.2), TrainConfig(**(base | train)))


def test_a_huge_lr_stops_at_the_first_evaluation_and_writes_nothing(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "random:gpt2-tiny", "--data", data_file, "--out", str(out), "--lr", "1e30",
                 "--checkpoint-every", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "step 1: the validation loss is nan: the weights have diverged; training stopped without saving them " \
           "and no checkpoint was written. Lower --lr (now 1e+30)" in err
    assert not (out / "checkpoint").exists() and not (out / "model.safetensors").exists()


def test_a_non_finite_evaluation_keeps_the_last_good_checkpoint(tmp_path, data_file, monkeypatch):
    import heed.train.loop as loop

    real, diverged = loop.evaluate, []

    def evaluate(model, examples, **kw):
        return float("nan") if diverged else real(model, examples, **kw)

    def on_step(state):
        if state.step == 1:
            diverged.append(True)  # after step 1's checkpoint

    monkeypatch.setattr(loop, "evaluate", evaluate)
    with pytest.raises(HeedError, match=r"step 2: the validation loss is nan: the weights have diverged; training "
                                        r"stopped without saving them and the last checkpoint \(step 1, in .*\) "
                                        r"is kept"):
        finetune(tiny_run(data_file, tmp_path / "run", eval_every=2), log=quiet, on_step=on_step)
    assert checkpoint.load(tmp_path / "run")["loop"]["step"] == 1


@pytest.mark.parametrize("how", ["inf", "huge"])
def test_no_checkpoint_of_diverged_weights_between_evaluations(tmp_path, data_file, monkeypatch, how):
    """Step 2 is not evaluated (--eval-every 5) but checkpointed: its weights are checked first."""
    import heed.train.loop as loop

    real, calls = loop.train_step, []

    def train_step(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                if how == "inf":  # a position no example reaches: the loss stays finite, the weights do not
                    model.transformer.wpe.weight[-1] = float("inf")
                else:
                    for p in model.parameters():
                        p.mul_(1e30)
        return loss

    monkeypatch.setattr(loop, "train_step", train_step)
    what = "the weights are no longer finite" if how == "inf" else "the loss of one validation batch is nan"
    with pytest.raises(HeedError, match=rf"step 2: {what}: the weights have diverged; training stopped without "
                                        r"saving them and the last checkpoint \(step 1, in .*\) is kept"):
        finetune(tiny_run(data_file, tmp_path / "run", eval_every=5), log=quiet)
    assert checkpoint.load(tmp_path / "run")["loop"]["step"] == 1
