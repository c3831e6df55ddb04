"""Output files: a --out that cannot be written (empty, a directory, under a file, in a directory nobody
may write) is one line naming the flag, before the work that would have gone into it."""

import json
import os
import tempfile
from pathlib import Path

import pytest

import heed.model
from heed import io
from heed.commands.cli import main
from heed.errors import HeedError
from tests.fake_servers import FakeServer, ollama_stream

RESPONSES = [{"instruction": f"Task {i}.", "input": "", "output": str(i), "model_response": str(i)} for i in range(2)]


@pytest.fixture
def unwritable(tmp_path):
    """A directory this process cannot create files in: a mode-0555 one, or (as root, whom modes do not
    stop) /sys, where even root cannot."""
    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o555)
    try:
        tempfile.mkstemp(dir=path)
    except OSError:
        yield path
    else:
        try:
            tempfile.mkstemp(dir="/sys")
        except OSError:
            yield Path("/sys")
        else:
            pytest.skip("no directory here refuses new files")
    finally:
        path.chmod(0o755)


def refuse_files_in(monkeypatch, directory: Path) -> None:
    """No new file in ``directory``, whoever runs the test (a mode that root would ignore)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or ".") == directory:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def bad_outs(tmp_path, unwritable):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir(exist_ok=True)
    return {"": "--out is empty", str(tmp_path / "a-dir"): "a directory, not a file",
            str(tmp_path / "new") + "/": "ends in '/'",
            str(tmp_path / "a-file" / "x.json"): "is a file, not a directory",
            str(unwritable / "x.json"): "cannot write in"}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_check_out_file(tmp_path, unwritable):
    for out, message in bad_outs(tmp_path, unwritable).items():
        with pytest.raises(HeedError, match=message) as caught:
            io.check_out_file(out, "--out")
        assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith("--out")
    assert io.check_out_file(tmp_path / "new" / "dirs" / "x.json") == tmp_path / "new" / "dirs" / "x.json"
    assert not (tmp_path / "new").exists(), "a check creates nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file", "locked"], "no probe is left"


def test_atomic_path_turns_os_errors_into_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    for bad in (tmp_path / "d", ""):
        with pytest.raises(HeedError, match="cannot write it"):
            io.write_json(bad, [1], what="--out")
    assert list((tmp_path / "d").iterdir()) == [] and not list(Path(".").glob(".*.tmp")), "no staging file is left"


def test_tasks_make_refuses_a_bad_out(tmp_path, unwritable, capsys):
    for out, message in bad_outs(tmp_path, unwritable).items():
        assert main(["tasks", "make", "--n", "3", "--out", out]) == 2, out
        err = one_error_line(capsys)
        assert err.startswith("heed: error: --out") and message in err


def test_generate_refuses_a_bad_out_before_loading_the_model(tmp_path, unwritable, capsys, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(heed.model, "load_model", refuse)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RESPONSES))
    for out, message in bad_outs(tmp_path, unwritable).items():
        assert main(["generate", "--model", "random:gpt2-tiny", "--data", str(data), "--out", out]) == 2, out
        assert message in one_error_line(capsys)
    # the default output, beside --data, is checked too
    refuse_files_in(monkeypatch, tmp_path)
    assert main(["generate", "--model", "random:gpt2-tiny", "--data", str(data)]) == 2
    assert f"--out {tmp_path / 'data-with-response.json'}: cannot write in " in one_error_line(capsys)


def test_generate_refuses_out_with_instruction(capsys):
    assert main(["generate", "--model", "random:gpt2-tiny", "--instruction", "hi", "--out", "x.json"]) == 2
    assert "--out writes the responses to --data" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["judge", "compare"])
def test_judge_and_compare_refuse_a_bad_out_before_asking(tmp_path, unwritable, capsys, command):
    path = tmp_path / "test-with-response.json"
    path.write_text(json.dumps(RESPONSES))
    inputs = ["--responses", str(path)] if command == "judge" else [str(path), str(path)]
    with FakeServer([ollama_stream("50")] * 8) as server:
        for out, message in bad_outs(tmp_path, unwritable).items():
            assert main([command, *inputs, "--url", server.url, "--out", out]) == 2, out
            assert message in one_error_line(capsys)
        assert main(["judge", "--responses", str(path), "--url", server.url, "--out", str(tmp_path / "j.png")]) == 2
        assert "give a .json path" in one_error_line(capsys)
    assert server.requests == [], "nothing was asked of the judge"


def test_report_refuses_a_run_dir_it_cannot_write(tmp_path, capsys, monkeypatch):
    (tmp_path / "heed.json").write_text("{}")
    refuse_files_in(monkeypatch, tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "RUN_DIR: the report" in err and "cannot write in" in err
    assert sorted(os.listdir(tmp_path)) == ["heed.json"]
