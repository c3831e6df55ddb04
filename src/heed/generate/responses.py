"""Generation: batched, left-padded prompts decoded with a KV cache; each row stops at its EOS.

Responses are extracted from the generated text with the model's own template and written next to
the input as ``<name>-with-response.json`` (the input records plus a ``model_response`` field).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from heed.config import GenerateConfig
from heed.data.encode import eos_id, record_prompt_ids
from heed.data.records import Record
from heed.data.templates import Template, extract_response
from heed.generate.decode import DynamicDecoder, StaticDecoder
from heed.generate.rows import Rows, record
from heed.model import context_length
from heed.model.attention import attention_backends
from heed.runtime.device import autocast, resolve_precision
from heed.errors import HeedError


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest set whose probability exceeds top-p."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def choose(logits: torch.Tensor, cfg: GenerateConfig, draws: torch.Tensor | None) -> torch.Tensor:
    """Each row's next token (B,): the argmax (``cfg.temperature`` 0), else a sample from the softmax of
    the filtered, tempered logits by inverse transform: the first token whose cumulative probability
    reaches ``1 - draws`` (B,) of the total, ``draws`` uniform in [0, 1). No host sync and no random
    number generated here, so the same code runs eagerly and inside a compiled step and picks the same
    tokens for the same draws, up to rounding (a compiled cumulative sum over a very flat distribution
    can move a draw onto a neighbouring token, as bf16 can move an argmax at a near-tie).

    >>> choose(torch.log(torch.tensor([[0.2, 0.5, 0.3]])), GenerateConfig(temperature=1.0), torch.tensor([0.6]))
    tensor([1])
    """
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = _filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)  # (B, V)
    cumulative = probs.cumsum(-1)
    target = (1.0 - draws)[:, None] * cumulative[:, -1:]  # in (0, total]: never a zero-probability token
    return (cumulative < target).sum(-1).clamp(max=probs.size(-1) - 1)


def choose_next(rows: Rows, logits: torch.Tensor, cfg: GenerateConfig) -> torch.Tensor:
    """``choose`` with this step's draws from ``rows`` (none when greedy)."""
    return choose(logits, cfg, rows.draws() if cfg.temperature > 0 else None)


CHECK_EVERY_CUDA = 16  # decoding steps between "all rows finished?" checks on CUDA (each is a host sync)


@torch.no_grad()
def generate_ids(
    model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, eos: int, cfg: GenerateConfig = GenerateConfig(),
    generator: torch.Generator | None = None, decoder: Any = None, check_every: int | None = None,
    limits: Sequence[int] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (EOS not included). One batch; call in chunks for more.

    ``limits``: each row's own cap on new tokens (at most ``cfg.max_new_tokens``; ``room`` gives the caps
    that keep every row inside the model's context), each at least 1.

    Prompts are left-padded; position ids count only real tokens, so a row's result does not depend
    on what else is in the batch. ``decoder`` (``heed.generate.decode``) is made from ``cfg.cache`` when not given;
    pass one to reuse a static cache and its compiled step across batches.

    The bookkeeping stays on the device (``heed.generate.rows``): tokens go into a preallocated
    (B, max_new_tokens) tensor, a finished row gets ``pad_id`` (``torch.where``), and the host asks whether
    every row has finished only every ``check_every`` steps (default: every step on a CPU, where asking is
    free; every ``CHECK_EVERY_CUDA`` on CUDA, where each question waits for the GPU to drain). Steps run past the
    last EOS change nothing: their tokens are cut at EOS. Sampling draws its uniform numbers for the
    whole batch up front, one per row and step, from ``generator`` (``choose``): the generator moves on by
    the same amount whenever the rows finish, so later batches draw the same numbers whatever
    ``check_every`` is.
    A compiled static decoder runs each step after the first as one compiled function: model, token
    choice (greedy or sampled) and bookkeeping together (``StaticDecoder.advance``; one CUDA graph on
    CUDA), with the same tokens.
    """
    was_training = model.training
    model.eval()
    decoder = make_decoder(model, cfg) if decoder is None else decoder
    device = next(model.parameters()).device
    check_every = check_every or (CHECK_EVERY_CUDA if device.type == "cuda" else 1)
    limits = [cfg.max_new_tokens] * len(prompts) if limits is None else [min(n, cfg.max_new_tokens) for n in limits]
    width, steps = max(len(p) for p in prompts), max(limits)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p))
        mask[row, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    prompt_positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    limit = torch.tensor(limits, device=device)  # (B,)
    rng = _sampling_rng(cfg, generator, device)
    noise = None if rng is None else torch.rand((len(prompts), steps), generator=rng, device=device)
    whole = getattr(decoder, "whole_steps", False)
    with decoder.running():
        with attention_backends(device, static=False):  # every batch of prompts has another width
            logits = decoder.prefill(ids, mask, prompt_positions, steps)
        rows = decoder.rows() if whole else Rows.empty(len(prompts), steps, device)
        rows.start(prompt_positions[:, -1:], limit, pad_id, eos, noise)  # positions: +1 for each new token
        with attention_backends(device, static=getattr(decoder, "static_steps", False)):
            for i in range(steps):
                if i == 0:
                    record(rows, choose_next(rows, logits, cfg))
                elif whole:
                    decoder.advance(rows, cfg)  # the same three lines below, as one compiled step
                else:
                    rows.advance_positions()
                    logits = decoder.step(rows.token, rows.positions)
                    record(rows, choose_next(rows, logits, cfg))
                if i == steps - 1 or ((i + 1) % check_every == 0 and bool(rows.finished.all())):
                    break
    model.train(was_training)
    tokens = rows.tokens[:, :steps].tolist()  # the one sync
    out = [(row[:row.index(eos)] if eos in row else row)[:n] for row, n in zip(tokens, limits)]
    return out


def _sampling_rng(cfg: GenerateConfig, generator: torch.Generator | None, device: torch.device) -> Any:
    """The generator sampling draws from (None for greedy decoding)."""
    if cfg.temperature <= 0:
        return None
    if generator is not None:
        return generator
    return torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator


def make_decoder(model: Any, cfg: GenerateConfig) -> Any:
    """The KV cache ``cfg.cache`` names: ``dynamic`` (grows), ``static`` (preallocated, in place),
    ``compiled`` (static, with the whole decoding step compiled; CUDA graphs on CUDA) or ``auto`` (``resolve_cache``)."""
    cache = resolve_cache(cfg.cache, next(model.parameters()).device)
    if cache == "dynamic":
        return DynamicDecoder(model)
    if cache in ("static", "compiled"):
        return StaticDecoder(model, compile=cache == "compiled")
    raise HeedError(f"--cache {cfg.cache}: choose auto, dynamic, static or compiled")


def resolve_cache(cache: str, device: torch.device) -> str:
    """``auto``: ``compiled`` on CUDA, ``dynamic`` elsewhere. On an H100 the compiled step decodes several
    times faster than the dynamic cache, at batch 1 and batched; on a small CPU it gains much less, after
    a compile of seconds that a short run does not win back (BENCHMARKS.md, "Measurements behind design
    choices")."""
    if cache != "auto":
        return cache
    return "compiled" if device.type == "cuda" else "dynamic"


def generate_responses(
    model: Any, tokenizer: Any, template: Template, records: Sequence[Record], cfg: GenerateConfig = GenerateConfig(),
    *, progress: Callable[[int], None] | None = None, stats: dict[str, Any] | None = None,
) -> list[str]:
    """Extracted responses for records, generated in batches of ``cfg.batch_size``.

    Records are processed longest prompt first so that rows in a batch need little padding. ``stats``,
    when given, receives ``tokens`` (new tokens, EOS not counted), ``seconds`` (compiling included) and
    ``cut``: the indices of the records whose prompt left fewer than ``cfg.max_new_tokens`` tokens of the
    model's context, whose responses were capped to fit (empty when the prompt fills the context).
    Commands refuse or report those before generating (``room``); the cap keeps any other caller inside
    the context.
    """
    started = time.perf_counter()
    prompts = record_prompt_ids(records, tokenizer, template)  # the records' text stays plain text
    longest = max(map(len, prompts), default=0)
    context = context_length(model.config) if hasattr(model, "config") else longest + cfg.max_new_tokens
    limits = room([len(p) for p in prompts], cfg.max_new_tokens, context)
    if stats is not None:
        stats["cut"] = [i for i, n in enumerate(limits) if n < cfg.max_new_tokens]
    order = sorted((i for i in range(len(prompts)) if limits[i] > 0), key=lambda i: -len(prompts[i]))
    if progress and len(order) < len(prompts):
        progress(len(prompts) - len(order))  # no room to answer: left empty
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    responses: list[str] = [""] * len(records)
    decoder = make_decoder(model, cfg)  # one for all batches: a static cache and its compiled step are reused
    for start in range(0, len(order), cfg.batch_size):
        chunk = order[start:start + cfg.batch_size]
        with autocast(precision, device):
            new = generate_ids(model, [prompts[i] for i in chunk], pad_id=pad, eos=eos_id(tokenizer), cfg=cfg,
                               generator=generator, decoder=decoder, limits=[limits[i] for i in chunk])
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + sum(len(ids) for ids in new)
        for i, ids in zip(chunk, new):
            responses[i] = extract_response(tokenizer.decode(ids, skip_special_tokens=True), template)
        if progress:
            progress(len(chunk))
    if stats is not None:
        stats["seconds"] = time.perf_counter() - started
    return responses


def check_new_tokens(max_new_tokens: int, context: int, flag: str = "--max-new-tokens") -> None:
    """Refuse, before any model loads, more new tokens than the model's context holds with a prompt."""
    if max_new_tokens >= context:
        raise HeedError(f"{flag} {max_new_tokens}: the model's context is {context} tokens, prompt and response "
                        f"together; lower {flag} below {context} (the prompt needs room too)")


def context_for(spec: str, max_new_tokens: int) -> int:
    """The context of the model ``spec`` names, read from its config without its weights, once
    ``max_new_tokens`` is known to leave a prompt room in it (``check_new_tokens``)."""
    from heed.model import model_config

    context = context_length(model_config(spec))
    check_new_tokens(max_new_tokens, context)
    return context


def room(prompt_lengths: Sequence[int], max_new_tokens: int, context: int) -> list[int]:
    """New tokens each prompt may have: ``max_new_tokens``, less what would run past the model's context
    (prompt and response together, as ``heed serve`` counts them); 0 or less: the prompt alone fills it.

    >>> room([10, 1000, 1030], 100, 1024)
    [100, 24, -6]
    """
    return [min(max_new_tokens, context - n) for n in prompt_lengths]


def responses_path(data: str | Path, out_dir: str | Path | None = None) -> Path:
    data = Path(data)
    return Path(out_dir or data.parent) / f"{data.stem}-with-response.json"


def with_responses(records: Sequence[Record], responses: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(r.raw) | {"model_response": response} for r, response in zip(records, responses)]
