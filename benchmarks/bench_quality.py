"""Sample quality against compute on MNIST-5k: training wall time and sampler steps.

Part 1, quality against training wall time. Two runs train side by side in one process, interleaved in
chunks of ``--chunk-s`` seconds (so both see the same machine load), each for ``--budget-s`` seconds of
its own training time (evaluation excluded):

- ``ddpm-hub``: the default config's recipe (configs/mnist.yaml, ``TrainConfig`` defaults): ddpm-hub's UNet,
  T=512 scaled-linear betas, batch 64, AdamW lr 1e-3 (weight decay 0) with 100 warmup steps, grad clip 1,
  EMA (warmup, power 0.75, max 0.999), fp32, fused AdamW, no per-step host sync;
- ``diffusers``: the textbook loop of diffusers' ``train_unconditional.py`` at its defaults: UNet2DModel of
  the same architecture, DDPMScheduler(1000 steps, linear 1e-4..0.02), batch 16, AdamW lr 1e-4
  (betas 0.95/0.999, weight decay 1e-6), cosine schedule with 500 warmup steps, grad clip 1, EMA (inv_gamma
  1, power 0.75, max 0.9999), fp32, ``loss.item()`` every step.

Every ``--eval-every-s`` seconds of training, the EMA weights sample ``--num-samples`` images with the same
sampler (dpm-solver++, 20 steps, built from each model's own scheduler) and ddpm_hub.evaluate scores them
(classifier Frechet distance ``fd`` against the held-out MNIST-5k split). Reported: the fd curve against
training seconds, and the seconds each run needs to reach ``--target-fd``.

Part 2, quality against sampler steps, on the ddpm-hub model at the end of part 1 (or ``--pipeline``):
ddpm (all T=512 steps), ddim-50 and dpm-solver++-20, ``--num-samples`` images each: fd and sampling time.

    python benchmarks/bench_quality.py --budget-s 600 --num-samples 500 --json quality.json
    python benchmarks/bench_quality.py --pipeline runs/mnist --num-samples 1000   # part 2 only
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_UNET, build, machine  # noqa: E402


class Run:
    """One training recipe, steppable in chunks of wall time."""

    def __init__(self, kind: str, data: torch.Tensor, seed: int = 0):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup, get_scheduler
        from diffusers.training_utils import EMAModel

        from ddpm_hub import DDPMHubScheduler

        self.kind, self.data = kind, data
        self.model = build(kind, DEFAULT_UNET, seed)
        self.g = torch.Generator().manual_seed(seed)
        if kind == "ddpm-hub":
            self.scheduler = DDPMHubScheduler()
            self.batch_size, self.sync = 64, False
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
            self.lr = get_scheduler("constant_with_warmup", self.opt, num_warmup_steps=100)
            self.ema = EMAModel(self.model.parameters(), decay=0.999, use_ema_warmup=True, power=0.75)
        else:
            self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
            self.batch_size, self.sync = 16, True
            self.opt = torch.optim.AdamW(
                self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
            )
            self.lr = get_cosine_schedule_with_warmup(
                self.opt, num_warmup_steps=500, num_training_steps=100_000
            )
            self.ema = EMAModel(
                self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75
            )
        self.T = self.scheduler.config.num_train_timesteps
        self.train_s, self.steps, self.images, self.losses = 0.0, 0, 0, []

    def step(self) -> None:
        idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.g)
        x0 = self.data[idx]
        noise = torch.randn(x0.shape, generator=self.g)
        t = torch.randint(0, self.T, (self.batch_size,), generator=self.g)
        loss = F.mse_loss(self.model(self.scheduler.add_noise(x0, noise, t), t).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.lr.step()
        self.ema.step(self.model.parameters())
        self.losses.append(loss.item() if self.sync else loss.detach())
        self.steps += 1
        self.images += self.batch_size

    def train_for(self, seconds: float) -> None:
        self.model.train()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.step()
        self.train_s += time.perf_counter() - start

    def pipeline(self):
        from ddpm_hub import DDPMHubPipeline

        unet = copy.deepcopy(self.model).eval()
        self.ema.copy_to(unet.parameters())
        pipe = DDPMHubPipeline(unet=unet, scheduler=self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def score(pipe, num_samples: int, sampler: str, steps: int | None, reference) -> dict:
    from ddpm_hub import evaluate

    t = time.perf_counter()
    images = evaluate.generate(pipe, num_samples, sampler, steps, seed=0)
    sample_s = time.perf_counter() - t
    report = evaluate.evaluate_images(images, reference)
    return {
        "fd": report.fd,
        "kid": report.kid,
        "confidence": report.confidence,
        "entropy": report.entropy,
        "sample_s": sample_s,
    }


def part1(args, reference) -> tuple[dict, object]:
    from ddpm_hub.evaluate import load_images

    data = load_images("mnist5k", range(0, 5000)) * 2 - 1  # pre-decoded: data loading is never the bottleneck
    runs = [Run("ddpm-hub", data), Run("diffusers", data)]
    curves: dict[str, list] = {r.kind: [] for r in runs}
    next_eval = {r.kind: args.eval_every_s for r in runs}
    while any(r.train_s < args.budget_s for r in runs):
        for r in runs:
            if r.train_s >= args.budget_s:
                continue
            r.train_for(min(args.chunk_s, args.budget_s - r.train_s))
            if r.train_s >= next_eval[r.kind] or r.train_s >= args.budget_s:
                next_eval[r.kind] += args.eval_every_s
                q = score(r.pipeline(), args.num_samples, "dpm-solver++", 20, reference)
                point = {
                    "train_s": r.train_s,
                    "steps": r.steps,
                    "images": r.images,
                    "loss": float(sum(float(v) for v in r.losses[-20:]) / max(len(r.losses[-20:]), 1)),
                    **q,
                }
                curves[r.kind].append(point)
                print(
                    f"{r.kind:9s} {r.train_s:7.0f}s {r.steps:6d} steps {r.images:7d} img  loss {point['loss']:.4f}"
                    f"  fd {q['fd']:7.1f}  conf {q['confidence']:.3f}",
                    flush=True,
                )
    reach = {}
    for kind, curve in curves.items():
        hit = next((p["train_s"] for p in curve if p["fd"] <= args.target_fd), None)
        reach[kind] = hit
    ratio = reach["ddpm-hub"] / reach["diffusers"] if all(reach.values()) else None
    print(
        f"seconds to fd <= {args.target_fd}: {reach}" + (f"  ratio {ratio:.2f}" if ratio else ""), flush=True
    )
    return {"curves": curves, "seconds_to_target": reach, "target_fd": args.target_fd, "ratio": ratio}, runs[
        0
    ]


def part2(args, pipe, reference) -> dict:
    rows = {}
    for name, steps in (("ddpm", None), ("ddim", 50), ("dpm-solver++", 20)):
        q = score(pipe, args.num_samples, name, steps, reference)
        key = f"{name}-{steps or pipe.scheduler.config.num_train_timesteps}"
        rows[key] = q
        print(f"{key:16s} fd {q['fd']:7.1f}  conf {q['confidence']:.3f}  {q['sample_s']:7.1f}s", flush=True)
    ddpm = next(k for k in rows if k.startswith("ddpm-"))
    for q in rows.values():
        q["fd_vs_ddpm"] = q["fd"] / rows[ddpm]["fd"]
        q["speedup_vs_ddpm"] = rows[ddpm]["sample_s"] / q["sample_s"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    from ddpm_hub import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=600, help="training seconds per run (part 1)")
    p.add_argument("--chunk-s", type=float, default=30)
    p.add_argument("--eval-every-s", type=float, default=150)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument(
        "--target-fd", type=float, default=30.0, help="'recognisable digits' (see benchmarks/README.md)"
    )
    p.add_argument("--pipeline", type=Path, default=None, help="skip part 1; part 2 on this trained pipeline")
    p.add_argument("--skip-steps", action="store_true", help="skip part 2")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    reference = evaluate.Reference.from_dataset("mnist5k")
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(result["machine"]), flush=True)
    if args.pipeline is None:
        result["wall_time"], run = part1(args, reference)
        pipe = run.pipeline()
    else:
        from ddpm_hub import load_pipeline

        pipe = load_pipeline(args.pipeline)
        pipe.set_progress_bar_config(disable=True)
    if not args.skip_steps:
        result["sampler_steps"] = part2(args, pipe, reference)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
