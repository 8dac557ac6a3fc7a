"""The ``ddpm-hub`` command. Thin: every subcommand calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample an image grid from a pipeline folder, run folder or Hub repo")
    p.add_argument("model", help="a pipeline folder, a training run folder, or a Hub repo id (NS/NAME)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--sampler", default="ddpm", help="a registered sampler: ddpm, ddim, dpm-solver++, ...")
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha)")
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .images import make_grid
    from .pipeline import load_pipeline

    if args.num_images < 1:
        raise SystemExit(f"--num-images must be at least 1, got {args.num_images}")
    pipe = load_pipeline(args.model, revision=args.revision)
    images = pipe(
        batch_size=args.num_images,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        num_inference_steps=args.steps,
        sampler=args.sampler,
        output_type="pt",
    ).images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images).save(args.out)
    print(f"wrote {args.num_images} images to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ddpm-hub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ddpm-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_sample,):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
