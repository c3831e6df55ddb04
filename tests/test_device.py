"""Device and precision choices: clear errors, TF32 only on CUDA."""

import pytest
import torch

from heed.runtime import device as dev
from heed.errors import HeedError


def _tf32() -> str:
    return torch.backends.cuda.matmul.fp32_precision


pytestmark = [pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                                 reason="torch < 2.9 has only the legacy TF32 flags"),
              pytest.mark.kernels]  # run again on AVX2 kernels by make test-avx2 (bf16 detection under ISA caps)


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


AVX2_ONLY = "flags\t\t: fpu sse4_2 avx avx2 fma\n"
AMX = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ISA_VARIABLES = ("HEED_CPU_BF16", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Answer cpu_has_bf16 for a fake /proc/cpuinfo and environment (the cache is cleared around it)."""
    for name in ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def ask(cpuinfo: str, **env: str) -> bool:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo)
        monkeypatch.setattr(dev, "CPUINFO", path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        dev.cpu_has_bf16.cache_clear()
        return dev.cpu_has_bf16()

    yield ask
    dev.cpu_has_bf16.cache_clear()


def test_cpu_bf16_follows_cpuinfo(cpu):
    assert cpu(AMX) is True
    assert cpu(AVX2_ONLY) is False
    assert dev.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("variable, value", [
    ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "avx512_core"), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI"),
    ("DNNL_MAX_CPU_ISA", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2"), ("ATEN_CPU_CAPABILITY", "default"),
    ("HEED_CPU_BF16", "0"),
])
def test_an_isa_cap_below_bf16_or_the_override_turns_bf16_off(cpu, variable, value):
    assert cpu(AMX, **{variable: value}) is False
    assert dev.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("variable, value", [
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16"), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX"),
    ("ONEDNN_MAX_CPU_ISA", "ALL"), ("ATEN_CPU_CAPABILITY", "avx512"),
])
def test_caps_at_or_above_bf16_leave_it_on(cpu, variable, value):
    assert cpu(AMX, **{variable: value}) is True


def test_the_override_wins_both_ways(cpu):
    assert cpu(AVX2_ONLY, HEED_CPU_BF16="1") is True
    assert dev.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert cpu(AMX, HEED_CPU_BF16="1", ONEDNN_MAX_CPU_ISA="AVX2") is True
    assert cpu(AMX, HEED_CPU_BF16="0") is False


def test_a_bad_override_is_a_one_line_error(cpu):
    with pytest.raises(HeedError, match="HEED_CPU_BF16=yes: set it to 1"):
        cpu(AMX, HEED_CPU_BF16="yes")
