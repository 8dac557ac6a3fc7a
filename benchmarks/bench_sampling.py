"""Sampling throughput: DDPMHubPipeline vs diffusers' DDPMPipeline, same UNet, same samplers, side by side.

For each sampler (ddpm with all T steps, ddim-50, dpm-solver++-20) both pipelines get the same UNet and
the same scheduler (ddpm-hub's registered sampler; DDPMPipeline with the matching diffusers scheduler),
run interleaved (A, B, A, B ...) in one process; images/s medians and ratios are printed, with the max
pixel difference between the two pipelines' images (same generator seed: 0 expected for ddpm).

    python benchmarks/bench_sampling.py                        # tiny UNet, batch 16
    python benchmarks/bench_sampling.py --model default --batch-size 64 --reps 3 --json sampling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_UNET, build, interleaved, machine, median  # noqa: E402

TINY_UNET = dict(
    DEFAULT_UNET, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,)
)
SAMPLERS = {"ddpm": None, "ddim": 50, "dpm-solver++": 20}


def main(argv: list[str] | None = None) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("tiny", "default"), default="tiny")
    p.add_argument("--pipeline", type=Path, default=None, help="a trained pipeline folder instead of --model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--ddpm-steps", type=int, default=None, help="default: all T steps")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if args.pipeline is not None:
        from ddpm_hub import load_pipeline

        ours = load_pipeline(args.pipeline)
        unet, scheduler = ours.unet, ours.scheduler
    else:
        unet = build("ddpm-hub", TINY_UNET if args.model == "tiny" else DEFAULT_UNET).eval()
        scheduler = DDPMHubScheduler()
        ours = DDPMHubPipeline(unet=unet, scheduler=scheduler)
    ours.set_progress_bar_config(disable=True)
    result = {
        "machine": machine(),
        "batch_size": args.batch_size,
        "model": str(args.pipeline or args.model),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "samplers": {},
    }
    print(json.dumps(result["machine"]), flush=True)
    T = scheduler.config.num_train_timesteps
    for name, steps in SAMPLERS.items():
        steps = (args.ddpm_steps or T) if name == "ddpm" else steps
        if (
            name == "ddpm"
        ):  # the diffusers twin of DDPMHubScheduler: linear betas, posterior variance, no clip
            theirs_sched = DDPMScheduler.from_config(
                scheduler.config, variance_type="fixed_small", clip_sample=False
            )
        else:
            theirs_sched = ours.make_sampler(name)
        theirs = DDPMPipeline(unet=unet, scheduler=theirs_sched)
        theirs.set_progress_bar_config(disable=True)
        images = {}

        def run_ours(name=name, steps=steps, images=images):
            images["ddpm-hub"] = ours(
                batch_size=args.batch_size,
                generator=torch.Generator().manual_seed(0),
                num_inference_steps=steps,
                sampler=name,
                output_type="np",
            ).images
            return args.batch_size

        def run_theirs(steps=steps, theirs=theirs, images=images):
            images["diffusers"] = theirs(
                batch_size=args.batch_size,
                generator=torch.Generator().manual_seed(0),
                num_inference_steps=steps,
                output_type="np",
            ).images
            return args.batch_size

        rates = interleaved({"ddpm-hub": run_ours, "diffusers": run_theirs}, args.reps)
        a, b = median(rates["ddpm-hub"]), median(rates["diffusers"])
        diff = float(abs(torch.as_tensor(images["ddpm-hub"]) - torch.as_tensor(images["diffusers"])).max())
        result["samplers"][f"{name}-{steps}"] = {
            "ddpm-hub_images_per_s": a,
            "diffusers_images_per_s": b,
            "ratio": a / b,
            "max_pixel_diff": diff,
            "steps": steps,
        }
        print(
            f"{name}-{steps:<4d} ddpm-hub {a:8.2f} img/s  diffusers {b:8.2f} img/s  x{a / b:5.2f}  "
            f"max pixel diff {diff:.1e}",
            flush=True,
        )
    ddpm_key = next(k for k in result["samplers"] if k.startswith("ddpm-"))
    for row in result["samplers"].values():
        row["speedup_vs_ddpm"] = (
            row["ddpm-hub_images_per_s"] / result["samplers"][ddpm_key]["ddpm-hub_images_per_s"]
        )
    print("speed-up over ddpm:", {k: round(v["speedup_vs_ddpm"], 1) for k, v in result["samplers"].items()})
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
