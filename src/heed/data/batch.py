"""Stage 4: batches. Pad each batch to its longest example and shift targets by one — the only shift.

The model is trained with plain cross-entropy between ``logits[:, t]`` and ``targets[:, t]``; the loss
never shifts again.

    example input_ids  [p0, p1, r0, EOS]      labels [-100, -100, r0, EOS]
    example input_ids  [q0, s0, EOS]          labels [-100, s0, EOS]
    collate (pad id 50256):
    inputs   [[p0, p1, r0   ],    targets [[-100, r0,  EOS ],
              [q0, s0, 50256]]             [s0,   EOS, -100]]

Padding is on the right and its targets are -100, so with a causal model no real position ever
sees a padding token and no attention mask is needed; the padding id may equal the EOS id.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from heed.data.encode import IGNORE_INDEX, Example
from heed.runtime.compile import BUCKET, round_up, row_bucket


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids, right-padded
    targets: torch.Tensor  # (B, T) next-token ids, -100 where not trained on
    lengths: torch.Tensor  # (B,) real (non-padding) input positions per row
    position_ids: torch.Tensor | None = None  # (B, T) for packed rows: restarts at 0 for each example

    @property
    def tokens(self) -> int:
        """Non-padding input tokens."""
        return int(self.lengths.sum())

    @property
    def supervised_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> "Batch":
        positions = self.position_ids.to(device) if self.position_ids is not None else None
        return Batch(self.inputs.to(device), self.targets.to(device), self.lengths.to(device), positions)


def collate(
    examples: Sequence[Example],
    pad_id: int,
    *,
    pad_to_multiple_of: int | None = None,
    device: torch.device | str | None = None,
) -> Batch:
    """Pad to the longest example in the batch (optionally up to a multiple of N) and shift by one.

    >>> from heed.data.encode import build_example
    >>> b = collate([build_example(0, [1, 2], [3, 9]), build_example(1, [4], [5, 9])], pad_id=9)
    >>> b.inputs.tolist(), b.targets.tolist()
    ([[1, 2, 3], [4, 5, 9]], [[-100, 3, 9], [5, 9, -100]])
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e.input_ids) for e in examples) - 1
    if pad_to_multiple_of:
        width = round_up(width, pad_to_multiple_of)
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    lengths = torch.empty(len(examples), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids) - 1
        inputs[row, :n] = torch.tensor(example.input_ids[:-1])
        targets[row, :n] = torch.tensor(example.labels[1:])
        lengths[row] = n
    batch = Batch(inputs, targets, lengths)
    return batch.to(device) if device is not None else batch


def batch_order(n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False) -> list[list[int]]:
    """Example indices grouped into batches; the same ``seed`` always gives the same order."""
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


GROUP_SPAN = 64  # batches' worth of examples sorted together by --group-by-length


def length_grouped_order(lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int,
                         drop_last: bool = False, span: int = GROUP_SPAN) -> list[list[int]]:
    """Batches of examples of similar length, so that padding to the longest costs little.

    The examples are shuffled (as ``batch_order`` would), cut into groups of ``span`` batches, each
    group sorted by length and cut into batches, and the batches shuffled again: every example is seen
    once an epoch, in an order that still changes with the seed, but a batch no longer pads a 20-token
    example to the 60 tokens of its longest neighbour. On the demo's tasks random batches of 8 are
    1.59x their real tokens once padded, grouped ones 1.07x. Batches are more alike in length (and so,
    often, in kind) than random ones: measure before making it the default for a dataset.

    >>> length_grouped_order([5, 1, 4, 2, 3, 6], 2, shuffle=False, seed=0, span=3)
    [[1, 3], [4, 2], [0, 5]]
    """
    order = batch_order(len(lengths), len(lengths) or 1, shuffle=shuffle, seed=seed)[0] if lengths else []
    group = batch_size * span
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        ranked = sorted(order[start:start + group], key=lambda i: lengths[i])
        batches += [ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:  # only the last group can end short
        batches.pop()
    if shuffle:
        random.Random(seed + 1).shuffle(batches)
    return batches


def token_budget_order(lengths: Sequence[int], tokens_per_step: int, *, shuffle: bool, seed: int) -> list[list[int]]:
    """Example indices grouped into steps of at most ``tokens_per_step`` tokens (``lengths``: each example's
    input tokens), in the order ``batch_order`` would visit them; an example longer than the budget gets
    a step of its own. The last step keeps what is left.

    >>> token_budget_order([5, 4, 3, 9, 2], 9, shuffle=False, seed=0)
    [[0, 1], [2], [3], [4]]
    """
    order = batch_order(len(lengths), len(lengths) or 1, shuffle=shuffle, seed=seed)[0] if lengths else []
    steps: list[list[int]] = []
    used = tokens_per_step
    for i in order:
        if used + lengths[i] > tokens_per_step:
            steps.append([])
            used = 0
        steps[-1].append(i)
        used += lengths[i]
    return steps


def iter_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, *, shuffle: bool = False, seed: int = 0,
    drop_last: bool = False, pad_to_multiple_of: int | None = None,
) -> Iterator[Batch]:
    for indices in batch_order(len(examples), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last):
        yield collate([examples[i] for i in indices], pad_id, pad_to_multiple_of=pad_to_multiple_of)


def pack_rows(examples: Sequence[Example], capacity: int) -> list[list[Example]]:
    """Group examples into rows of at most ``capacity`` input positions (first fit, longest first)."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        need = len(example.input_ids) - 1
        for i, free in enumerate(room):
            if need <= free:
                rows[i].append(example)
                room[i] -= need
                break
        else:
            rows.append([example])
            room.append(capacity - need)
    return rows


def collate_packed(rows: Sequence[Sequence[Example]], pad_id: int, *, width: int | None = None,
                   multiple: int | None = None, num_rows: int | None = None) -> Batch:
    """Padding-free batch: each row holds several examples back to back, shifted like ``collate``.

    ``position_ids`` restart at 0 for every example; the model builds from them an attention mask in
    which no token attends across an example boundary (Hugging Face's packed-sequence detection).
    ``width`` (at least; a longer row widens the batch, rounded up to ``multiple``) and ``num_rows`` pad
    the batch to a fixed shape (positions of padding and rows of padding only; -100 targets).

    >>> from heed.data.encode import build_example
    >>> b = collate_packed([[build_example(0, [1, 2], [3, 9]), build_example(1, [4], [5, 9])]], pad_id=9)
    >>> b.inputs.tolist(), b.targets.tolist(), b.position_ids.tolist()
    ([[1, 2, 3, 4, 5]], [[-100, 3, 9, 5, 9]], [[0, 1, 2, 0, 1]])
    """
    longest = max(sum(len(e.input_ids) - 1 for e in row) for row in rows)
    width = max(width or 0, round_up(longest, multiple) if multiple else longest)
    count = max(num_rows or 0, len(rows))
    inputs = torch.full((count, width), pad_id, dtype=torch.long)
    targets = torch.full((count, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.arange(width).repeat(count, 1)
    lengths = torch.zeros(count, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids) - 1
            inputs[r, at:at + n] = torch.tensor(example.input_ids[:-1])
            targets[r, at:at + n] = torch.tensor(example.labels[1:])
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # trailing padding: a sequence of its own
        lengths[r] = at
    return Batch(inputs, targets, lengths, positions)


def make_batch(examples: Sequence[Example], pad_id: int, *, pack_capacity: int | None = None,
               static: bool = False) -> Batch:
    """The batch a training step uses: padded (``collate``) or packed into rows of ``pack_capacity``.

    ``static`` buckets the shape so a compiled model sees few of them: padded widths round up to a
    multiple of 64; packed rows are ``pack_capacity`` wide (an example longer than that gets a row of
    its own, rounded up to a multiple of 64) and their count rounds up to the next
    of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (``row_bucket``). The extra positions are padding with -100
    targets: the loss is unchanged.
    """
    if pack_capacity:
        rows = pack_rows(examples, pack_capacity)
        if not static:
            return collate_packed(rows, pad_id)
        return collate_packed(rows, pad_id, width=pack_capacity, multiple=BUCKET, num_rows=row_bucket(len(rows)))
    return collate(examples, pad_id, pad_to_multiple_of=BUCKET if static else None)
