"""Small builders shared by several test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from ddpm_hub import UNet
from ddpm_hub.cli import main as cli_main

_names = itertools.count()


def unique_repo(user: str, stem: str) -> str:
    """A repo id no other test of this process uses (the loopback Hub is shared by the whole session)."""
    return f"{user}/{stem}-{os.getpid()}-{next(_names)}"


def tiny_unet(in_channels: int = 1, seed: int = 0, perturb: bool = True) -> UNet:
    """An 8 px UNet that samples the full reverse loop in well under a second. ``perturb``: add N(0, 0.05)
    to every weight, since the output layer starts at zero (a fresh UNet predicts 0) and models should differ."""
    torch.manual_seed(seed)
    unet = UNet(
        sample_size=8,
        in_channels=in_channels,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        dropout=0.0,
        norm_num_groups=4,
    )
    if perturb:
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return unet


def sample(pipe, seed: int = 0, **kwargs) -> torch.Tensor:
    """Two images as a tensor, from a generator seeded with ``seed``."""
    return pipe(
        batch_size=2, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs
    ).images


def cli(args, capsys) -> tuple[int, str]:
    """Run `ddpm-hub ARGS` in-process: (exit code, the error line). A SystemExit carrying a message exits 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli_main([str(a) for a in args])
    code = info.value.code
    if isinstance(code, str):
        return 1, code
    return code, capsys.readouterr().err


#: the UNet of the tiny training runs, as a --model value
TINY_MODEL = (
    "{base_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [14], "
    "dropout: 0.0, norm_num_groups: 8}"
)


def tiny_args(out, *extra):
    """`ddpm-hub train` arguments of a tiny run (16-channel UNet at 28 px, batches of 4, 4 steps, checkpoints at
    2 and 4) into ``out``; ``extra`` adds or overrides."""
    return [
        "--output_dir",
        str(out),
        "--model",
        TINY_MODEL,
        "--data.max_samples",
        "64",
        "--data.num_workers",
        "0",
        "--batch_size",
        "4",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--sample_steps",
        "2",
        "--num_sample_images",
        "2",
        "--sample_inference_steps",
        "8",
        "--final_sampler",
        "ddim",
        "--final_inference_steps",
        "8",
        "--checkpointing_steps",
        "2",
        "--log_with",
        "none",
        *extra,
    ]
