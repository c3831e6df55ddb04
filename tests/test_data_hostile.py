"""Small, odd and hostile data files: each gives one clear line and exit 2, or works; never a traceback."""

import json
import os
import pathlib

import pytest

from heed.commands.cli import main
from heed.config import DataConfig, RunConfig, TrainConfig
from heed.data.records import load_records
from heed.errors import HeedError
from heed.commands.finetune import finetune as train
from tests.conftest import RECORDS

ONE = {"instruction": "x", "output": "y"}
MODEL = ["--model", "random:gpt2-tiny"]


def problems_of(path, **kw):
    with pytest.raises(HeedError) as info:
        load_records(path, **kw)
    return info.value.problems


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line.removeprefix("heed: error: ") for line in err.splitlines()]


# --- small inputs and the split rule shared by `heed data check` and `heed train` -----------------------


@pytest.mark.parametrize("raw", [json.dumps(ONE), json.dumps(ONE, indent=2) + "\n", json.dumps(ONE) + "\n\n"])
def test_a_file_holding_one_object_is_one_record(write_json, raw):
    [record] = load_records(write_json(None, raw=raw))
    assert (record.index, record.instruction, record.output) == (0, "x", "y")


def test_a_one_object_file_with_a_list_field_is_a_record_not_a_wrapper(write_json):
    [record] = load_records(write_json(None, raw=json.dumps(ONE | {"tags": ["a", "b"]})))
    assert record.raw["tags"] == ["a", "b"]


@pytest.mark.parametrize("name, raw", [("one.json", json.dumps(ONE)), ("one.jsonl", json.dumps(ONE) + "\n")])
def test_one_record_data_check_and_train_agree(write_json, capsys, monkeypatch, name, raw):
    path = write_json(None, name, raw=raw)
    code, out, _ = cli(capsys, "data", "check", *MODEL, "--data", path)
    empty = (f"{path}: the training split is empty (1 record split train 0 / test 0 / val 1 by --train-frac 0.85 "
             "--test-frac 0.1); raise --train-frac (e.g. --train-frac 1 --test-frac 0 for a tiny file) or add records")
    assert code == 2 and f"  - {empty}" in out.splitlines()

    import heed.train.loop

    def no_model(*a, **k):
        raise AssertionError("the model must not load for an untrainable split")

    monkeypatch.setattr(heed.train.loop, "load_tokenizer", no_model)
    code, _, err = cli(capsys, "train", *MODEL, "--data", path, "--out", str(pathlib.Path(path).parent / "run"))
    assert code == 2 and err == [empty]

    monkeypatch.undo()
    code, out, _ = cli(capsys, "data", "check", *MODEL, "--data", path, "--train-frac", "1", "--test-frac", "0")
    assert code == 0 and out.splitlines()[-1] == "trainable: yes"


def test_empty_validation_split_trains_and_data_check_agrees(write_json, tmp_path, capsys):
    bad = [{"instruction": None, "output": "z"}]
    path = write_json(RECORDS[:5] + bad + RECORDS[5:])  # 11 records, one invalid: skipped
    flags = ["--train-frac", "0.9", "--test-frac", "0.1", "--skip-invalid"]
    code, out, _ = cli(capsys, "data", "check", *MODEL, "--data", path, *flags, "--json")
    audit = json.loads(out)
    assert code == 0 and audit["trainable"] and audit["split"] == {"train": 9, "test": 1, "val": 0}
    data = DataConfig(data=path, train_frac=0.9, test_frac=0.1, skip_invalid=True)
    run = RunConfig(data, TrainConfig(model="random:gpt2-tiny", out=str(tmp_path / "run"), batch_size=4, epochs=1, eval_every=1,
                                      eval_batches=1, precision="fp32", generate_test=False))
    result = train(run, log=lambda _: None).result  # the end-of-epoch sample takes a training record
    assert result.steps == 2 and result.final_val_loss is None and result.final_train_loss is not None
    with pytest.raises(HeedError, match=r"early stopping \(--patience\) needs validation records"):
        train(RunConfig(data, TrainConfig(model="random:gpt2-tiny", out=str(tmp_path / "run2"), patience=2)),
              log=lambda _: None)


# --- many bad records: said once, not once per record ---------------------------------------------------


def test_wrong_column_names_are_summarised(write_json):
    path = write_json([{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(5000)])
    assert problems_of(path) == [
        f"{path}: 'instruction' is missing in all 5000 records",
        f"{path}: 'output' is missing in all 5000 records",
        f"{path}: keys found: prompt, answer; map them with --fields instruction=prompt,output=answer",
    ]


def test_partly_missing_field_and_other_problems_are_capped(write_json):
    records = [dict(ONE) for _ in range(40)]
    for i in range(0, 24, 2):
        del records[i]["output"]
    for i in range(25, 40):
        records[i]["instruction"] = None
    path = write_json(records)
    got = problems_of(path)
    assert got[0] == f"{path}: 'output' is missing in 12 of 40 records (0, 2, 4, 6, 8, …)"
    assert got[1] == f"{path}: keys found: instruction, output; name them with --fields output=KEY"
    assert got[2] == f"{path}: record 25: 'instruction' must be a string, found NoneType"
    assert len(got) == 13 and got[-1] == f"{path}: ... and 5 more problems in 5 more records"


def test_many_bad_json_lines_are_capped(write_json):
    raw = json.dumps(ONE) + "\n" + "{'instruction': 'x'}\n" * 999
    got = problems_of(write_json(None, "d.jsonl", raw=raw))
    assert len(got) == 11 and got[-1].endswith("... and 989 more problems in 989 more records")
    assert got[0].endswith("record 1 (line 2, column 2): invalid JSON: Expecting property name enclosed in double quotes")


# --- hostile files ---------------------------------------------------------------------------------------


def test_lone_surrogate_is_refused_with_record_and_field(write_json, capsys):
    raw = '[{"instruction": "ok", "output": "fine"}, {"instruction": "a\\ud800b", "output": "y", "meta": ["\\udfff"]}]'
    path = write_json(None, raw=raw)
    assert problems_of(path) == [
        f"{path}: record 1: 'instruction' holds a lone surrogate \\ud800 (character 1), which is not text; "
        "fix or remove that escape",
        f"{path}: record 1: 'meta' holds a lone surrogate \\udfff (character 0), which is not text; "
        "fix or remove that escape",
    ]
    code, _, err = cli(capsys, "data", "check", *MODEL, "--data", path)
    assert code == 2 and len(err) == 2


@pytest.mark.parametrize("raw, message", [
    ("[" * 100_000, "invalid JSON: nested deeper than Python's JSON reader allows"),
    ('[\n{"instruction": "x", "output": ' + "7" * 5000 + "}]",
     "line 2: a number with 5000 digits, more than Python reads (4300); write it as a string"),
    ('{\n  "instruction": "x",\n  "output": "y",\n}\n', "line 4, column 1: invalid JSON: Expecting property name "
     "enclosed in double quotes"),
    ('{\n  "instruction": "x", "output": "y"\n}\n{\n  "instruction": "z", "output": "w"\n}\n',
     "line 4: a second JSON value follows the first; heed reads one JSON array of records, or JSON Lines "
     "(one record object per line)"),
    ("instruction,output\n" + "do x,done\n" * 1000, "not JSON or JSON Lines (looks like CSV); heed reads a JSON "
     "array of records, or JSON Lines (one record object per line)"),
    ("instruction\toutput\nx\ty\n", "not JSON or JSON Lines (looks like tab-separated values)"),
    ("- instruction: x\n  output: y\n", "not JSON or JSON Lines (looks like YAML)"),
    ('"just a string"', "holds a single JSON str; expected a JSON array of records or JSON Lines"),
])
def test_unreadable_files_say_it_once(write_json, capsys, raw, message):
    path = write_json(None, raw=raw)
    [line] = problems_of(path)
    assert line.startswith(f"{path}: {message}")
    code, _, err = cli(capsys, "data", "check", *MODEL, "--data", path)
    assert code == 2 and len(err) == 1


def test_bad_line_in_json_lines_names_the_line(write_json):
    raw = json.dumps(ONE) + "\n" + '{"instruction": ' + "9" * 5000 + "}\n" + "[" * 100_000 + "\n"
    path = write_json(None, "d.jsonl", raw=raw)
    assert problems_of(path) == [
        f"{path}: record 1 (line 2): a number with 5000 digits, more than Python reads (4300); write it as a string",
        f"{path}: record 2 (line 3): invalid JSON: nested deeper than Python's JSON reader allows",
    ]


def test_byte_order_mark_is_accepted(write_json, tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS).encode())
    assert len(load_records(path)) == len(RECORDS)
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in RECORDS).encode())
    assert len(load_records(path)) == len(RECORDS)
    path.write_bytes("[]".encode("utf-16"))
    assert problems_of(path) == [f"{path}: UTF-16 text; save it as UTF-8"]


def test_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert problems_of(tmp_path / "a") == [f"{tmp_path / 'a'}: cannot read it: Too many levels of symbolic links"]


def test_directory(tmp_path, capsys):
    assert problems_of(tmp_path) == [f"{tmp_path}: is a directory, expected a JSON or JSON Lines file"]
    code, _, err = cli(capsys, "train", *MODEL, "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert code == 2 and err == [f"{tmp_path}: is a directory, expected a JSON or JSON Lines file"]


def test_endless_streams_are_refused_unread(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it would wait for a writer forever
    assert problems_of(tmp_path / "fifo") == [f"{tmp_path / 'fifo'}: not a regular file (a FIFO); save the "
                                              "records to a file and pass that"]
    assert problems_of("/dev/zero") == ["/dev/zero: not a regular file (a device); save the records to a file "
                                        "and pass that"]


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.json"
    path.write_text(json.dumps(RECORDS))

    def refuse(self, *a, **k):  # tests run as root, where chmod 000 would not stop a read
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(pathlib.Path, "read_text", refuse)
    assert problems_of(path) == [f"{path}: cannot read it: Permission denied"]


# --- --skip-invalid --------------------------------------------------------------------------------------


def test_skip_invalid_drops_bad_records_in_one_line(write_json, capsys):
    records = [dict(ONE), {"instruction": None, "output": "y"}, dict(ONE), "text", {"instruction": "z"}]
    path = write_json(records)
    with pytest.raises(HeedError):
        load_records(path)
    kept = load_records(path, skip_invalid=True)
    assert [r.index for r in kept] == [0, 2]
    assert capsys.readouterr().err == (f"heed: warning: {path}: skipped 3 invalid records (1, 3, 4); "
                                       "run without --skip-invalid to see why\n")
    with pytest.raises(HeedError, match="contains no records that are valid"):
        load_records(write_json([{"output": "y"}], name="none.json"), skip_invalid=True)


def test_skip_invalid_in_the_commands(write_json, tmp_path, capsys):
    records = RECORDS[:3] + [{"instruction": None, "output": "y"}] + RECORDS[3:]
    path = write_json(records)
    assert cli(capsys, "data", "check", *MODEL, "--data", path)[0] == 2
    code, out, _ = cli(capsys, "data", "check", *MODEL, "--data", path, "--skip-invalid", "--json")
    assert code == 0 and json.loads(out)["records"] == len(RECORDS)

    code, out, _ = cli(capsys, "inspect", *MODEL, "--data", path, "--skip-invalid", "--index", "4", "--json")
    assert code == 0 and json.loads(out)["index"] == 4  # record numbers stay the file's
    code, _, err = cli(capsys, "inspect", *MODEL, "--data", path, "--skip-invalid", "--index", "3")
    assert code == 2 and err[-1] == f"{path}: --index 3 is an invalid record, skipped by --skip-invalid"
    code, _, err = cli(capsys, "inspect", *MODEL, "--data", path, "--skip-invalid", "--index", "11")
    assert code == 2 and err[-1] == f"{path}: --index 11 is out of range; the file has records 0 to 10"

    out_file = tmp_path / "answers.json"
    code, _, _ = cli(capsys, "generate", *MODEL, "--data", path, "--skip-invalid", "--max-new-tokens", "2",
                     "--out", str(out_file))
    assert code == 0 and len(json.loads(out_file.read_text())) == len(RECORDS)
