"""Where sampling runs: the best available accelerator, or the one the user names.

``ddpm-hub sample``/``eval`` (``--device``), the Space and the final samples of a run call
:func:`select_device`; training samples on ``accelerator.device`` instead. ``auto`` takes CUDA (or ROCm, which
torch also calls ``cuda``), then Intel XPU, then Apple MPS, then the CPU.

Precision: sampling keeps the model in float32 on every device. The reverse chain predicts x_0 from the
noise estimate, amplified about 160 times at high t with the default schedule (see DESIGN.md, "Samplers and
the schedule's end"), so a half-precision model's rounding reaches the image; only TF32 matmuls (float32's
range, a 10-bit mantissa inside matrix products) are allowed, on CUDA, by :func:`allow_fast_float32`.

Training precision: ``mixed_precision: auto`` (the default config) trains in bf16 where the device computes it
natively (:func:`native_bf16`): bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated and slower than
float32, and with it it is 1.24-1.41x faster per step (benchmarks/README.md).
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps", "xpu")


def _is_available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return False


def available_devices() -> list[str]:
    """The device kinds of :data:`DEVICE_CHOICES` usable here, best first (always ends with ``cpu``)."""
    return [kind for kind in ("cuda", "xpu", "mps", "cpu") if _is_available(kind)]


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to sample on: ``auto``/None -> the best available; ``cpu``, ``cuda``, ``cuda:1``, ``mps``,
    ``xpu`` -> that one, or ValueError naming what is available when it is not."""
    if device is None or device == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)"
        ) from None
    if dev.type not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if not _is_available(dev.type):
        raise ValueError(
            f"device {device!r} is not available here (available: {', '.join(available_devices())}); "
            "use auto to take the best one"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def allow_fast_float32(device: torch.device) -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 (float32 range, faster on Ampere and later).

    A process-wide setting: the command line (``ddpm-hub sample``/``eval``) and the Space call it, the library
    does not.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


#: torch's own CPU feature checks (``torch.cpu``, through the cpuinfo library) for native bf16 matrix products:
#: AVX512-BF16, or AMX (whose tiles compute bf16); a torch without them is taken as "no native bf16"
NATIVE_BF16_CPU_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def native_bf16(kind: str) -> bool:
    """Whether training on a device of this kind (``cpu``, ``cuda``, ...) computes bf16 natively: a CUDA GPU
    with bf16 support, or an x86 CPU with AVX512-BF16 or AMX. Other devices (MPS, XPU, ARM CPUs) are not
    measured here, so ``auto`` keeps them in float32."""
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in NATIVE_BF16_CPU_CHECKS)
        return any(check() for check in checks if check is not None)
    return False
