"""Training-step throughput and peak memory: ddpm-hub's UNet vs diffusers' UNet2DModel, side by side.

Both models are built to the same architecture (the default MNIST config: 28 px, 1 channel, base 32,
channel_mult (1, 2, 2), 2 res blocks, attention at 7x7): the same parameter count and FLOPs (counted
with ``torch.utils.flop_counter``). Every variant below trains its own copy of the same initial weights
on the same batches, noise and timesteps, so loss curves are comparable step by step; the variants run
interleaved (A, B, C, A, B, C ...) in one process and the medians are reported as ratios to the
textbook diffusers step (eager fp32, AdamW, ``loss.item()`` every step, as in diffusers'
train_unconditional example). Peak memory: one subprocess per variant, the peak RSS (VmHWM, reset after
the model, optimizer and data are built) of two training steps, minus the RSS before them.

    python benchmarks/bench_train.py                     # default config, all variants
    python benchmarks/bench_train.py --batch-size 64 --reps 5 --compile --json train.json
    python benchmarks/bench_train.py --device cuda --unet cifar10 --batch-size 128 --reps 10 --steps-per-rep 10

``--device cuda``: the same on a GPU (timings end with a device synchronize; peak memory is the CUDA caching
allocator's ``max_memory_allocated`` growth over two steps, in-process). ``--unet cifar10``: the 35.7M-parameter
model of configs/cifar10.yaml (32 px, 3 channels) instead of the default MNIST one.

``--precision-runs N``: instead, the real training command (``python -m ddpm_hub.train``, the default config,
batch 64) N times in float32 and N times in bf16 (ACCELERATE_MIXED_PRECISION, accelerate's autocast),
interleaved, ``--precision-steps`` steps each; images/s from train_info.json::

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --precision-runs 3 --precision-steps 40
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import CIFAR10_UNET, DEFAULT_UNET, build, interleaved, machine, matmul_peak, median  # noqa: E402

UNETS = {"default": DEFAULT_UNET, "cifar10": CIFAR10_UNET}

#: fast-path pieces; each variant is a set of them on top of the textbook step
PIECES = ("no_sync", "foreach", "fused", "channels_last", "bf16", "compile")


def flops_per_image(model: torch.nn.Module, batch: int, size: int, channels: int) -> float:
    device = next(model.parameters()).device
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.randint(0, 512, (batch,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        F.mse_loss(model(x, t).sample, x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


class Trainer:
    """One model + optimizer + the step of a variant; steps through a fixed list of batches."""

    def __init__(self, model: torch.nn.Module, pieces: set[str], batches: list, scheduler, device="cpu"):
        unknown = pieces - set(PIECES)
        if unknown:
            raise ValueError(f"unknown fast-path pieces {sorted(unknown)}; choose from {PIECES}")
        self.pieces, self.batches, self.scheduler = pieces, batches, scheduler
        self.device = torch.device(device)
        model = model.to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if "channels_last" in pieces else model
        opt_kwargs = (
            {"foreach": True} if "foreach" in pieces else {"fused": True} if "fused" in pieces else {}
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, **opt_kwargs)
        self.forward = torch.compile(self.model) if "compile" in pieces else self.model
        self.losses: list = []
        self.i = 0

    def step(self) -> int:
        x0, noise, t = self.batches[self.i % len(self.batches)]
        self.i += 1
        xt = self.scheduler.add_noise(x0, noise, t)
        if "channels_last" in self.pieces:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled="bf16" in self.pieces):
            pred = self.forward(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.losses.append(loss.detach() if "no_sync" in self.pieces else loss.item())
        return len(x0)

    def loss_curve(self) -> list[float]:
        return [float(v) for v in self.losses]


def make_batches(n: int, batch: int, unet_kwargs: dict, seed: int = 0, device="cpu") -> list:
    from ddpm_hub.evaluate import load_images

    g = torch.Generator().manual_seed(seed)
    data = load_images("mnist5k", range(0, n * batch)) * 2 - 1  # pre-decoded tensors: loading is not timed
    c, s = unet_kwargs["in_channels"], unet_kwargs["sample_size"]
    data = torch.nn.functional.interpolate(data, size=(s, s)) if data.shape[-1] < s else data
    data = data.expand(-1, c, -1, -1)[:, :, :s, :s].contiguous()
    return [
        (
            data[i * batch : (i + 1) * batch].to(device),
            torch.randn(batch, c, s, s, generator=g).to(device),
            torch.randint(0, 512, (batch,), generator=g).to(device),
        )
        for i in range(n)
    ]


def parse_variant(spec: str) -> tuple[str, set[str]]:
    """'ddpm-hub+channels_last+no_sync' -> ('ddpm-hub', {'channels_last', 'no_sync'})."""
    kind, *pieces = spec.split("+")
    if kind not in ("ddpm-hub", "diffusers"):
        raise ValueError(f"variant {spec!r} must start with ddpm-hub or diffusers")
    return kind, set(pieces)


def memory_child(spec: str, batch: int, steps: int, unet: dict) -> None:
    """Run in a subprocess: print the peak RSS growth (MiB) of ``steps`` training steps of a variant."""
    from ddpm_hub import DDPMHubScheduler

    kind, pieces = parse_variant(spec)
    trainer = Trainer(build(kind, unet), pieces, make_batches(1, batch, unet), DDPMHubScheduler())

    def status(key: str) -> int:  # KiB
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    rss = status("VmRSS")
    with contextlib.suppress(OSError):  # reset the peak-RSS mark (VmHWM): data loading does not count
        Path("/proc/self/clear_refs").write_text("5")
    for _ in range(steps):
        trainer.step()
    peak = status("VmHWM")
    print(
        json.dumps(
            {"rss_before_mib": rss / 1024, "peak_mib": peak / 1024, "step_peak_mib": (peak - rss) / 1024}
        )
    )


def precision_runs(runs: int, steps: int) -> dict:
    """images/s of ``python -m ddpm_hub.train`` in float32 and in bf16 (launcher's choice), interleaved."""
    import os
    import tempfile

    root = Path(__file__).resolve().parents[1]
    rates: dict[str, list[float]] = {"no": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(runs):
            for precision in ("no", "bf16") if r % 2 == 0 else ("bf16", "no"):
                out = Path(tmp) / precision
                cmd = [
                    sys.executable,
                    "-m",
                    "ddpm_hub.train",
                    "--output_dir",
                    str(out),
                    "--overwrite_output_dir",
                ]
                cmd += [
                    "true",
                    "--max_steps",
                    str(steps),
                    "--sample_steps",
                    "0",
                    "--checkpointing_steps",
                    "0",
                ]
                cmd += ["--final_sampler", "ddim", "--final_inference_steps", "4", "--log_with", "none"]
                env = {**os.environ, "ACCELERATE_MIXED_PRECISION": precision}
                subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, text=True)
                info = json.loads((out / "train_info.json").read_text())
                assert info["mixed_precision"] == precision, info["mixed_precision"]
                rates[precision].append(info["images_per_s"])
                print(f"run {r} {precision}: {info['images_per_s']:.1f} img/s", flush=True)
    result = {p: {"median_images_per_s": median(v), "runs": v} for p, v in rates.items()}
    result["bf16_over_fp32"] = result["bf16"]["median_images_per_s"] / result["no"]["median_images_per_s"]
    print(f"bf16 / fp32 (medians): x{result['bf16_over_fp32']:.2f}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--steps-per-rep", type=int, default=1)
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (slow to compile on CPU)"
    )
    p.add_argument("--variants", nargs="*", default=None, help="e.g. ddpm-hub+channels_last diffusers")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precision-runs", type=int, default=0, help="time the training command, fp32 vs bf16")
    p.add_argument("--precision-steps", type=int, default=40)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--unet", choices=sorted(UNETS), default="default", help="the model compared")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here")
    unet = UNETS[args.unet]
    if args.precision_runs:
        result = {
            "machine": machine(),
            "precision": precision_runs(args.precision_runs, args.precision_steps),
        }
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return result
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size, steps=2, unet=unet)
        return {}

    from ddpm_hub import DDPMHubScheduler

    variants = args.variants or [
        "diffusers",
        "ddpm-hub",
        "ddpm-hub+no_sync",
        "ddpm-hub+fused",
        "ddpm-hub+channels_last",
        "ddpm-hub+bf16",
        "ddpm-hub+no_sync+fused+channels_last",
        "diffusers+no_sync+fused+channels_last",
    ] + (["ddpm-hub+compile"] if args.compile else [])
    result = {"machine": machine(device), "batch_size": args.batch_size, "unet": unet}
    print(json.dumps(result["machine"]), flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as training does
        peak = {dt: matmul_peak(getattr(torch, dt), n=8192, device=device) for dt in ("float32", "bfloat16")}
        peak = {"fp32": peak["float32"], "bf16": peak["bfloat16"]}
    else:
        peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, n=512, reps=3)}
    result["matmul_peak_gflops"] = peak
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s", flush=True)

    models = {kind: build(kind, unet) for kind in ("ddpm-hub", "diffusers")}
    shape = (unet["sample_size"], unet["in_channels"])
    for kind, m in models.items():
        result[kind] = {
            "parameters": sum(p.numel() for p in m.parameters()),
            "train_gflop_per_image": flops_per_image(m, 4, *shape) / 1e9,
        }
        print(kind, result[kind], flush=True)

    n_batches = min(max(2, (1 + args.reps) * args.steps_per_rep), max(2, 5000 // args.batch_size))
    batches = make_batches(n_batches, args.batch_size, unet, device=device)
    scheduler = DDPMHubScheduler()
    trainers = {}
    for spec in variants:
        kind, pieces = parse_variant(spec)
        trainers[spec] = Trainer(copy.deepcopy(models[kind]), pieces, batches, scheduler, device)

    def run(trainer):
        def steps() -> int:
            n = sum(trainer.step() for _ in range(args.steps_per_rep))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return n

        return steps

    import time

    compile_s = {}
    for spec, trainer in trainers.items():
        if "compile" in trainer.pieces:  # the first call compiles; time it separately
            t = time.perf_counter()
            trainer.step()
            compile_s[spec] = time.perf_counter() - t
            trainer.i, trainer.losses = 0, []
    rates = interleaved({spec: run(tr) for spec, tr in trainers.items()}, args.reps)
    base = median(rates["diffusers"]) if "diffusers" in rates else median(next(iter(rates.values())))
    ref_curve = trainers["ddpm-hub"].loss_curve() if "ddpm-hub" in trainers else None
    rows = []
    for spec, r in rates.items():
        kind, pieces = parse_variant(spec)
        ips = median(r)
        gflops = ips * result[kind]["train_gflop_per_image"]
        curve = trainers[spec].loss_curve()
        row = {
            "variant": spec,
            "images_per_s": ips,
            "ratio_vs_diffusers": ips / base,
            "gflops": gflops,
            "pct_of_peak": 100 * gflops / peak["bf16" if "bf16" in pieces else "fp32"],
            "loss_curve": curve,
            "samples": r,
        }
        if ref_curve is not None and kind == "ddpm-hub":
            row["max_loss_rel_diff_vs_fp32"] = max(
                abs(a - b) / abs(b) for a, b in zip(curve, ref_curve, strict=False)
            )
        if spec in compile_s:
            row["compile_s"] = compile_s[spec]
        rows.append(row)
        extra = f" compile {compile_s[spec]:.0f}s" if spec in compile_s else ""
        drift = row.get("max_loss_rel_diff_vs_fp32")
        print(
            f"{spec:32s} {ips:7.2f} img/s  x{ips / base:5.2f}  {gflops:6.1f} GFLOP/s "
            f"({row['pct_of_peak']:4.1f}% of peak)"
            + (f"  loss drift {drift:.1e}" if drift is not None else "")
            + extra,
            flush=True,
        )
    result["throughput"] = rows

    if not args.no_memory and device.type == "cuda":
        result["memory"] = {}
        for spec, trainer in trainers.items():
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            trainer.step()
            trainer.step()
            torch.cuda.synchronize(device)
            mem = {"step_peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
            result["memory"][spec] = mem
            print(f"{spec:32s} step peak +{mem['step_peak_mib']:.0f} MiB (CUDA allocator)", flush=True)
    elif not args.no_memory:
        result["memory"] = {}
        for spec in variants:
            if "compile" in spec:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", spec, "--batch-size", str(args.batch_size)]
                + ["--unet", args.unet],
                capture_output=True,
                text=True,
                check=True,
            )
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            result["memory"][spec] = mem
            print(
                f"{spec:32s} step peak +{mem['step_peak_mib']:.0f} MiB (process peak {mem['peak_mib']:.0f} MiB)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
