"""One decoding step at a time, over a growing (dynamic) or preallocated (static) KV cache.

``generate_ids`` drives either decoder the same way: ``prefill`` the left-padded prompts, then ``step``
one token per row (or, for a compiled static decoder, ``advance``: the whole step, token choice and
bookkeeping included). The dynamic decoder grows the cache and the attention mask by
concatenation; every step has new shapes. The static decoder preallocates both for
``cache_length(prompt + new tokens)`` positions and writes into them in place, so every decoding step
has the same shapes and the same tensor addresses — what ``torch.compile`` needs to compile the step
once and, on CUDA, to replay it as a CUDA graph (``mode="reduce-overhead"``) instead of launching
hundreds of small kernels per token.

    positions   0  1  2  3  4  5  6  7      (bucket = 8)
    row 0       .  p  p  p  n  n  _  _      p prompt, n new token, . left padding (mask 0),
    row 1       p  p  p  p  n  n  _  _      _ not written yet (mask 0, causally invisible anyway)
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from heed.generate.rows import Rows, record
from heed.runtime.compile import (cache_length, compiled_step, compiled_whole_step, matmul_weights, one_dtype,
                                  static_buffers)


# Batch shapes whose cache and buffers a static decoder keeps: back on a kept shape (a server's batch
# sizes come and go), a CUDA graph replays on the same addresses instead of recording again.
KEPT_SHAPES = 4


class DynamicDecoder:
    """Hugging Face's default cache: grows by concatenation; shapes change every step."""

    static_steps = False  # every step has a new key length
    def __init__(self, model: Any) -> None:
        self.model = model
        self.extra = last_logits_only(model)

    def running(self) -> contextlib.AbstractContextManager:
        """Held around one ``generate_ids`` call."""
        return contextlib.nullcontext()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int) -> torch.Tensor:
        self.mask, self.past = mask, None
        return self._run(ids, positions)

    def step(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(token)], dim=-1)
        return self._run(token, positions)

    def _run(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        result = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                            past_key_values=self.past, use_cache=True, **self.extra)
        self.past = result.past_key_values
        return result.logits[:, -1, :]


class StaticDecoder:
    """A preallocated cache and mask, written in place; the one-token step optionally compiled.

    Keep one decoder per model and reuse it: a cache of the same batch size and length is reset, not
    reallocated (the last ``KEPT_SHAPES`` shapes are kept), so a compiled step (and its CUDA graph) is
    reused across batches. A compiled decoder
    keeps low-precision copies of the weights: make a new one after the weights change (training).

    Compiled, and where ``whole_steps``, a decoding step is one compiled function (``advance``): the
    model's forward on the last token, the token's choice (argmax, or a sample by inverse transform of
    the uniform numbers ``generate_ids`` drew up front from the caller's generator), the padding of
    finished rows, the token written into ``Rows.tokens``, the finished flags and the next positions,
    all in place on fixed buffers, so on CUDA the whole step replays as one CUDA graph with no host work
    in it. ``whole_steps`` holds for models whose layers are full or sliding-window attention (GPT-2,
    Gemma 3, Llama-like models); their cache is ``full_length_cache``, which counts only in tensors.
    Other layer kinds (linear attention, chunked attention, ...) keep transformers' ``StaticCache`` and
    the compiled model step alone, with the choice beside it.
    """

    static_steps = True  # every step has the cache's shapes

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        self.model, self.compile = model, compile
        self.cache: Any = None
        self.key: tuple[Any, ...] | None = None
        device = next(model.parameters()).device
        self._eager = _forward(model)
        self._step = compiled_step(self._eager, device) if compile else self._eager
        self.whole_steps = compile and full_length_fits(model.config)
        self._device = device
        self._advance: dict[tuple[float, int | None, float | None], Any] = {}  # one per way of choosing
        self._copies: dict[int, torch.Tensor] = {}
        self._kept: dict[tuple[Any, ...], tuple[Any, torch.Tensor, torch.Tensor, Rows]] = {}

    def running(self) -> contextlib.AbstractContextManager:
        """Held around one ``generate_ids`` call: a compiled step under autocast gets its matmul weights
        in the autocast dtype for the call (eager autocast caches its weight casts; a compiled graph
        would redo them on every token)."""
        device = next(self.model.parameters()).device
        if not (self.compile and torch.is_autocast_enabled(device.type)):
            return contextlib.nullcontext()
        return matmul_weights(self.model, torch.get_autocast_dtype(device.type), self._copies)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int) -> torch.Tensor:
        from transformers import StaticCache

        batch, width = ids.shape
        length = cache_length(width + max_new_tokens)
        kind = ids.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        key = (batch, length, ids.device, dtype)
        kept = self._kept.pop(key, None)
        if kept is None:
            config = self.model.config
            cache = (full_length_cache(config, length) if self.whole_steps
                     else StaticCache(config=config, max_cache_len=length))
            one_dtype(cache)
            # Buffers a compiled step writes in place: a CUDA graph replays on their addresses.
            visible = torch.zeros((batch, length), dtype=torch.long, device=ids.device)
            at = torch.zeros(1, dtype=torch.long, device=ids.device)  # where the next token is cached
            rows = Rows.empty(batch, length, ids.device)
            static_buffers(visible, at, *vars(rows).values())
            kept = (cache, visible, at, rows)
        else:
            kept[0].reset()
        self._kept[key] = kept  # the most recent last
        while len(self._kept) > KEPT_SHAPES:
            self._kept.pop(next(iter(self._kept)))
        (self.cache, self.mask, self.at, self._rows), self.key = kept, key
        self.mask.zero_()
        self.mask[:, :width] = mask
        self.at.fill_(width)
        return self._eager(ids, self.mask, positions, self.cache)  # prompts vary: never compiled

    def rows(self) -> Rows:
        """The bookkeeping buffers of the batch just prefilled (room for ``cache_length`` new tokens),
        for ``Rows.start`` and ``advance``."""
        return self._rows

    def step(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        _reveal_next(self.mask, self.at)
        return self._step(token, self.mask, positions, self.cache)

    def advance(self, rows: Rows, cfg: Any) -> None:
        """One whole decoding step on ``rows`` (``self.rows()``), in place, choosing tokens as ``cfg``
        (a ``GenerateConfig``) says: see the class docstring."""
        assert self.whole_steps, "advance needs a compiled decoder whose whole_steps is set"
        key = (cfg.temperature, cfg.top_k, cfg.top_p) if cfg.temperature > 0 else (0.0, None, None)
        if key not in self._advance:
            self._advance[key] = compiled_whole_step(_whole_step(self._eager, cfg), self._device)
        self._advance[key](rows, self.mask, self.at, self.cache)


def _reveal_next(mask: torch.Tensor, at: torch.Tensor) -> None:
    """Unmask the cache position the next token is written to, and move on."""
    mask.index_fill_(1, at, 1)
    at.add_(1)


def _whole_step(forward: Any, cfg: Any) -> Any:
    from heed.generate.responses import choose_next

    def step(rows: Rows, mask: torch.Tensor, at: torch.Tensor, cache: Any) -> None:
        rows.advance_positions()
        _reveal_next(mask, at)
        logits = forward(rows.token, mask, rows.positions, cache)  # (B, V)
        record(rows, choose_next(rows, logits, cfg))  # as generate_ids' eager choice

    return step


def full_length_fits(config: Any) -> bool:
    """Whether ``full_length_cache`` serves this model: every layer is full or sliding-window attention."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return set(layer_types) <= {"full_attention", "sliding_attention"}


def full_length_cache(config: Any, length: int) -> Any:
    """A static cache whose every layer keeps all ``length`` positions, a sliding-window layer included.

    transformers' sliding-window layer keeps only its window and counts the tokens it has seen in a Python
    int (whether the window is full, where the mask starts): a compiled step would see that int change
    every token and recompile, or on CUDA record a new graph. Here the window is the attention mask's
    job alone (the model builds a sliding-window mask for those layers, as it does for a prompt longer
    than the window), and every layer counts in a tensor. The cost: a sliding layer holds ``length``
    positions instead of its window (the same when ``length`` is within the window).
    """
    from transformers.cache_utils import Cache, StaticLayer, get_layer_types_and_kwargs

    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return Cache(layers=[StaticLayer(max_cache_len=length) for _ in layer_types])


def last_logits_only(model: Any) -> dict[str, int]:
    """``logits_to_keep=1`` for models that take it. Decoding needs the logits of a prompt's last position
    only; projecting every other prompt position onto the vocabulary (Gemma 3: 262k rows, 335 MFLOP a
    position) costs more than the rest of the prefill."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _forward(model: Any) -> Any:
    extra = last_logits_only(model)

    def run(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, **extra)
        return result.logits[:, -1, :]

    return run
