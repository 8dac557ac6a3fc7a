"""One command for a machine with a GPU: train configs/cifar10.yaml for ~200 steps in bf16 under
``accelerate launch``, then sample a 16-image grid on the GPU, and print images/s, peak GPU memory, grid
times and whether every tensor of the sampling pipeline sits on the GPU; then every sampler on the bundled
models (GPU against CPU), and 300 steps of the built-in default config (auto precision: float32 on CUDA).

    python benchmarks/gpu_check.py                      # all GPUs, CIFAR-10 from the Hub
    python benchmarks/gpu_check.py --synthetic-data     # no network: 5,000 tinted 32 px MNIST digits
    python benchmarks/gpu_check.py --dry-run            # anywhere: check the config, print the commands

It exits 1 when a check fails (a tensor off the GPU, non-finite images, a failed run) and 2 without a GPU.
Results: benchmarks/README.md, "GPU check" (passed on an NVIDIA H200).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar10.yaml"


def train_overrides(args: argparse.Namespace, out: Path, dataset: str) -> list[str]:
    """configs/cifar10.yaml, shortened to ``args.steps`` steps with a grid half way and 16-image grids."""
    return [
        "--config",
        str(CONFIG),
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        "true",
        "--data.dataset",
        dataset,
        "--data.num_workers",
        "4",
        "--max_steps",
        str(args.steps),
        "--lr_warmup_steps",
        str(min(100, args.steps // 2)),
        "--logging_steps",
        "10",
        "--sample_steps",
        str(max(1, args.steps // 2)),
        "--num_sample_images",
        "16",
        "--checkpointing_steps",
        "0",
        "--final_sampler",
        "ddpm",  # the seed's 512-step chain: the longest grid a run makes
        "--log_with",
        "none",
        "--mixed_precision",
        "bf16",
    ]


def launch_command(args: argparse.Namespace, out: Path, dataset: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
    ]
    cmd += ["--mixed_precision", "bf16", "--num_processes", str(args.num_processes)]
    if args.num_processes > 1:
        cmd += ["--multi_gpu", "--main_process_port", "0"]
    return cmd + ["-m", "ddpm_hub.train", *train_overrides(args, out, dataset)]


def synthetic_data(folder: Path, n: int = 5000) -> Path:
    """An image folder of ``n`` 32 px RGB images (MNIST-5k digits, tinted): CIFAR-10's shape without a network."""
    import numpy as np
    from PIL import Image

    from ddpm_hub.evaluate import load_images

    digits = load_images("mnist5k", range(n))  # (n, 1, 28, 28) in [0, 1]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(digits.numpy()):
        a = np.asarray(Image.fromarray((digit[0] * 255).astype("uint8")).resize((32, 32))) / 255.0
        ink, paper = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.4, 3)
        rgb = a[..., None] * ink + (1 - a[..., None]) * paper
        Image.fromarray((rgb * 255).astype("uint8")).save(folder / f"{i:05d}.png")
    return folder


def placement(module, device_type: str) -> list[str]:
    """Names of the parameters and buffers of ``module`` that are not on a ``device_type`` device."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in tensors if t.device.type != device_type]


def sampling_checks(run: Path, cfg) -> dict:
    """The training code's sampling pipeline and the saved pipeline, on the GPU: placement and grid times."""
    import torch
    from diffusers.training_utils import EMAModel

    from ddpm_hub import load_pipeline
    from ddpm_hub.devices import allow_fast_float32, select_device
    from ddpm_hub.images import make_grid
    from ddpm_hub.train import build_model, build_scheduler, sampling_pipeline

    device = select_device("auto")
    allow_fast_float32(device)
    result: dict = {"device": str(device)}
    # what train.py builds for its grids: the EMA weights of a CPU-built model, moved to the device
    model = build_model(cfg, 3, 32)
    ema = EMAModel(model.parameters())
    ema.to(device)
    pipe = sampling_pipeline(model, ema, build_scheduler(cfg), device)
    result["train_pipeline_tensors_off_gpu"] = placement(pipe.unet, device.type)

    pipe = load_pipeline(run).to(device)
    pipe.set_progress_bar_config(disable=True)
    result["saved_pipeline_tensors_off_gpu"] = placement(pipe.unet, device.type)
    pipe(batch_size=16, sampler="sde-dpm-solver++", num_inference_steps=20, output_type="pt")  # warm-up
    for sampler, steps in (("sde-dpm-solver++", 20), ("ddpm", None)):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        images = pipe(
            batch_size=16,
            generator=torch.Generator("cpu").manual_seed(0),
            sampler=sampler,
            num_inference_steps=steps,
            output_type="pt",
        ).images
        torch.cuda.synchronize(device)
        result[f"grid_s_{sampler}_{steps or 512}"] = round(time.perf_counter() - start, 3)
        result[f"finite_{sampler}"] = bool(torch.isfinite(images).all())
        make_grid(images).save(run / f"gpu-check-{sampler}.png")
    result["sampling_peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["bundled_models"] = bundled_model_checks(device)
    return result


def default_config_run(out: Path, steps: int = 300) -> dict:
    """The built-in default config, run as ``ddpm-hub train`` is (no launcher), for ``steps`` steps on the GPU:
    ``mixed_precision: auto`` must resolve to float32 there (TF32), and the run's images/s against the bare
    step's of ``bench_train.py --device cuda`` show what the training loop costs around the step."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "ddpm_hub.train", "--output_dir", str(out), "--overwrite_output_dir", "true"]
    cmd += ["--max_steps", str(steps), "--log_with", "none", "--checkpointing_steps", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"failed": proc.returncode, "stderr": proc.stderr[-3000:]}
    info = json.loads((out / "train_info.json").read_text())
    keys = ("mixed_precision", "mixed_precision_source", "images_per_s", "wall_time_s", "sample_device")
    return {k: info.get(k) for k in keys} | {
        "steps": info["num_train_steps"],
        "final_loss": info["final_loss"],
    }


def bundled_model_checks(device) -> dict:
    """Every registered sampler (plugins' too) at its default steps on the Space's bundled models, on the GPU:
    the model on the device, finite images in [0, 1], the same digits as on the CPU (classifier confidence),
    the time.
    The class-conditional model also with classifier-free guidance (one batched forward per step)."""
    import torch

    from ddpm_hub import load_pipeline
    from ddpm_hub.evaluate import classifier_outputs, load_classifier
    from ddpm_hub.plugins import get_samplers

    classifier = load_classifier()
    out: dict = {}
    for name, kwargs in (
        ("default-model", {}),
        ("cond-model", {"class_labels": list(range(10)) * 2, "guidance_scale": 1.5}),
    ):
        pipe = load_pipeline(ROOT / "spaces" / name).to(device)
        pipe.set_progress_bar_config(disable=True)
        n = len(kwargs.get("class_labels", [])) or 20
        for sampler in get_samplers():
            row = {}
            for where in (device, torch.device("cpu")):
                pipe.to(where)
                if where.type == "cuda":
                    torch.cuda.synchronize(where)
                start = time.perf_counter()
                images = pipe(
                    batch_size=n,
                    generator=torch.Generator("cpu").manual_seed(0),
                    sampler=sampler,
                    output_type="pt",
                    **kwargs,
                ).images
                if where.type == "cuda":
                    torch.cuda.synchronize(where)
                    row["on_device"] = not placement(pipe.unet, "cuda")  # the pipeline returns CPU tensors
                key = "gpu" if where.type == "cuda" else "cpu"
                row[f"{key}_s"] = round(time.perf_counter() - start, 3)
                finite = bool(torch.isfinite(images).all())
                row[f"{key}_finite_in_0_1"] = finite and 0 <= float(images.min()) <= float(images.max()) <= 1
                probs = classifier_outputs(images.cpu(), classifier)[1]
                row[f"{key}_confidence"] = round(float(probs.max(-1).values.mean()), 3)
            out[f"{name}/{sampler}"] = row
            print(name, sampler, row, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--num-processes", type=int, default=None, help="default: every visible GPU")
    p.add_argument("--dataset", default="uoft-cs/cifar10", help="a Hub dataset, image folder or parquet file")
    p.add_argument("--synthetic-data", action="store_true", help="tinted 32 px MNIST digits (no network)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument(
        "--dry-run", action="store_true", help="check the config and print the commands; no GPU needed"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps must be at least 2, got {args.steps}")

    import torch

    from ddpm_hub.config import config_from_argv

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args.num_processes = args.num_processes or max(gpus, 1)
    if args.output_dir:
        out = args.output_dir
    elif args.dry_run:
        out = Path(tempfile.gettempdir()) / "ddpm-hub-gpu-check-XXXX"
    else:
        out = Path(tempfile.mkdtemp(prefix="ddpm-hub-gpu-check-"))
    dataset = str(out / "synthetic-data") if args.synthetic_data else args.dataset
    cmd = launch_command(args, out / "run", dataset)
    cfg = config_from_argv(train_overrides(args, out / "run", dataset))  # the run's config, validated
    if args.dry_run:
        print(f"config {CONFIG.relative_to(ROOT)} with overrides: OK ({cfg.max_steps} steps, bf16)")
        print("would run:", shlex.join(cmd))
        print(
            f"then sample 16-image grids on {'cuda' if gpus else 'the GPU (none here)'} and check placement"
        )
        return 0
    if not gpus:
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False); run it "
            "on a machine with a GPU, or with --dry-run to check the config and see the commands",
            file=sys.stderr,
        )
        return 2

    if args.synthetic_data:
        synthetic_data(Path(dataset))
    print("running:", shlex.join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode:
        print(proc.stderr[-6000:], file=sys.stderr)
        print(f"gpu_check: FAILED: the training run exited {proc.returncode}", file=sys.stderr)
        return 1
    info = json.loads((out / "run" / "train_info.json").read_text())
    grid_lines = re.findall(
        r"step \d+: samples/step-\d+\.png, .* in [\d.]+ s on \S+", proc.stdout + proc.stderr
    )
    result = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "num_processes": info["num_processes"],
        "mixed_precision": info["mixed_precision"],
        "steps": info["num_train_steps"],
        "train_images_per_s": info["images_per_s"],
        "train_peak_memory_mib": info.get("peak_device_memory_mib"),
        "sample_device_in_training": info.get("sample_device"),
        "in_training_grids": grid_lines,
        "final_samples_s (512-step ddpm, 16 images)": info.get("final_samples_s"),
        "command_wall_s": round(wall, 1),
    }
    result.update(sampling_checks(out / "run", cfg))
    result["default_config"] = default_config_run(out / "default-run")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failures = [k for k in ("train_pipeline_tensors_off_gpu", "saved_pipeline_tensors_off_gpu") if result[k]]
    failures += [k for k, v in result.items() if k.startswith("finite_") and not v]
    for key, row in result["bundled_models"].items():
        if not (row["on_device"] and row["gpu_finite_in_0_1"]):
            failures.append(f"{key}: images off the GPU or not finite in [0, 1]")
        elif row["gpu_confidence"] < row["cpu_confidence"] - 0.1:  # the same model and seed: the same digits
            failures.append(
                f"{key}: confidence {row['gpu_confidence']} on the GPU, {row['cpu_confidence']} on the CPU"
            )
    if info["mixed_precision"] != "bf16":
        failures.append(f"mixed_precision ran {info['mixed_precision']}, not bf16")
    default_run = result["default_config"]
    if default_run.get("failed") or default_run.get("mixed_precision") != "no":
        failures.append(f"the default config's run (auto precision: float32 on CUDA): {default_run}")
    elif not str(default_run.get("sample_device")).startswith("cuda"):
        failures.append(f"the default config's run sampled on {default_run.get('sample_device')}")
    if not str(result["sample_device_in_training"]).startswith("cuda"):
        failures.append(f"the run sampled its grids on {result['sample_device_in_training']}")
    print("gpu_check: " + ("FAILED: " + "; ".join(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
