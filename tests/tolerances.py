"""Tolerances for two computations of the same numbers that differ only in rounding.

Another summation order (AVX2 kernels sum 8 floats a lane where AVX-512 sums 16, a chunked head sums in
pieces, a fused kernel keeps an intermediate unrounded) changes a result by rounding alone. For a sum of
``terms`` values that difference is a few units of the precision (eps: 2**-23 for fp32, 2**-7 for bf16)
growing like sqrt(terms) (the rounding errors add as a random walk), and it is absolute: it follows the
size of the values summed, not of the result, which may have cancelled to nearly nothing. So every
element may differ by

    ulps * eps(dtype) * sqrt(terms) * max|expected|

where ``terms`` is the longest reduction the compared values went through (a row of logits over the
vocabulary, a weight gradient over the batch's tokens). A real bug (a wrong mask, a missing scale, a
token counted twice) moves results by far more than this: the tests stay sharp on every CPU.
"""

from __future__ import annotations

import math

import torch

# A few units of the precision. Measured with AVX-512 and with AVX2-only kernels, every comparison in the
# suite stays under a quarter of its allowance (the closest: bf16 decoding, 0.21; fp32 attention, 0.11).
ULPS = 4


def tolerance(dtype: torch.dtype = torch.float32, terms: int = 1, ulps: float = ULPS) -> float:
    """The allowed difference relative to the largest compared magnitude."""
    return ulps * torch.finfo(dtype).eps * math.sqrt(terms)


def assert_rounding_close(actual, expected, *, terms: int, dtype: torch.dtype = torch.float32,
                          ulps: float = ULPS, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` up to the rounding of ``dtype`` over reductions of ``terms`` values.

    Example: two fp32 gradients summed over 300 tokens, largest |value| 0.04, may differ by
    4 * 1.2e-7 * sqrt(300) * 0.04 = 3.3e-7 in any element.
    """
    actual = torch.as_tensor(actual).detach().double()
    expected = torch.as_tensor(expected).detach().double()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    allowed = tolerance(dtype, terms, ulps) * scale
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=allowed, msg=msg)


def assert_adam_steps_close(actual: dict, expected: dict, *, lr: float, steps: int, atol: float = 1e-5,
                            rtol: float = 1e-4) -> None:
    """Weights after ``steps`` Adam(W) steps whose gradients differ by rounding alone (another summation
    order: ranks, micro-batches, kernels).

    Adam divides each element's gradient by that element's own running magnitude, so rounding stays
    rounding wherever a gradient is well above its rounding error: those elements agree within
    ``atol + rtol * |expected|``. Where a gradient is itself within rounding of zero, the division turns
    the noise into a step of up to ``lr`` of either sign; such elements are rare (measured: 2 of 16,384 in
    one GPT-2-tiny matrix), so each tensor may hold one in a thousand of them (at least one), none moved
    by more than ``2 * lr * steps``. A gradient that is wrong (a loss normalised by one rank's tokens, a
    shard seen twice) moves most elements, and every tensor's outlier count, far past that.
    """
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got, want = actual[key].double(), want.double()
        diff = (got - want).abs()
        outliers = int((diff > atol + rtol * want.abs()).sum())
        allowed = max(1, want.numel() // 1000)
        assert outliers <= allowed, f"{key}: {outliers} of {want.numel()} elements differ (at most {allowed} may)"
        assert float(diff.max()) <= 2 * lr * steps, f"{key}: an element moved {float(diff.max()):.3g}"
