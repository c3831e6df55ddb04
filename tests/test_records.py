import json

import pytest

from heed.commands.cli import main
from heed.data.records import FieldMap, load_records, split_records
from heed.errors import HeedError
from tests.conftest import RECORDS


def problems_of(path, **kw):
    with pytest.raises(HeedError) as info:
        load_records(path, **kw)
    return info.value.problems


def test_loads_json_array_and_jsonl_alike(write_json, tmp_path):
    a = load_records(write_json(RECORDS))
    lines = "\n".join(json.dumps(r) for r in RECORDS) + "\n\n"
    b = load_records(write_json(None, "data.jsonl", raw=lines))
    assert [(r.instruction, r.input, r.output) for r in a] == [(r.instruction, r.input, r.output) for r in b]
    assert [r.index for r in a] == list(range(len(RECORDS)))


def test_input_optional_and_response_alias(write_json):
    recs = load_records(write_json([{"instruction": "Hi", "response": "Hello"}, {"instruction": "A", "input": None, "output": "B"}]))
    assert (recs[0].input, recs[0].output) == ("", "Hello")
    assert recs[1].input == ""


def test_field_mapping(write_json):
    path = write_json([{"prompt": "Hi", "ctx": "x", "completion": "Yo"}])
    rec = load_records(path, FieldMap.parse("instruction=prompt,input=ctx,output=completion"))[0]
    assert (rec.instruction, rec.input, rec.output) == ("Hi", "x", "Yo")
    with pytest.raises(HeedError, match="--fields"):
        FieldMap.parse("question")


def test_every_problem_is_listed_with_file_record_and_field(write_json):
    path = write_json([
        {"instruction": "ok", "output": "fine"},
        {"input": "x", "output": "y"},
        {"instruction": 3, "output": "y"},
        {"instruction": "  ", "output": "y"},
        "just a string",
        {"instruction": "a", "input": ["x"], "output": None},
        {"instruction": "a", "output": ""},
        {"instruction": "a"},
    ])
    got = problems_of(path)
    assert got == [
        f"{path}: record 1: 'instruction' is missing (expected keys: instruction, input (optional), output)",
        f"{path}: record 2: 'instruction' must be a string, found int",
        f"{path}: record 3: 'instruction' is empty",
        f"{path}: record 4: not an object (found str); each record must be a JSON object",
        f"{path}: record 5: 'input' must be a string, found list",
        f"{path}: record 5: 'output' must be a string, found NoneType",
        f"{path}: record 6: 'output' is empty",
        f"{path}: record 7: 'output' is missing (expected keys: instruction, input (optional), output)",
    ]


def test_invalid_json_names_line_and_column(write_json):
    path = write_json(None, raw='[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]')
    assert problems_of(path) == [f"{path}: line 3, column 23: invalid JSON: Expecting ',' delimiter"]


def test_invalid_jsonl_lines_are_all_reported(write_json):
    raw = '{"instruction": "a", "output": "b"}\n{"instruction": \n\n{"output": "b"}\n'
    path = write_json(None, "d.jsonl", raw=raw)
    got = problems_of(path)
    assert got[0].startswith(f"{path}: record 1 (line 2, column 17): invalid JSON")
    assert got[1] == f"{path}: record 2 (line 4): 'instruction' is missing (expected keys: instruction, input (optional), output)"


@pytest.mark.parametrize("raw, message", [
    ("", "the file is empty"),
    ("[]", "contains no records"),
    ('{"data": [{"instruction": "a", "output": "b"}]}', "key 'data' holds a list"),
])
def test_file_level_problems(write_json, raw, message):
    assert message in problems_of(write_json(None, raw=raw))[0]


def test_missing_file(tmp_path):
    assert problems_of(tmp_path / "nope.json") == [f"{tmp_path / 'nope.json'}: no such file"]


def test_output_not_required_for_generation(write_json):
    rec = load_records(write_json([{"instruction": "a"}]), require_output=False)[0]
    assert rec.output is None


def test_default_split_matches_original_design(shared_data):
    split = split_records(load_records(shared_data))
    assert split.sizes() == {"train": 935, "test": 110, "val": 55}
    assert split.train[0].index == 0 and split.test[0].index == 935 and split.val[0].index == 1045


def test_shuffle_is_seeded_and_overrides_take_their_share(data_file):
    recs = load_records(data_file)
    a = split_records(recs, shuffle=True, seed=1)
    b = split_records(recs, shuffle=True, seed=1)
    c = split_records(recs, shuffle=True, seed=2)
    assert [r.index for r in a.train] == [r.index for r in b.train] != [r.index for r in c.train]
    given = recs[:2]
    s = split_records(recs, test=given)
    assert s.test == given and len(s.train) + len(s.val) == len(recs)
    s = split_records(recs, test=given, val=given)
    assert len(s.train) == len(recs)


def test_cli_reports_all_problems_without_traceback(write_json, capsys):
    path = write_json([{"instruction": "a"}, {"output": "b"}])
    code = main(["data", "check", "--model", "random:gpt2-tiny", "--data", path])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"heed: error: {path}: record 0: 'output' is missing (expected keys: instruction, input (optional), output)",
        f"heed: error: {path}: record 1: 'instruction' is missing (expected keys: instruction, input (optional), output)",
    ]
    assert "Traceback" not in err


def test_cli_lists_problems_of_every_file(write_json, capsys):
    good = write_json(RECORDS)
    bad = write_json([{"instruction": ""}], name="val.json")
    code = main(["data", "check", "--model", "random:gpt2-tiny", "--data", good, "--val-file", bad])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(bad in line for line in err)
