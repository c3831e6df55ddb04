"""``heed demo``: the main job, offline. A real base model learns to follow instructions.

Make verifiable tasks → score the base model on held-out tasks → finetune → score again → print a
before/after table per family and sample responses side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from heed.config import (
    NON_EMPTY, POSITIVE, DataConfig, GenerateConfig, LoraConfig, RunConfig, TrainConfig, at_least, check_fields, opt,
    validate,
)
from heed.data.records import Record, load_records, split_records
from heed.data.tasks import DEMO_FAMILIES, make_tasks
from heed.data.templates import Template
from heed.evaluate.metrics import Scores, score
from heed.io import write_json, write_text


# Seconds of training steps the demo allows itself on any machine, so that a first `make demo` (install,
# one-time dequantization, base-model scoring, training, test responses) fits in 10 minutes on a 2-core
# CPU. Where the hardware trains fast (bf16: AMX CPUs, GPUs) the full recipe (2 epochs, 296 steps) ends
# well inside it; a 2-core CPU without bf16 trains in fp32 and gets as many steps as fit (BENCHMARKS.md).
TRAIN_SECONDS = 330.0


@dataclass
class DemoConfig:
    model: str = opt("gemma-3-270m", "base model (offline from PyPI)")
    out: str = opt("runs/demo", "everything the demo writes goes here", check=NON_EMPTY)
    n: int = opt(1400, "task records to make (85% train, 10% held-out test, 5% validation)", check=at_least(20))
    families: tuple[str, ...] = opt(DEMO_FAMILIES, "task families (all but the two a 270M model fails to learn)",
                                    cli=False)
    seed: int = opt(123, "seed for the tasks and the training run")
    template: str = opt("instruction-response", "prompt template, the same before and after finetuning", cli=False)
    lora: bool = opt(True, "full finetuning instead of LoRA", flag="--full")
    lr: float = opt(1e-3, "learning rate (LoRA)", cli=False)
    epochs: int = opt(2, "training epochs", check=at_least(1))
    train_seconds: float = opt(TRAIN_SECONDS, "time budget of the training steps: as many steps of --epochs as fit, "
                               "at this machine's measured pace", check=POSITIVE, metavar="SECONDS")
    steps: int | None = opt(None, "optimizer steps, whatever they take (instead of --train-seconds; the full recipe "
                            "is 296)", check=at_least(1))
    batch_size: int = opt(8, "examples per step", cli=False)
    max_new_tokens: int | None = opt(None, "new tokens per answer at most (default: the longest training answer "
                                     "and the template's stop marker)", check=at_least(1), cli=False)
    gen_batch_size: int = opt(48, "prompts answered together", check=at_least(1), cli=False)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")

    def validate(self) -> list[str]:
        return check_fields(self)


def demo_run(cfg: DemoConfig, tasks: Path, model_dir: Path, max_new_tokens: int) -> RunConfig:
    """The demo's training run (``configs/demo.yaml`` is this, for the default DemoConfig and tasks).

    Random batches of 8 packed into rows of at most 64 tokens: the same loss and gradients as padded
    batches at a padding cost of batches grouped by length (which train worse: a batch of similar lengths
    is mostly one task family). Its length is ``--train-seconds`` at this machine's pace (``--time-budget``),
    at most the 2 epochs, unless ``--steps`` fixes it.
    """
    lora = LoraConfig(r=16, alpha=32, dropout=0.0, target_modules="all-linear") if cfg.lora else None
    return RunConfig(
        DataConfig(data=str(tasks), template=cfg.template, max_length=256),
        TrainConfig(model=cfg.model, out=str(model_dir), overwrite=True, lr=cfg.lr, weight_decay=0.0,
                    batch_size=cfg.batch_size, pack=True, pack_length=64, epochs=cfg.epochs, max_steps=cfg.steps,
                    time_budget=None if cfg.steps else cfg.train_seconds, eval_every=50, eval_batches=2,
                    seed=cfg.seed, warmup_steps=10, schedule="cosine", max_new_tokens=max_new_tokens,
                    gen_batch_size=cfg.gen_batch_size, sample_every_epoch=False, lora=lora, device=cfg.device),
    )


def answer_budget(tokenizer: Any, template: Template, records: Sequence[Record]) -> int:
    """New tokens an answer needs at most: the longest training answer, then a blank line and the
    template's stop marker, where a base model that answered starts another instruction (a finetuned
    one ends with its end-of-text token instead). A base model never ends on its own, so each of its
    batches runs to this budget; a longer one would change no extracted answer (``extract_response``
    cuts at the stop marker) and only cost decoding steps of the 262k-row vocabulary head.

    GPT-2's tokens: 2 for "hi there", 6 for "\\n\\n### Instruction:".

    >>> from heed.model import load_tokenizer
    >>> from heed.data.templates import get_template
    >>> answer_budget(load_tokenizer("random:gpt2-tiny"), get_template("alpaca"), [Record(0, "Hi.", "", "hi there", {})])
    8
    """
    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    longest = max((tokens(r.output) for r in records if r.output), default=0)
    marker = max((tokens("\n\n" + stop) for stop in template.stop_markers), default=0)
    return longest + marker


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from heed.commands.finetune import finetune
    from heed.data.templates import get_template
    from heed.generate import generate_responses, with_responses
    from heed.io import read_json
    from heed.model import load_model, load_tokenizer
    from heed.runtime.device import choose_device, resolve_precision

    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks_path = out / "tasks.json"
    write_json(tasks_path, make_tasks(cfg.n, cfg.seed, list(cfg.families)))
    split = split_records(load_records(tasks_path))
    log(f"1/4 tasks: {cfg.n} records from {len(cfg.families)} families -> {tasks_path} "
        f"(train {len(split.train)}, held-out test {len(split.test)}, val {len(split.val)})")

    template = get_template(cfg.template)
    tokenizer = load_tokenizer(cfg.model)
    new_tokens = cfg.max_new_tokens or answer_budget(tokenizer, template, split.train)
    gen = GenerateConfig(max_new_tokens=new_tokens, batch_size=cfg.gen_batch_size)
    device = choose_device(cfg.device)
    precision = resolve_precision("auto", device)
    base = load_model(cfg.model).to(device)
    t = time.perf_counter()
    before_records = with_responses(split.test, generate_responses(base, tokenizer, template, split.test, gen))
    write_json(out / "base-test-with-response.json", before_records)
    before = score(before_records)
    base_seconds = time.perf_counter() - t
    log(f"2/4 base model on the held-out tasks: {before.task_overall:.1%} correct "
        f"(at most {new_tokens} new tokens; {base_seconds:.0f}s)")
    del base

    model_dir = out / "model"
    run = demo_run(cfg, tasks_path, model_dir, new_tokens)
    log(f"3/4 finetuning {cfg.model} ({'LoRA' if cfg.lora else 'full'}, {precision}) ..."
        + (f" {cfg.steps} steps" if cfg.steps else
           f" {cfg.epochs} epochs or {cfg.train_seconds:g}s of steps, whichever ends first"
           + (" (no bf16 hardware here: fp32, fewer steps, a lower accuracy than where bf16 trains)"
              if precision == "fp32" else "")))
    result = finetune(run, log=log).result
    after_records = read_json(model_dir / "test-with-response.json")
    after = score(after_records)
    log(f"4/4 finetuned model on the held-out tasks: {after.task_overall:.1%} correct")

    seconds = time.perf_counter() - started
    report = _report(before, after, before_records, after_records, cfg, seconds, result.seconds, model_dir)
    write_text(out / "demo.md", report)
    summary = {"before": before.to_dict(), "after": after.to_dict(), "seconds": round(seconds, 1),
               "base_seconds": round(base_seconds, 1), "train_seconds": round(result.seconds, 1),
               "steps": result.steps, "tokens_seen": result.tokens_seen, "max_new_tokens": new_tokens,
               "config": cfg.__dict__}
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


def cmd_demo(args: Any) -> int:
    from dataclasses import replace

    from heed.commands.options import configure
    from heed.data.tasks import FAMILIES

    cfg = configure(DemoConfig, args)
    if args.all_families:
        cfg = replace(cfg, families=tuple(FAMILIES))
    validate(cfg)
    run_demo(cfg)
    return 0


def register(sub: Any) -> None:
    from heed.commands.options import add_flags

    p = sub.add_parser("demo", help="finetune a real base model on built-in tasks and show before/after",
                       description="Offline: make tasks, score the base model, finetune, score again.")
    add_flags(p, DemoConfig)
    p.add_argument("--all-families", action="store_true",
                   help="include arithmetic and count-items, which a 270M model does not learn in the budget")
    p.set_defaults(func=cmd_demo)
