"""Shared fixtures: the offline GPT-2 tokenizer, small record files, the shared dataset when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "instruction-data.json"

RECORDS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Reverse the words.", "input": "red green blue", "output": "blue green red"},
    {"instruction": "Give the plural of 'cat'.", "input": "", "output": "cats"},
    {"instruction": "Uppercase the text.", "input": "hello", "output": "HELLO"},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
    {"instruction": "Count the words.", "input": "one two three", "output": "3"},
    {"instruction": "Sort the letters.", "input": "cba", "output": "abc"},
    {"instruction": "Lowercase the text.", "input": "LOUD", "output": "loud"},
    {"instruction": "Subtract 4 from 9.", "input": "", "output": "5"},
    {"instruction": "Give the past tense of 'walk'.", "input": "", "output": "walked"},
]


@pytest.fixture(scope="session")
def tokenizer():
    from heed.model import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture
def write_json(tmp_path):
    def write(obj, name="data.json", raw: str | None = None) -> str:
        path = tmp_path / name
        path.write_text(raw if raw is not None else json.dumps(obj), encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def data_file(write_json):
    return write_json(RECORDS)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_file():
        pytest.skip("../shared/data/instruction-data.json is not present")
    return str(SHARED_DATA)
