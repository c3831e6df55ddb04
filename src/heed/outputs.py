"""What a finished training run leaves in ``--out``: the model directory, heed.json, metrics.jsonl,
loss.png, and the test split's responses with their scores."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from heed import __version__
from heed.config import GenerateConfig, RunConfig
from heed.data.records import Record
from heed.data.templates import Template
from heed.generate import generate_responses, with_responses
from heed.io import move_into, write_json, write_text
from heed.model import save_model
from heed.plot import plot_losses


def run_meta(run: RunConfig, result: Any, precision: str, device: torch.device, split: Any,
          report: Any) -> dict[str, Any]:
    return {
        "heed_version": __version__,
        "template": run.data.template,
        "max_length": run.data.max_length,
        "train_on_prompt": run.data.train_on_prompt,
        "masking": "none (prompt trained)" if run.data.train_on_prompt else "prompt masked (response + EOS)",
        "base_model": run.train.model,
        "precision": precision,
        "device": str(device),
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 2),
        "split": split.sizes(),
        "encode": report.to_dict(),
        "config": run.to_dict(),
    }


def write_outputs(out: Path, model: Any, tokenizer: Any, meta: dict[str, Any], result: Any) -> None:
    # The model directory is written aside, then moved in file by file: never half a model.
    staging = Path(tempfile.mkdtemp(prefix=".model.", dir=out))
    try:
        save_model(model, tokenizer, staging, meta)
        move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in result.metrics))
    plot_losses(result.metrics, out / "loss.png", best_step=result.best_step)


def write_test_responses(out: Path, model: Any, tokenizer: Any, template: Template, test: Sequence[Record],
                          max_new_tokens: int, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    responses = generate_responses(model, tokenizer, template, test, GenerateConfig(max_new_tokens=max_new_tokens))
    from heed.evaluate.metrics import render, score

    path = out / "test-with-response.json"
    records = with_responses(test, responses)
    write_json(path, records)
    log(f"test responses: {len(test)} in {time.perf_counter() - started:.1f}s -> {path}")
    scores = score(records)
    write_json(out / "test-scores.json", scores.to_dict())
    log(render(scores, "test split:"))
