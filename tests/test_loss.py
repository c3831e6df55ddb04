"""The supervised-only head: loss and gradients equal full-logit cross-entropy, chunked or not."""

import pytest
import torch
import torch.nn.functional as F

from heed.train.loss import linear_cross_entropy
from tests.tolerances import assert_rounding_close

pytestmark = pytest.mark.kernels  # run again on AVX2 kernels by make test-avx2


def reference(hidden, weight, targets, softcap=None):
    logits = hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def grads(fn, hidden, weight, targets, **kw):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss = fn(h, w, targets, **kw)
    (loss * 0.25).backward()  # a grad_output other than 1 must scale both gradients
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_loss_and_gradients_equal_full_logits(chunk, softcap):
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (10,))
    want = grads(reference, hidden, weight, targets, softcap=softcap)
    got = grads(linear_cross_entropy, hidden, weight, targets, softcap=softcap, chunk=chunk)
    for a, b in zip(got, want, strict=True):
        assert_rounding_close(a, b, terms=50)  # sums over the 50-word vocabulary


def test_frozen_weight_gets_no_gradient_and_no_grad_mode_gives_the_same_loss():
    torch.manual_seed(1)
    hidden, weight = torch.randn(7, 8, requires_grad=True), torch.randn(30, 8)
    targets = torch.randint(0, 30, (7,))
    loss = linear_cross_entropy(hidden, weight, targets, chunk=2)
    loss.backward()
    assert weight.grad is None
    h = hidden.detach().clone().requires_grad_(True)
    reference(h, weight, targets).backward()
    assert_rounding_close(hidden.grad, h.grad, terms=30)
    with torch.no_grad():
        assert_rounding_close(linear_cross_entropy(hidden, weight, targets), loss.detach(), terms=30)


def test_bf16_matmuls_stay_close_to_fp32():
    torch.manual_seed(2)
    hidden, weight = torch.randn(12, 32), torch.randn(64, 32) * 0.1
    targets = torch.randint(0, 64, (12,))
    want = grads(reference, hidden, weight, targets)
    got = grads(linear_cross_entropy, hidden, weight, targets, dtype=torch.bfloat16)
    assert got[2].dtype == torch.float32  # the weight's gradient comes back in the weight's dtype
    # bf16 rounds each input once (relative 2**-9) and the sums run in fp32: the difference is a few bf16
    # units of the largest value, whatever the length of the sums (their rounding errors are fp32's).
    for a, b in zip(got, want, strict=True):
        assert_rounding_close(a, b, dtype=torch.bfloat16, terms=1)


def test_gradient_accumulates_across_calls_like_autograd():
    torch.manual_seed(3)
    batches = [(torch.randn(3, 4), torch.randint(0, 20, (3,))) for _ in range(2)]
    weight = torch.randn(20, 4)
    fused, plain = weight.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    for hidden, targets in batches:
        linear_cross_entropy(hidden, fused, targets).backward()
        reference(hidden, plain, targets).backward()
    assert_rounding_close(fused.grad, plain.grad, terms=20)


def test_torch_head_equals_heeds_head_loss_and_gradients():
    """torch.nn.functional.linear_cross_entropy (FastPath head "torch") against heed's own head, directly
    and through loss_sum on a tiny GPT-2 (tied embedding: heed's path hands the head's gradient to the
    lookup, torch's leaves it to autograd; the summed gradients must agree)."""
    from heed.config import FastPath
    from heed.data.batch import collate
    from heed.data.encode import build_example
    from heed.model import load_model
    from heed.train.loss import loss_sum, resolve_head, torch_linear_cross_entropy

    torch.manual_seed(0)
    hidden, weight = torch.randn(40, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (40,))
    want = grads(linear_cross_entropy, hidden, weight, targets)
    got = grads(lambda h, w, t: torch_linear_cross_entropy(h, w, t, "fp32"), hidden, weight, targets)
    for a, b in zip(got, want, strict=True):
        assert_rounding_close(a, b, terms=50)  # a softmax over 50 logits, a gradient over 40 rows

    batch = collate([build_example(0, [5, 6, 7], [8, 9, 10]), build_example(1, [11], [12, 13, 14, 15])], 0)
    results = []
    for head in ("supervised", "torch"):
        model = load_model("random:gpt2-tiny", seed=3)
        loss = loss_sum(model, batch, "fp32", torch.device("cpu"), FastPath(head=head))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    # Each gradient passed back through a softmax over the 50,257-token vocabulary, summed in pieces by
    # one head and whole by the other: that sum is the longest the two paths round differently.
    vocab = 50257
    assert_rounding_close(results[1][0], results[0][0], terms=vocab)
    for name, g in results[0][1].items():
        assert_rounding_close(results[1][1][name], g, terms=vocab, msg=name)
    assert resolve_head("auto", torch.device("cpu")) == "supervised"
    assert resolve_head("auto", torch.device("cuda")) == "torch"
