"""heed export against llama.cpp itself (``make test-integration``): a tiny random GPT-2 exported to GGUF
and loaded with llama-cpp-python decodes greedily token for token as heed does, for f32 and f16 (heed's
weights rounded to f16 for the comparison); q8_0 loads and answers.

The converter comes from the llama-cpp-python sdist: $HEED_LLAMA_CPP_SDIST, else the copy
``heed export --fetch-converter`` put in heed's cache (the Makefile fetches it).
"""

from __future__ import annotations

import os

import pytest
import torch

from heed.commands.cli import main

PROMPTS = ["Add 2 and 3.", "Name three colours.", "Reverse the words: red green blue", "What is the capital of France?"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def converter():
    from heed.errors import HeedError
    from heed.export.converter import find_converter

    try:
        return str(find_converter(os.environ.get("HEED_LLAMA_CPP_SDIST")))
    except HeedError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from heed.model import gpt2_tokenizer, load_model, save_model

    out = tmp_path_factory.mktemp("export") / "tiny"
    save_model(load_model("random:gpt2-tiny"), gpt2_tokenizer(), out, {"template": "alpaca"})
    return out


def heed_greedy(model, prompt_ids: list[int]) -> list[int]:
    from heed.config import GenerateConfig
    from heed.generate import generate_ids

    return generate_ids(model, [prompt_ids], pad_id=50256, eos=50256, cfg=GenerateConfig(max_new_tokens=NEW_TOKENS))[0]


def llama_greedy(llm, prompt_ids: list[int]) -> list[int]:
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos() or len(out) == NEW_TOKENS:
            break
        out.append(token)
    return out


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_exported_model_decodes_as_heed_does(converter, model_dir, tmp_path, quant):
    llama_cpp = pytest.importorskip("llama_cpp")
    from heed.data.encode import record_prompt_ids
    from heed.data.records import Record
    from heed.data.templates import TEMPLATES
    from heed.model import gpt2_tokenizer, load_model

    out = tmp_path / f"tiny-{quant}.gguf"
    assert main(["export", "--model", str(model_dir), "--gguf", str(out), "--quant", quant,
                 "--converter", converter]) == 0
    assert (tmp_path / "Modelfile").is_file()
    model = load_model(str(model_dir))
    if quant == "f16":  # the same weights llama.cpp holds
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    records = [Record(i, p, "", None, {}) for i, p in enumerate(PROMPTS)]
    prompts = record_prompt_ids(records, gpt2_tokenizer(), TEMPLATES["alpaca"])
    assert llm.tokenize(gpt2_tokenizer().decode(prompts[0]).encode(), add_bos=False, special=False) == prompts[0]
    for ids in prompts:
        assert llama_greedy(llm, ids) == heed_greedy(model, ids)


def test_q8_0_holds_q8_0_weights_and_loads(converter, model_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from gguf import GGMLQuantizationType, GGUFReader

    out = tmp_path / "tiny-q8.gguf"
    assert main(["export", "--model", str(model_dir), "--gguf", str(out), "--quant", "q8_0",
                 "--converter", converter]) == 0
    kinds = {t.name: t.tensor_type for t in GGUFReader(str(out)).tensors}
    assert kinds["blk.0.attn_qkv.weight"] == GGMLQuantizationType.Q8_0
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    assert llm.n_vocab() == 50257 and llm.n_ctx() == 256
