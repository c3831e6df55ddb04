"""heed export without llama.cpp: the Modelfile's template formats every record as heed's template does;
the converter is found (or its absence is one line); bad arguments are refused before any work."""

from __future__ import annotations

import io
import tarfile

import pytest

from heed.commands.cli import main
from heed.data.templates import TEMPLATES
from heed.export.modelfile import go_template, modelfile, ollama_prompt, render, stop_sequences

RECORDS = [("Add 2 and 3.", ""), ("Reverse the words.", "red green blue"), ("Say {{ hi }} \"\"\" ok", "x\n\ny"),
           ("", "only input"), ("Line one\nline two", "")]


@pytest.mark.parametrize("name", [n for n, t in TEMPLATES.items() if not t.uses_tokenizer])
def test_modelfile_template_formats_records_as_heed_does(name, tokenizer):
    template = TEMPLATES[name]
    go = go_template(template, tokenizer)
    assert go.count("{{ .Prompt }}") == 1
    for instruction, input in RECORDS:
        assert render(go, ollama_prompt(instruction, input, template)) == template.prompt(instruction, input, tokenizer)


def test_chat_template_leaves_bos_to_the_runtime():
    class ChatTokenizer:  # a tokenizer with a Gemma-style chat template
        bos_token, eos_token, chat_template = "<bos>", "<end_of_turn>", "yes"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<bos><start_of_turn>user\n{messages[0]['content']}<end_of_turn>\n<start_of_turn>model\n"

    template, tok = TEMPLATES["chat"], ChatTokenizer()
    go = go_template(template, tok)
    assert go == "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
    for instruction, input in RECORDS[:2]:
        assert "<bos>" + render(go, ollama_prompt(instruction, input, template)) == template.prompt(instruction, input, tok)
    assert stop_sequences(template, tok) == ["<end_of_turn>"]


def test_modelfile_carries_stops_and_greedy_parameters(tokenizer):
    text = modelfile("m.gguf", TEMPLATES["alpaca"], tokenizer, num_ctx=512)
    lines = text.splitlines()
    assert "FROM ./m.gguf" in lines and "PARAMETER temperature 0" in lines and "PARAMETER num_ctx 512" in lines
    assert 'PARAMETER stop "### Instruction:"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    assert text[start:text.index('"""', start)] == go_template(TEMPLATES["alpaca"], tokenizer)


def test_missing_converter_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEED_CACHE", str(tmp_path / "cache"))
    assert main(["export", "--model", "random:gpt2-tiny", "--gguf", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "heed export --fetch-converter" in err and "--converter PATH" in err and "\n" == err[-1] and err.count("\n") == 1
    assert not (tmp_path / "m.gguf").exists()


def test_converter_from_an_sdist_unpacks_only_what_it_needs(tmp_path, monkeypatch):
    from heed.export.converter import find_converter

    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py", "src/llama.cpp",
                     "../evil.py"):
            data = b"# test\n"
            info = tarfile.TarInfo(f"llama_cpp_python-0.3.36/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("HEED_CACHE", str(tmp_path / "cache"))
    tree = find_converter(str(sdist))
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert files == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not (tmp_path / "cache" / "evil.py").exists()
    assert find_converter(None) == tree  # the cache is used next time


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert main(["export", "--model", "random:gpt2-tiny", "--gguf", str(tmp_path / "m.bin")]) == 2
    assert "name the file *.gguf" in capsys.readouterr().err
    assert main(["export", "--model", "random:gpt2-tiny"]) == 2
    assert "--gguf OUT.gguf" in capsys.readouterr().err


def test_a_relative_gguf_path_is_written_where_it_names(tmp_path, monkeypatch, capsys):
    # a stand-in converter that writes --outfile as the real one does: relative to its own working directory
    tool = tmp_path / "llama.cpp"
    tool.mkdir()
    (tool / "convert_hf_to_gguf.py").write_text(
        "import sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\nopen(out, 'wb').write(b'GGUF')\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["export", "--model", "random:gpt2-tiny", "--gguf", "m.gguf", "--converter", str(tool)]) == 0
    assert (work / "m.gguf").read_bytes() == b"GGUF" and (work / "Modelfile").is_file()
    assert sorted(p.name for p in tool.iterdir()) == ["convert_hf_to_gguf.py"]  # nothing left in its directory
    assert "wrote m.gguf" in capsys.readouterr().out
