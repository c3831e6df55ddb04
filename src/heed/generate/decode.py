"""One decoding step at a time, over a growing (dynamic) or preallocated (static) KV cache.

``generate_ids`` drives either decoder the same way: ``prefill`` the left-padded prompts, then ``step``
one token per row. The dynamic decoder grows the cache and the attention mask by concatenation; every
step has new shapes. The static decoder preallocates both for ``cache_length(prompt + new tokens)`` positions
and writes into them in place, so every decoding step has the same shapes and the same tensor
addresses — what ``torch.compile`` needs to compile the step once and, on CUDA, to replay it as a CUDA
graph (``mode="reduce-overhead"``) instead of launching hundreds of small kernels per token.

    positions   0  1  2  3  4  5  6  7      (bucket = 8)
    row 0       .  p  p  p  n  n  _  _      p prompt, n new token, . left padding (mask 0),
    row 1       p  p  p  p  n  n  _  _      _ not written yet (mask 0, causally invisible anyway)
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from heed.runtime.compile import cache_length, compiled_step, matmul_weights, one_dtype


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
    reallocated, so a compiled step (and its CUDA graph) is reused across batches. A compiled decoder
    keeps low-precision copies of the weights: make a new one after the weights change (training).
    """

    static_steps = True  # every step has the cache's shapes

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        self.model, self.compile = model, compile
        self.cache: Any = None
        self.key: tuple[Any, ...] | None = None
        self._eager = _forward(model)
        self._step = compiled_step(self._eager, next(model.parameters()).device) if compile else self._eager
        self._copies: dict[int, torch.Tensor] = {}

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
        if key != self.key:
            self.cache, self.key = StaticCache(config=self.model.config, max_cache_len=length), key
            one_dtype(self.cache)
        else:
            self.cache.reset()
        self.mask = torch.zeros((batch, length), dtype=mask.dtype, device=mask.device)
        self.mask[:, :width] = mask
        self.at = width  # the cache position the next token is written to
        return self._eager(ids, self.mask, positions, self.cache)  # prompts vary: never compiled

    def step(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask[:, self.at] = 1
        self.at += 1
        return self._step(token, self.mask, positions, self.cache)


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
