"""The optimizer step: clipping folded into fused AdamW must give clip_grad_norm_ + step's update."""

import pytest
import torch

from heed.train.optim import clipped_step, grad_norm, is_fused, make_optimizer
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2


def _model_with_grads(scale: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
    loss = model(torch.randn(4, 6)).pow(2).sum() * scale
    loss.backward()
    return model


@pytest.mark.parametrize("scale", [100.0, 1e-3])  # norm far above the clip, and below it
def test_folded_clip_matches_clip_then_step(scale):
    folded, separate = _model_with_grads(scale), _model_with_grads(scale)
    norm = float(grad_norm(list(folded.parameters())))
    assert (norm > 1.0) == (scale > 1)
    opts = [make_optimizer(list(m.parameters()), 1e-2, 0.1) for m in (folded, separate)]
    assert all(is_fused(o) for o in opts)
    for _ in range(2):  # twice: Adam's moments carry the clipped gradient into the next step
        clipped_step(opts[0], list(folded.parameters()), 1.0)
        clipped_step(opts[1], list(separate.parameters()), 1.0, fold=False)
    # Dividing by the clip factor in the kernel or multiplying by its inverse first: one rounding apart, over
    # the global norm's sum of every gradient element.
    terms = sum(p.numel() for p in folded.parameters())
    for a, b in zip(folded.parameters(), separate.parameters()):
        assert_rounding_close(a, b, terms=terms)
    for a, b in zip(opts[0].state.values(), opts[1].state.values()):
        assert_rounding_close(a["exp_avg"], b["exp_avg"], terms=terms)
    assert getattr(opts[0], "grad_scale", None) is None  # nothing left behind for the next step


def test_folded_clip_really_clips():
    clipped, unclipped = _model_with_grads(100.0), _model_with_grads(100.0)
    before = [p.detach().clone() for p in clipped.parameters()]
    opt_c = torch.optim.SGD(clipped.parameters(), lr=1.0)  # not fused: the separate pass
    opt_f = make_optimizer(list(unclipped.parameters()), 1.0, 0.0)
    clipped_step(opt_c, list(clipped.parameters()), 1.0)
    # SGD with lr 1 moves by exactly the clipped gradient, whose norm must be 1.
    moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, clipped.parameters())])
    assert_rounding_close(moved.norm(), 1.0, terms=moved.numel())
    # Adam's first step is lr·sign-like and scale-free, so check the moment instead: it holds the clipped grad.
    clipped_step(opt_f, list(unclipped.parameters()), 1.0)
    first = torch.cat([s["exp_avg"].flatten() for s in opt_f.state.values()]) / (1 - 0.9)
    assert_rounding_close(first.norm(), 1.0, terms=first.numel())


def test_no_clip_is_a_plain_step():
    model, ref = _model_with_grads(100.0), _model_with_grads(100.0)
    opt, ref_opt = make_optimizer(list(model.parameters()), 1e-2, 0.0), make_optimizer(list(ref.parameters()), 1e-2, 0.0)
    clipped_step(opt, list(model.parameters()), None)
    ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)  # exact: without a clip it is the same kernel on the same values


def test_grad_norm_matches_torch():
    # fp32 CPU gradients (the BLAS dot path), a non-contiguous one (torch's kernels), and no gradient at all.
    model = _model_with_grads(3.0)
    params = list(model.parameters())
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    terms = sum(p.numel() for p in params)  # another order of the same sum of squares
    assert_rounding_close(grad_norm(params), expected, terms=terms)
    params[0].grad = params[0].grad.t().contiguous().t()  # same values, not contiguous
    assert_rounding_close(grad_norm(params), expected, terms=terms)
    extra = torch.nn.Parameter(torch.ones(3))
    assert_rounding_close(grad_norm([*params, extra]), expected, terms=terms)
