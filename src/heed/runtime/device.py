"""Where training runs and in which precision: CUDA or CPU, bf16 autocast where the hardware has it."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import ContextManager

import torch

from heed.errors import HeedError


def choose_device(name: str = "auto") -> torch.device:
    """The device ``--device`` names; on CUDA, fp32 matmuls are switched to TF32 (``enable_tf32``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HeedError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HeedError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        enable_tf32()
    return device


def enable_tf32(enabled: bool = True) -> None:
    """fp32 matmuls and convolutions on CUDA in TF32 (10-bit mantissa, ~8x the fp32 rate on A100/H100): what
    autocast leaves in fp32 runs on tensor cores. bf16 matmuls are unaffected. ``False`` restores IEEE fp32."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; the old flags must not be mixed in
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


CPUINFO = Path("/proc/cpuinfo")
# Instruction-set caps that stop below bf16 matrix instructions: oneDNN's (it runs CPU bf16 matmuls; the
# levels from sse41 to avx512_core_vnni) and ATen's own kernels (default, avx2).
ONEDNN_BELOW_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"}
ATEN_BELOW_BF16 = {"default", "avx2"}


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AMX-bf16 or AVX512-bf16) and nothing forbids their use.

    The answer follows, in order:

    - ``HEED_CPU_BF16=1`` or ``=0``: yes or no outright (e.g. ``0`` keeps ``--precision auto`` in fp32).
    - ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``) at a level below bf16 (``avx2``,
      ``avx512_core``, ``avx512_core_vnni``, ...) or ``ATEN_CPU_CAPABILITY`` at ``default`` or ``avx2``:
      no, as the kernels cannot use bf16 instructions (this is how CI emulates AVX2-only CPUs).
    - the ``amx_bf16`` or ``avx512_bf16`` flag in /proc/cpuinfo.

    Example: on a Sapphire Rapids Xeon, ``ONEDNN_MAX_CPU_ISA=AVX2 heed train ...`` trains in fp32.
    """
    forced = os.environ.get("HEED_CPU_BF16", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise HeedError(f"HEED_CPU_BF16={forced}: set it to 1 (use bf16 on this CPU) or 0 (do not), or unset it")
        return forced == "1"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if onednn.strip().lower() in ONEDNN_BELOW_BF16:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() in ATEN_BELOW_BF16:
        return False
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes ``bf16`` on CUDA with bf16 support and on bf16-capable CPUs, else ``fp32``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise HeedError(f"--precision {precision}: choose auto, bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> ContextManager:
    """bf16 autocast for the forward pass; the weights and optimizer state stay fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
