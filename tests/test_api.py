"""The Python API: `import heed` is light, and the README's example runs as written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import heed

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_import_heed_loads_no_heavy_module():
    code = "import sys, heed; print(sorted(m for m in ('torch', 'transformers', 'heed.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    assert len(scope["records"]) == 10 and scope["records"][0].turns[0] == ("user", "Add 2 and 3.")
    assert [(t["role"], t["trained"]) for t in scope["shown"]["turns"]] == [("prompt", 0), ("assistant", 2)]
    assert scope["trained"].result.steps == 2
    meta = json.loads((tmp_path / "runs/api/heed.json").read_text())
    assert meta["system"] == "Answer briefly." and meta["template"] == "alpaca"
    assert len(scope["answers"]) == 1 and isinstance(scope["answers"][0], str)
    assert scope["scores"].n == 2

    # The saved tokenizer formats prompts as heed does, the system prompt included.
    from heed.data.encode import record_prompt_ids
    from heed.data.records import Record
    from heed.data.templates import TEMPLATES
    from heed.model import load_tokenizer

    saved = load_tokenizer(str(tmp_path / "runs/api"))
    ids = saved.apply_chat_template([{"role": "user", "content": "Add 2 and 3."}], add_generation_prompt=True)
    record = Record(0, "Add 2 and 3.", "", None, {}, system="Answer briefly.")
    assert list(ids["input_ids"] if hasattr(ids, "keys") else ids) == \
        record_prompt_ids([record], saved, TEMPLATES["alpaca"])[0]
    assert scope["trained"].tokenizer.chat_template is None  # the run's own tokenizer was left as it was

    # Generation reads the saved system prompt back, as it does the template.
    import heed.generate

    seen = []
    monkeypatch.setattr(heed.generate, "generate_responses",
                        lambda model, tok, template, records, cfg: seen.extend(records) or [""] * len(records))
    heed.respond("runs/api", [{"instruction": "Add 2 and 3."}])
    assert seen[0].system == "Answer briefly."


def test_load_records_from_a_list_of_dicts_names_the_problems():
    records = heed.load_records([{"instruction": "a", "output": "b"}], system="S")
    assert (records[0].instruction, records[0].output, records[0].system) == ("a", "b", "S")
    with pytest.raises(heed.HeedError) as e:
        heed.load_records([{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    assert e.value.problems == ["records: record 1: 'output' is missing "
                                "(expected keys: instruction, input (optional), output)"]


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        heed.nope  # noqa: B018


def test_respond_leaves_the_callers_records_as_they_were(tmp_path, monkeypatch):
    import heed.generate
    from heed.data.records import Record
    from heed.model import gpt2_tokenizer, load_model, save_model

    save_model(load_model("random:gpt2-tiny"), gpt2_tokenizer(), tmp_path / "m",
               {"template": "alpaca", "system": "Answer briefly."})
    seen = []
    monkeypatch.setattr(heed.generate, "generate_responses",
                        lambda model, tok, template, records, cfg: seen.extend(records) or [""] * len(records))
    mine = [Record(0, "Add 2 and 3.", "", None, {}), Record(1, "Name a colour.", "", None, {})]
    assert heed.respond(str(tmp_path / "m"), mine) == ["", ""]
    assert [r.system for r in seen] == ["Answer briefly.", "Answer briefly."]  # the model's own system prompt
    assert [r.system for r in mine] == [None, None]  # on copies: the caller's records are unchanged
    assert [r.instruction for r in seen] == [r.instruction for r in mine]
