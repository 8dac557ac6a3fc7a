"""Shared by the benchmark scripts: the machine description, interleaved timing, the models compared."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: the model of ddpm-hub's default training config (configs/mnist.yaml: 28 px, 1 channel, 0.69M parameters);
#: diffusers' UNet2DModel built by ``diffusers_kwargs`` has the same architecture: the same parameter count
#: and, within 1%, the same FLOPs (diffusers applies one more SiLU, to the time embedding)
DEFAULT_UNET = dict(
    sample_size=28,
    in_channels=1,
    base_channels=16,
    channel_mult=(1, 2, 4),
    num_res_blocks=1,
    attention_resolutions=(7,),
    dropout=0.0,
    norm_num_groups=8,
)


def config_unet(path: Path) -> dict:
    """The UNet kwargs of a training config file (its ``model`` with the data's size; 3 channels)."""
    from ddpm_hub.config import load_config

    config = load_config(path)
    return dict(sample_size=config.data.image_size, in_channels=3, **config.model)


#: the model of configs/cifar10.yaml (the DDPM paper's CIFAR-10 UNet: 32 px, 3 channels, 35.7M parameters)
CIFAR10_UNET = config_unet(Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml")


def diffusers_kwargs(unet_kwargs: dict) -> dict:
    """UNet2DModel kwargs with the architecture of ddpm-hub's ``UNet(**unet_kwargs)``."""
    size, mult = unet_kwargs["sample_size"], unet_kwargs["channel_mult"]
    attn = [size // 2**i in unet_kwargs["attention_resolutions"] for i in range(len(mult))]
    return dict(
        sample_size=size,
        in_channels=unet_kwargs["in_channels"],
        out_channels=unet_kwargs["in_channels"],
        block_out_channels=tuple(unet_kwargs["base_channels"] * m for m in mult),
        layers_per_block=unet_kwargs["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=unet_kwargs["norm_num_groups"],
        attention_head_dim=None,
        dropout=unet_kwargs["dropout"],
    )


def build(kind: str, unet_kwargs: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "ddpm-hub":
        from ddpm_hub import UNet

        return UNet(**unet_kwargs)
    from diffusers import UNet2DModel

    return UNet2DModel(**diffusers_kwargs(unet_kwargs))


def machine(device: torch.device | str = "cpu") -> dict:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = info.get("Model name", model).strip()
        flags = info.get("Flags", "")
        isa = [
            f
            for f in (
                "avx2",
                "avx_vnni",
                "avx512f",
                "avx512_vnni",
                "avx512_bf16",
                "avx512_fp16",
                "amx_tile",
                "amx_bf16",
            )
            if f in flags.split()
        ]
    except OSError:
        isa = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    gpu = {}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    return {
        **gpu,
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1min_at_start": load,
    }


def matmul_peak(
    dtype: torch.dtype, n: int = 1024, reps: int = 5, device: torch.device | str = "cpu"
) -> float:
    """Measured GFLOP/s of an n x n matmul on ``device`` (median of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def interleaved(fns: dict[str, Callable[[], int]], reps: int) -> dict[str, list[float]]:
    """Run each fn once to warm up, then ``reps`` rounds A, B, C, then B, C, A ... (the order rotates so that
    no variant always runs first); items/s of each call."""
    for fn in fns.values():
        fn()
    names = list(fns)
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            n = fns[name]()
            rates[name].append(n / (time.perf_counter() - t))
    return rates


def median(xs: list[float]) -> float:
    return statistics.median(xs)
