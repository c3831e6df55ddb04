"""``heed demo``: the main job, offline. A real base model learns to follow instructions.

Make verifiable tasks → score the base model on held-out tasks → finetune → score again → print a
before/after table per family and sample responses side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from heed.config import DataConfig, GenerateConfig, LoraConfig, RunConfig, TrainConfig
from heed.data.records import load_records, split_records
from heed.data.tasks import DEMO_FAMILIES, make_tasks
from heed.evaluate.metrics import Scores, score
from heed.io import write_json, write_text


@dataclass
class DemoConfig:
    model: str = "gemma-3-270m"  # the base model to finetune
    out: str = "runs/demo"  # everything the demo writes goes here
    n: int = 1400  # task records made (85% train, 10% held-out test, 5% validation)
    families: tuple[str, ...] = DEMO_FAMILIES  # task families (all but the two a 270M model fails to learn)
    seed: int = 123  # seed for the tasks and the training run
    template: str = "instruction-response"  # prompt template, the same before and after finetuning
    lora: bool = True  # LoRA adapters (fastest on CPU); False = full finetuning
    lr: float = 1e-3  # learning rate (LoRA)
    epochs: int = 2  # passes over the training records
    batch_size: int = 8  # examples per step
    max_new_tokens: int = 40  # answers are short; the base model otherwise rambles on
    device: str = "auto"  # auto | cpu | cuda


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from heed.data.templates import get_template
    from heed.device import choose_device
    from heed.generate import generate_responses, with_responses
    from heed.model import load_model, load_tokenizer
    from heed.train import train

    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks_path = out / "tasks.json"
    write_json(tasks_path, make_tasks(cfg.n, cfg.seed, list(cfg.families)))
    split = split_records(load_records(tasks_path))
    log(f"1/4 tasks: {cfg.n} records from {len(cfg.families)} families -> {tasks_path} "
        f"(train {len(split.train)}, held-out test {len(split.test)}, val {len(split.val)})")

    template = get_template(cfg.template)
    gen = GenerateConfig(max_new_tokens=cfg.max_new_tokens, batch_size=16)
    tokenizer = load_tokenizer(cfg.model)
    base = load_model(cfg.model).to(choose_device(cfg.device))
    t = time.perf_counter()
    before_records = with_responses(split.test, generate_responses(base, tokenizer, template, split.test, gen))
    write_json(out / "base-test-with-response.json", before_records)
    before = score(before_records)
    log(f"2/4 base model on the held-out tasks: {before.task_overall:.1%} correct ({time.perf_counter() - t:.0f}s)")
    del base

    model_dir = out / "model"
    run = RunConfig(
        DataConfig(data=str(tasks_path), template=cfg.template, max_length=256),
        TrainConfig(model=cfg.model, out=str(model_dir), lr=cfg.lr, weight_decay=0.0, batch_size=cfg.batch_size,
                    epochs=cfg.epochs, eval_every=25, eval_batches=4, seed=cfg.seed, warmup_steps=10,
                    schedule="cosine", max_new_tokens=cfg.max_new_tokens, sample_every_epoch=False,
                    lora=LoraConfig(r=16, alpha=32, dropout=0.0, target_modules="all-linear") if cfg.lora else None,
                    device=cfg.device),
    )
    log(f"3/4 finetuning {cfg.model} ({'LoRA' if cfg.lora else 'full'}) ...")
    result = train(run, log=log)
    import json

    after_records = json.loads((model_dir / "test-with-response.json").read_text())
    after = score(after_records)
    log(f"4/4 finetuned model on the held-out tasks: {after.task_overall:.1%} correct")

    seconds = time.perf_counter() - started
    report = _report(before, after, before_records, after_records, cfg, seconds, result.seconds, model_dir)
    write_text(out / "demo.md", report)
    summary = {"before": before.to_dict(), "after": after.to_dict(), "seconds": round(seconds, 1),
               "train_seconds": round(result.seconds, 1), "steps": result.steps, "config": cfg.__dict__}
    write_json(out / "demo.json", summary)
    log("")
    log(report)
    return summary


def _report(before: Scores, after: Scores, before_records: list[dict[str, Any]], after_records: list[dict[str, Any]],
            cfg: DemoConfig, seconds: float, train_seconds: float, model_dir: Path) -> str:
    lines = [f"# heed demo: {cfg.model}, before and after instruction finetuning", "",
             "| family | n | base model | finetuned |", "| --- | ---: | ---: | ---: |"]
    for task, row in after.task_accuracy.items():
        b = before.task_accuracy.get(task, {"accuracy": 0.0})
        lines.append(f"| {task} | {row['n']} | {b['accuracy']:.0%} | {row['accuracy']:.0%} |")
    lines.append(f"| **all** | {after.n} | **{before.task_overall:.1%}** | **{after.task_overall:.1%}** |")
    lines += ["", f"Exact match {before.exact_match:.1%} → {after.exact_match:.1%}; "
                  f"ROUGE-L F1 {before.rouge_l:.3f} → {after.rouge_l:.3f}. "
                  f"Total {seconds:.0f}s, of which training {train_seconds:.0f}s.", "",
              "## Five held-out examples", ""]
    for b, a in list(zip(before_records, after_records))[:: max(1, len(after_records) // 5)][:5]:
        prompt = b["instruction"] + (f" [{b['input']}]" if b["input"] else "")
        lines += [f"- **{prompt}** (expected `{b['output']}`)",
                  f"  - base: `{_short(b['model_response'])}`", f"  - finetuned: `{_short(a['model_response'])}`"]
    lines += ["", f"Model: {model_dir} · loss plot: {model_dir / 'loss.png'} · "
                  f"responses: {model_dir / 'test-with-response.json'}"]
    return "\n".join(lines) + "\n"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
