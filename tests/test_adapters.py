"""LoRA adapters saved on their own: heed train --lora writes adapter/ beside the merged model,
--no-merge writes the adapter alone, and heed loads an adapter directory onto its base model."""

from __future__ import annotations

import json

import pytest
import torch

from heed.commands.cli import main
from tests.tolerances import assert_rounding_close

pytest.importorskip("peft")

TRAIN = ["train", "--model", "random:gpt2-tiny", "--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout",
         "0", "--lr", "1e-2", "--batch-size", "2", "--max-steps", "3", "--eval-every", "3", "--eval-batches", "1",
         "--precision", "fp32", "--no-sample", "--no-generate", "--no-audit", "--seed", "7"]
# Merged (W + BA)x and unmerged Wx + B(Ax) differ by rounding over the widest reduction, GPT-2-tiny's MLP.
WIDEST = 256
IDS = torch.tensor([[464, 3290, 318, 257, 1332, 13, 50256, 40, 1101]])


def logits(spec: str) -> torch.Tensor:
    from heed.model import load_model

    with torch.no_grad():
        return load_model(spec)(input_ids=IDS).logits


def test_lora_run_saves_the_adapter_beside_the_merged_model(data_file, tmp_path):
    out = tmp_path / "run"
    assert main(TRAIN + ["--data", data_file, "--out", str(out)]) == 0
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "random:gpt2-tiny" and config["r"] == 4

    merged, from_adapter = logits(str(out)), logits(str(adapter))
    assert_rounding_close(from_adapter, merged, terms=WIDEST)
    assert not torch.allclose(merged, logits("random:gpt2-tiny"), atol=1e-3)  # the adapter changed something


def test_no_merge_saves_only_the_adapter_and_loads_it(data_file, tmp_path):
    merged_out, adapter_out = tmp_path / "merged", tmp_path / "alone"
    assert main(TRAIN + ["--data", data_file, "--out", str(merged_out)]) == 0
    assert main(TRAIN + ["--data", data_file, "--out", str(adapter_out), "--no-merge"]) == 0
    names = {p.name for p in adapter_out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "heed.json", "tokenizer.json"} <= names
    assert "model.safetensors" not in names and "config.json" not in names and "adapter" not in names
    # the same run (same seed) unmerged: loading the adapter gives the merged model's logits
    assert_rounding_close(logits(str(adapter_out)), logits(str(merged_out)), terms=WIDEST)
    from heed.model import load_tokenizer, model_config

    assert model_config(str(adapter_out)).n_layer == 2 and load_tokenizer(str(adapter_out)).eos_token_id == 50256


def test_no_merge_without_lora_is_refused(data_file, tmp_path, capsys):
    assert main(["train", "--model", "random:gpt2-tiny", "--data", data_file, "--out", str(tmp_path / "x"),
                 "--no-merge"]) == 2
    assert "--no-merge needs --lora" in capsys.readouterr().err


def test_adapter_without_a_base_is_one_line(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    from heed.model import gpt2_tokenizer

    gpt2_tokenizer().save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--instruction", "hi", "--max-new-tokens", "2"]) == 2
    assert "base_model_name_or_path" in capsys.readouterr().err


@pytest.mark.parametrize("targets,expected", [
    ("all-linear", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
    (None, {"attn.c_attn"}),  # peft's default for GPT-2
    (["c_fc"], {"mlp.c_fc"}),
])
def test_lora_last_layers_adapts_only_the_top_layers(targets, expected):
    from heed.config import LoraConfig
    from heed.model import load_model
    from heed.model.lora import add_adapters

    cfg = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=targets, last_layers=1)
    model = add_adapters(load_model("random:gpt2-tiny"), cfg)  # two layers: h.0, h.1
    adapted = {n.split(".lora_A")[0].split("transformer.h.")[1] for n, _ in model.named_parameters()
               if ".lora_A" in n}
    assert adapted == {"1." + name for name in expected}
    assert not any("lm_head" in n for n, _ in model.named_parameters() if "lora_" in n)


def test_lora_last_layers_trains_no_lower_layer_and_saves_its_setting(data_file, tmp_path):
    out = tmp_path / "run"
    assert main(TRAIN + ["--data", data_file, "--out", str(out), "--lora-targets", "all-linear",
                         "--lora-last-layers", "1"]) == 0
    from heed.model import load_model

    saved, base = load_model(str(out)).state_dict(), load_model("random:gpt2-tiny", seed=7).state_dict()  # --seed 7
    lower = [k for k in base if k.startswith("transformer.h.0.")]
    assert lower and all(torch.equal(saved[k], base[k]) for k in lower)  # frozen, never adapted
    assert not torch.equal(saved["transformer.h.1.mlp.c_fc.weight"], base["transformer.h.1.mlp.c_fc.weight"])
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]


def test_lora_last_layers_beyond_the_model_is_one_line(data_file, tmp_path, capsys):
    assert main(TRAIN + ["--data", data_file, "--out", str(tmp_path / "x"), "--lora-last-layers", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--lora-last-layers 3: the model has 2 layers" in err
    assert not (tmp_path / "x" / "model.safetensors").exists()
