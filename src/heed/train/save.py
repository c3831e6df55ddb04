"""What a finished training run leaves in ``--out``: the model directory with heed.json, the resolved
configuration (run.yaml, which ``heed train --config`` takes back), the data audit (audit.json),
metrics.jsonl and loss.png."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from heed._version import __version__
from heed.errors import HeedError
from heed.io import staged_into, write_json, write_text
from heed.model import save_model
from heed.train.plot import plot_losses

RUN_CONFIG = "run.yaml"
# What heed writes into --out, by exact name: its own records, the checkpoint, the model directory
# (save_pretrained: config, weights, tokenizer files) and a LoRA run's adapter. --overwrite removes what an
# earlier run left of these, and nothing else.
OUTPUTS = frozenset({
    "heed.json", RUN_CONFIG, "audit.json", "metrics.jsonl", "loss.png", "test-with-response.json", "test-scores.json",
    "checkpoint", "report.html", "report.md", "config.json", "generation_config.json", "model.safetensors",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json", "additional_chat_templates", "adapter_config.json",
    "adapter_model.safetensors", "adapter"})
SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # a sharded model's weights
# Staging that a killed run can leave behind, named by tempfile (eight characters of its alphabet):
# heed.io.atomic_path / atomic_dir write ``.<output>.XXXXXXXX.tmp`` (and ``.checkpoint.XXXXXXXX.old``),
# heed.io.staged_into ``.staging.XXXXXXXX``, and an earlier heed ``.model.XXXXXXXX``.
RANDOM = r"[a-z0-9_]{8}"
STAGING = re.compile(rf"\.(staging|model)\.{RANDOM}")
ASIDE = re.compile(rf"\.(?P<name>.+)\.{RANDOM}\.(tmp|old)")


def is_output(name: str) -> bool:
    return name in OUTPUTS or bool(SHARD.fullmatch(name))


def is_temporary(name: str) -> bool:
    aside = ASIDE.fullmatch(name)
    return bool(STAGING.fullmatch(name)) or (aside is not None and is_output(aside["name"]))


def check_out(out: Path, *, overwrite: bool, resuming: bool) -> None:
    """Refuse an --out that cannot take this run's outputs, before anything loads or is written: a file,
    a directory that cannot be written, or one holding other files (unless --overwrite or --resume)."""
    if out.exists() and not out.is_dir():
        raise HeedError(f"--out {out}: a file, not a directory; choose another --out")
    if out.is_dir():
        others = [p.name for p in out.iterdir() if not is_temporary(p.name)]
        if others and not (overwrite or resuming):
            raise HeedError(f"--out {out}: not empty ({len(others)} entries, e.g. {sorted(others)[0]}); choose a new "
                            "--out, add --overwrite to replace the earlier run there, or --resume it")
    parent = out if out.is_dir() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise HeedError(f"--out {out}: {parent} is not a writable directory; choose another --out")


def clear_out(out: Path, *, overwrite: bool) -> None:
    """Remove heed's own temporaries left in ``out`` by a killed run, and with ``overwrite`` the outputs
    of an earlier run, so none of them is mistaken for this run's."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        if is_temporary(path.name) or (overwrite and is_output(path.name)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_meta(trained: Any) -> dict[str, Any]:
    run, result = trained.run, trained.result
    return {
        "heed_version": __version__,
        "template": run.data.template,
        "max_length": run.data.max_length,
        "train_on_prompt": run.data.train_on_prompt,
        "system": run.data.system,
        "last_turn_only": run.data.last_turn_only,
        "masking": "none (prompt trained)" if run.data.train_on_prompt else "prompt masked (response + EOS)",
        "base_model": run.train.model,
        "precision": trained.precision,
        "device": str(trained.device),
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 2),
        "split": trained.split.sizes(),
        "encode": trained.report.to_dict(),
        "config": run.to_dict(),
    }


def config_yaml(config: dict[str, Any]) -> str:
    import yaml

    head = "# The resolved configuration of this run: `heed train --config run.yaml` trains it again.\n"
    return head + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def saved_chat_template(trained: Any) -> str | None:
    """The Jinja chat template saved with the tokenizer, so that ``apply_chat_template`` formats as heed
    trained (None with the ``chat`` template: the tokenizer's own is already that)."""
    from heed.data.encode import special_prefix

    return trained.template.chat_template(bos=bool(special_prefix(trained.tokenizer)), system=trained.run.data.system)


def save_adapted(trained: Any, out: Path, meta: dict[str, Any]) -> None:
    """A LoRA run: the merged model with the adapter in ``adapter/`` (itself loadable, with the tokenizer
    and heed.json), or with ``--no-merge`` the adapter alone in ``out``."""
    from heed.model.lora import save_adapter

    adapter_dir = out / "adapter" if trained.run.train.merge else out
    if trained.run.train.merge:
        save_model(trained.model, trained.tokenizer, out, meta)
    save_adapter(trained.adapter, adapter_dir)
    trained.tokenizer.save_pretrained(adapter_dir)
    write_json(adapter_dir / "heed.json", meta)


def save_run(trained: Any, out: Path | None = None) -> Path:
    """Write the trained model and the run's records to ``out`` (default: the run's ``--out``)."""
    out = Path(out or trained.run.train.out)
    tokenizer = trained.tokenizer
    chat_template = saved_chat_template(trained)
    own = getattr(tokenizer, "chat_template", None)
    try:
        if chat_template is not None:
            tokenizer.chat_template = chat_template  # only while saving: the run's tokenizer stays as it was
        with staged_into(out) as staging:  # the model directory is written aside: never half a model
            if trained.adapter is None:
                save_model(trained.model, tokenizer, staging, run_meta(trained))
            else:
                save_adapted(trained, staging, run_meta(trained))
    finally:
        tokenizer.chat_template = own
    write_text(out / RUN_CONFIG, config_yaml(trained.run.to_dict()))
    if trained.audit is not None:
        write_json(out / "audit.json", trained.audit)
    metrics = trained.result.metrics
    write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    plot_losses(metrics, out / "loss.png", best_step=trained.result.best_step)
    return out
