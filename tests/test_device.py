"""Device and precision choices: clear errors, TF32 only on CUDA."""

import pytest
import torch

from heed.runtime import device as dev
from heed.errors import HeedError


def _tf32() -> str:
    return torch.backends.cuda.matmul.fp32_precision


pytestmark = pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                                reason="torch < 2.9 has only the legacy TF32 flags")


def test_enable_tf32_switches_cuda_matmuls_and_back():
    before = _tf32()
    try:
        dev.enable_tf32()
        assert _tf32() == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
        dev.enable_tf32(False)
        assert _tf32() == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


def test_cpu_device_leaves_tf32_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(dev, "enable_tf32", lambda *a: calls.append(a))
    assert dev.choose_device("cpu").type == "cpu"
    assert calls == []


def test_cuda_device_enables_tf32(monkeypatch):
    calls = []
    monkeypatch.setattr(dev, "enable_tf32", lambda *a: calls.append(a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.choose_device("auto").type == "cuda"
    assert calls == [()]


def test_bad_device_and_precision_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HeedError, match="CUDA is not available on this machine; use --device cpu"):
        dev.choose_device("cuda")
    with pytest.raises(HeedError, match="not a device"):
        dev.choose_device("gpu0")
    with pytest.raises(HeedError, match="choose auto, bf16 or fp32"):
        dev.resolve_precision("fp16", torch.device("cpu"))
