"""The decoding loop's bookkeeping, on the device: each row's new tokens, whether it has finished, its
next position. ``generate_ids`` records every chosen token with ``record``, eagerly or inside the whole
decoding step a compiled static decoder runs (``decode.StaticDecoder.advance``); both update the same
tensors in place, so the host never reads them until the batch ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rows:
    """Per-row decoding state, all on one device and updated in place (a CUDA graph replays on fixed
    addresses, so a static decoder keeps one ``Rows`` per batch shape and refills it with ``start``).

    ``step`` is the index in ``tokens`` of the next token, a tensor so that a compiled step reads it
    without a Python int changing between replays. ``pad`` and ``eos`` are tensors for the same reason.
    """

    tokens: torch.Tensor  # (B, N) new tokens; pad where a row had finished; N >= the steps decoded
    finished: torch.Tensor  # (B,) bool: EOS chosen, or the row's limit reached
    limit: torch.Tensor  # (B,) each row's cap on new tokens
    positions: torch.Tensor  # (B, 1) the position of the row's last token
    last_position: torch.Tensor  # (B, 1) positions stop here: a finished row never asks past its limit
    token: torch.Tensor  # (B, 1) the token chosen last, the next step's input
    step: torch.Tensor  # (1,) index of the next token in ``tokens``
    pad: torch.Tensor  # () the token a finished row gets
    eos: torch.Tensor  # ()
    noise: torch.Tensor  # (B, N) uniform numbers in [0, 1), one per row and step: sampling's draws

    @classmethod
    def empty(cls, batch: int, room: int, device: torch.device) -> "Rows":
        """Buffers for ``batch`` rows of up to ``room`` new tokens, to be filled by ``start``."""
        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=device)

        return cls(tokens=longs(batch, room), finished=torch.zeros(batch, dtype=torch.bool, device=device),
                   limit=longs(batch), positions=longs(batch, 1), last_position=longs(batch, 1),
                   token=longs(batch, 1), step=longs(1), pad=longs(), eos=longs(),
                   noise=torch.zeros((batch, room), device=device))

    def start(self, positions: torch.Tensor, limit: torch.Tensor, pad_id: int, eos: int,
              noise: torch.Tensor | None = None) -> None:
        """A new batch: ``positions`` (B, 1) of each prompt's last token, ``limit`` (B,) new tokens a row,
        ``noise`` (B, steps) the uniform draws sampling uses (None: greedy)."""
        self.tokens.fill_(pad_id)
        self.finished.zero_()
        self.limit.copy_(limit)
        self.positions.copy_(positions)
        # A row past its limit is finished and its tokens unused; its positions stop at its last real one
        # so that a neighbour's steps never ask a position embedding beyond the model's context.
        self.last_position.copy_(positions + limit[:, None] - 1)
        self.step.zero_()
        self.pad.fill_(pad_id)
        self.eos.fill_(eos)
        if noise is not None:
            self.noise[:, :noise.shape[1]].copy_(noise)

    def draws(self) -> torch.Tensor:
        """(B,) this step's uniform numbers."""
        return self.noise.index_select(1, self.step).squeeze(1)

    def advance_positions(self) -> None:
        """The positions of the tokens about to go through the model."""
        self.positions.copy_(torch.minimum(self.positions + 1, self.last_position))


def record(rows: Rows, choice: torch.Tensor) -> None:
    """Write each row's chosen token (B,) at ``rows.step``; a finished row gets ``pad``. A row finishes
    on EOS or at its limit. No host sync: the same code runs eagerly and inside a CUDA graph.

    Two rows, eos 2, limits (3, 1), pad 0, at step 0 then 1, choosing (5, 7) then (2, 9):

        tokens    [[5, 2, 0], [7, 0, 0]]      row 1 reached its limit at step 0: padded after
        finished  [True, True]                row 0 chose EOS at step 1
    """
    token = torch.where(rows.finished, rows.pad, choice)  # (B,)
    rows.tokens.index_copy_(1, rows.step, token[:, None])
    rows.finished.logical_or_((token == rows.eos) | (rows.limit <= rows.step + 1))
    rows.token.copy_(token[:, None])
    rows.step.add_(1)
