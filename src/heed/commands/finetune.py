"""The finetune job, what ``heed train`` runs: train → save → generate the test split → score it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from heed.config import FastPath, GenerateConfig, RunConfig
from heed.io import write_json
from heed.runtime import distributed
from heed.runtime.progress import log as _log
from heed.train import Trained, save_run, train
from heed.train.loop import LoopState, Setup

Log = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def epoch_sample(log: Log, max_new_tokens: int = 35) -> Callable[[Setup, int], None]:
    """After every epoch, a greedy response to the first validation record (else the first training one),
    to watch the model learn the format."""
    from heed.generate import generate_responses

    def sample(s: Setup, epoch: int) -> None:
        if not distributed.world().main or (s.parallel is not None and s.parallel.sharded):
            return  # sharded (--fsdp), the model is whole only at the end: no sample mid-training
        first = (s.split.val or s.split.train)[0]
        # one prompt mid-training: a compiled step would compile again every epoch for a few tokens
        response = generate_responses(s.model, s.tokenizer, s.template, [first],
                                      GenerateConfig(max_new_tokens=max_new_tokens, cache="dynamic"))[0]
        log(f"sample after epoch {epoch}: {response!r}")

    return sample


def test_responses(trained: Trained, out: Path, log: Log) -> None:
    """Responses for the test split (``test-with-response.json``) and their scores (``test-scores.json``)."""
    from heed.evaluate.metrics import render, score
    from heed.generate import generate_responses, with_responses

    test = trained.split.test
    started = time.perf_counter()
    gen = GenerateConfig(max_new_tokens=trained.run.train.max_new_tokens, batch_size=trained.run.train.gen_batch_size)
    world = distributed.world()  # under torchrun each rank answers its share; rank 0 writes
    mine = list(range(world.rank, len(test), world.size))
    stats: dict[str, Any] = {}
    answers = generate_responses(trained.model, trained.tokenizer, trained.template, [test[i] for i in mine], gen,
                                 stats=stats)
    responses, cut = [""] * len(test), []
    for indices, texts, short in distributed.gather((mine, answers, [mine[i] for i in stats["cut"]])):
        for i, text in zip(indices, texts):
            responses[i] = text
        cut += short
    if not world.main:
        return
    if cut:  # the model is saved: a prompt too long for the context costs its response's tail, not the run
        names = ", ".join(str(test[i].index) for i in sorted(cut)[:10]) + (" …" if len(cut) > 10 else "")
        log(f"note: {len(cut)} test record(s) ({names}) left fewer than --max-new-tokens {gen.max_new_tokens} "
            "tokens of the model's context after the prompt; their responses were cut to fit (empty where the "
            "prompt fills the context)")
    path = out / "test-with-response.json"
    # A conversation's reference is its last reply, kept as "output" for scoring.
    records = [row | {"output": r.output} if r.turns is not None and "output" not in row else row
               for r, row in zip(test, with_responses(test, responses))]
    write_json(path, records)
    log(f"test responses: {len(test)} in {time.perf_counter() - started:.1f}s -> {path}")
    scores = score(records)
    write_json(out / "test-scores.json", scores.to_dict())
    log(render(scores, "test split:"))


def finetune(run: RunConfig, *, resume: dict[str, Any] | None = None, log: Log = _log,
             fast: FastPath = FastPath(), on_step: Callable[[LoopState], None] | None = None) -> Trained:
    """Train, write the model and its records to ``run.train.out``, then answer and score the test split.

    ``--max-new-tokens`` is checked against the model's context (its config, no weights) before training,
    so that a run cannot fail after it trained; a test prompt too long for what is left is cut to fit."""
    if run.train.generate_test and run.train.model:
        from heed.generate.responses import context_for

        context_for(run.train.model, run.train.max_new_tokens)
    on_epoch_end = epoch_sample(log) if run.train.sample_every_epoch else None
    trained = train(run, resume=resume, log=log, fast=fast, on_step=on_step, on_epoch_end=on_epoch_end)
    world = distributed.world()
    out = Path(run.train.out)
    if world.main:
        save_run(trained)
    else:
        log = _silent
    if run.train.generate_test and trained.split.test:
        test_responses(trained, out, log)
    result = trained.result
    log(f"done: {result.steps} steps in {result.seconds:.1f}s; best val loss "
        + (f"{result.best_val_loss:.3f} at step {result.best_step}" if result.best_val_loss is not None else "n/a")
        + f"; model saved to {out}")
    return trained
