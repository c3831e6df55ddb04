"""One worker thread owns the model: requests wait in a queue, and the worker decodes those waiting
together as one ``generate_ids`` batch (up to ``max_batch``; requests with the same sampling settings).

A row's tokens do not depend on what else is in its batch (left padding, positions counted per row),
so batching changes latency and throughput, never the answer of a greedy request. A streamed request is
handed its new tokens after every decoding step (``Job.on_tokens``), still decoded in the batch.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from heed.config import GenerateConfig
from heed.data.encode import eos_id
from heed.errors import HeedError


@dataclass(frozen=True)
class Sampling:
    """What a batch must share: greedy (temperature 0) or one sampling setting with its seed."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 123


@dataclass
class Job:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    result: Future = field(default_factory=Future)  # new token ids (EOS not included) and whether EOS ended it
    # Streaming: called from the worker thread with each step's new token ids (EOS not included), in order,
    # all before ``result`` is set. The last token or tokens of an answer may come with the result only.
    on_tokens: Callable[[list[int]], None] | None = None


class QueueFull(Exception):
    pass


class Batcher:
    """Queue + worker. ``submit`` returns a Future of ``(ids, stopped_at_eos)``."""

    def __init__(self, model: Any, tokenizer: Any, gen: GenerateConfig, *, max_batch: int, wait_s: float,
                 max_queue: int):
        self.model, self.tokenizer, self.gen = model, tokenizer, gen
        self.max_batch, self.wait_s = max_batch, wait_s
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
        self.eos = eos_id(tokenizer)
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.batches = 0  # decoded so far; tests read it to see that requests were grouped
        self.largest_batch = 0
        self._held: list[Job] = []  # taken from the queue, waiting for a batch of their own sampling
        self._thread = threading.Thread(target=self._run, name="heed-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.result

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and the waiting ones with its sampling settings."""
        if not self._held:
            first = self.jobs.get()
            if first is None:
                return None
            self._held.append(first)
            time.sleep(self.wait_s)  # let concurrent requests arrive
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after the held jobs are answered
                break
            self._held.append(job)
        key = self._held[0].sampling
        batch = [j for j in self._held if j.sampling == key][:self.max_batch]
        self._held = [j for j in self._held if j not in batch]
        return batch

    def _run(self) -> None:
        from heed.generate import generate_ids, make_decoder
        from heed.runtime.device import autocast, resolve_precision

        device = next(self.model.parameters()).device
        precision = resolve_precision(self.gen.precision, device)
        decoder = make_decoder(self.model, self.gen)
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [j for j in batch if j.result.set_running_or_notify_cancel()]
            if not batch:
                continue
            s = batch[0].sampling
            cfg = replace(self.gen, max_new_tokens=max(j.max_new_tokens for j in batch), temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, seed=s.seed)
            generator = torch.Generator(device=device).manual_seed(s.seed) if s.temperature > 0 else None
            streams = any(j.on_tokens is not None for j in batch)
            tapped = Tap(decoder, batch, self.eos) if streams else decoder
            try:
                with autocast(precision, device):
                    new = generate_ids(self.model, [j.prompt for j in batch], pad_id=self.pad, eos=self.eos, cfg=cfg,
                                       generator=generator, decoder=tapped, limits=[j.max_new_tokens for j in batch])
            except Exception as e:  # noqa: BLE001 - a failed batch answers its requests, the server lives on
                for j in batch:
                    j.result.set_exception(e if isinstance(e, HeedError) else HeedError(f"generation failed: {e}"))
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            for j, ids in zip(batch, new):  # each row decoded to its own limit: stopped means it ended first
                j.result.set_result((ids, len(ids) < j.max_new_tokens))


class Tap:
    """The batch's decoder, handing each decoding step's tokens to the jobs that stream.

    ``generate_ids`` passes ``step`` the token each row has just chosen (padding once the row has finished)
    before decoding the next, so the tokens reach a client while the rest are still being decoded. The
    token of the step the loop ends on is not passed; it comes with the result. Reading the tokens costs a
    host sync per step, which is why only a batch holding a streamed request is tapped. For the same
    reason a tapped batch decodes step by step (``whole_steps`` is off): a compiled decoder's whole step
    (``StaticDecoder.advance``) never passes through ``step``; its model step stays compiled.
    """

    whole_steps = False  # not the decoder's: every step must come through ``step``

    def __init__(self, decoder: Any, jobs: list[Job], eos: int):
        self.decoder, self.jobs, self.eos = decoder, jobs, eos
        self.open = [j.on_tokens is not None for j in jobs]
        self.sent = [0] * len(jobs)

    def __getattr__(self, name: str) -> Any:  # running, prefill, static_steps: the decoder's own
        return getattr(self.decoder, name)

    def step(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        for row, t in enumerate(token[:, 0].tolist()):  # (B,)
            job = self.jobs[row]
            if not self.open[row]:
                continue
            if t == self.eos or self.sent[row] >= job.max_new_tokens:  # done: the padding a finished row gets
                self.open[row] = False
                continue
            self.sent[row] += 1
            try:
                job.on_tokens([t])  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a client gone (its event loop closed) must not fail the batch
                self.open[row] = False
        return self.decoder.step(token, positions)
