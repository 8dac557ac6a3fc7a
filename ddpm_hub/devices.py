"""Where sampling runs: the best available accelerator, or the one the user names.

``ddpm-hub sample``/``eval`` (``--device``), the Space and the final samples of a run call
:func:`select_device`; training samples on ``accelerator.device`` instead. ``auto`` takes CUDA (or ROCm, which
torch also calls ``cuda``), then Intel XPU, then Apple MPS, then the CPU.

Precision: sampling keeps the model in float32 on every device. The reverse chain predicts x_0 from the
noise estimate, amplified about 160 times at high t with the default schedule (see DESIGN.md, "Samplers and
the schedule's end"), so a half-precision model's rounding reaches the image; only TF32 matmuls (float32's
range, a 10-bit mantissa inside matrix products) are allowed, on CUDA, by :func:`allow_fast_float32`.

Training precision: ``mixed_precision: auto`` (the default config) trains in bf16 where that was measured faster
than float32 (:func:`auto_trains_bf16`): a CPU that computes bf16 natively (:func:`native_bf16`; 1.24-1.41x per
step, while on a CPU without AVX512-BF16 or AMX bf16 is emulated and slower). On CUDA it trains in float32 with
TF32 tensor cores (:func:`allow_fast_float32`, which training calls too): on an H200 bf16 autocast measured
0.78x the TF32 step on the default model and 0.99x on configs/cifar10.yaml's 35.7M-parameter UNet
(benchmarks/README.md, "GPU check"); a config that wants bf16 there says so (configs/cifar10.yaml does).
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

    A process-wide setting: the command line (``ddpm-hub sample``/``eval``), the Space and training call it;
    ``load_pipeline`` and the pipeline do not.
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


def auto_trains_bf16(kind: str) -> bool:
    """Whether ``mixed_precision: auto`` trains in bf16 on a device of this kind: only where bf16 autocast was
    measured faster than float32, a CPU with native bf16. Not CUDA: with TF32 allowed the float32 step was as
    fast or faster there (module docstring); not MPS/XPU/ARM: not measured."""
    return kind == "cpu" and native_bf16("cpu")
