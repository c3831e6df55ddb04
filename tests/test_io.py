"""heed.io: atomic writes, and files with the permissions the umask gives any new file."""

import os
import stat
from pathlib import Path

import pytest

from heed import io
from heed.commands.cli import main


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    os.umask(before)
    yield set_umask
    os.umask(before)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_training_run_writes_with_the_umasks_permissions(tmp_path, umask, mask):
    umask(mask)
    assert io.umask() == mask
    work = tmp_path / "work"
    tasks, out = work / "tasks.json", work / "run"
    assert main(["tasks", "make", "--n", "10", "--out", str(tasks)]) == 0
    assert main(["train", "--model", "random:gpt2-tiny", "--data", str(tasks), "--out", str(out), "--epochs", "1",
                 "--batch-size", "4", "--max-new-tokens", "4", "--checkpoint-every", "1", "--precision", "fp32"]) == 0
    assert main(["report", str(out)]) == 0
    modes = _modes(work)
    for name in ("model.safetensors", "config.json", "heed.json", "tokenizer.json", "checkpoint/model.safetensors",
                 "checkpoint/state.json", "run.yaml", "metrics.jsonl",
                 "loss.png", "audit.json", "test-with-response.json", "test-scores.json", "report.html"):
        assert f"run/{name}" in modes, name
    files = {name: mode for name, mode in modes.items() if (work / name).is_file()}
    dirs = {name: mode for name, mode in modes.items() if (work / name).is_dir()}
    assert {name: oct(m) for name, m in files.items() if m != 0o666 & ~mask} == {}
    assert {name: oct(m) for name, m in dirs.items() if m != 0o777 & ~mask} == {}


def test_atomic_dir_takes_the_umasks_mode_and_replaces_whole(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "cache"
    with io.atomic_dir(target) as staging:
        (staging / "a").write_text("1")
        (staging / "a").chmod(0o600)  # as a library that stages its own files leaves them
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and (target / "a").read_text() == "1"
    assert stat.S_IMODE((target / "a").stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as staging:
            (staging / "a").write_text("2")
            raise RuntimeError("half-way")
    assert (target / "a").read_text() == "1"  # the failed write left the old directory alone
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # and no staging behind


def test_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert io.umask() == 0o027
    assert os.umask(0o027) == 0o027
