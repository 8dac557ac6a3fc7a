"""Sample quality against compute on MNIST-5k: training wall time and sampler steps.

Part 1, quality against training wall time, two runs side by side in one process, interleaved in chunks
(so that both see the same machine load):

- ``ddpm-hub``: the built-in default config itself (configs/mnist.yaml, what ``ddpm-hub train`` runs), trained
  by ``ddpm_hub.train.train`` in chunks of ``--chunk-steps`` optimizer steps, each chunk a ``--resume latest``
  of the run (exact: resuming k -> n equals training 0 -> n, tests/test_train.py). Its time is the wall time of
  the whole ``train()`` calls: setup, resume, in-training grids, checkpoints and the end of each chunk
  included, so the chunking only counts against it. The only changes to the default: ``max_steps`` (the
  chunk end; the default lr schedule is constant after warmup and does not depend on it) and the final grid
  of each chunk made with sde-dpm-solver++-20 instead of the 512-step chain (a cost that the real run pays once).
- ``diffusers``: the textbook loop of diffusers' ``train_unconditional.py`` at its defaults, transcribed
  (``TextbookRun``): UNet2DModel of the default model's architecture, DDPMScheduler(1000 steps, linear
  1e-4..0.02), batch 16, AdamW lr 1e-4 (betas 0.95/0.999, weight decay 1e-6), cosine schedule with 500 warmup
  steps, grad clip 1, EMA (inv_gamma 1, power 0.75, max 0.9999), fp32, ``loss.item()`` every step; data
  pre-decoded to tensors (so its loader is not what makes it slow). After each ddpm-hub chunk it trains for
  the same number of seconds.

After every chunk the EMA weights of each run sample ``--num-samples`` images with the same sampler
(sde-dpm-solver++, 20 steps, built from each model's own scheduler) and ddpm_hub.evaluate scores them
(classifier Frechet distance ``fd`` against the held-out MNIST-5k split). Evaluation is not training time.
ddpm-hub stops once it reaches ``--target-fd``; diffusers goes on until it reaches it, or until it has
trained twice as long as ddpm-hub needed (enough to decide "at most half the wall time"), or
``--budget-s``. Reported: both fd curves against training seconds and the seconds to the target.

Part 2, quality against sampler steps, on the ddpm-hub model at the end of part 1 (or ``--pipeline``):
ddpm (all T=512 steps), sde-dpm-solver++ at 10/20/30 steps, dpm-solver++-20 and ddim-50, ``--num-samples``
images each (the same seed): fd, and sampling time and fd relative to ddpm-512.

    python benchmarks/bench_quality.py --num-samples 500 --json quality.json
    python benchmarks/bench_quality.py --pipeline runs/mnist --num-samples 1000   # part 2 only
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_UNET, build, machine  # noqa: E402


class HubRun:
    """ddpm-hub's default config, trained by ``ddpm_hub.train.train`` in resumed chunks."""

    kind = "ddpm-hub"

    def __init__(self, output_dir: Path, chunk_steps: int):
        self.output_dir, self.chunk_steps = output_dir, chunk_steps
        self.train_s, self.steps, self.images, self.loss = 0.0, 0, 0, float("nan")
        self.inner_train_s = 0.0

    def train_chunk(self) -> float:
        from ddpm_hub.config import load_config
        from ddpm_hub.train import train

        config = load_config(
            None,
            [
                ("output_dir", str(self.output_dir)),
                ("max_steps", self.steps + self.chunk_steps),
                ("resume", "latest" if self.steps else None),
                ("checkpointing_steps", self.chunk_steps),
                ("final_sampler", "sde-dpm-solver++"),
                ("final_inference_steps", 20),
                ("log_with", "none"),
            ],
        )
        start = time.perf_counter()
        train(config)
        took = time.perf_counter() - start
        info = json.loads((self.output_dir / "train_info.json").read_text())
        self.train_s += took
        self.steps, self.loss = info["num_train_steps"], info["final_loss"]
        self.images = self.steps * info["batch_size"]
        self.inner_train_s = info["wall_time_s"]  # the training loop alone, summed over the chunks
        return took

    def pipeline(self):
        from ddpm_hub import load_pipeline

        pipe = load_pipeline(self.output_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe


class TextbookRun:
    """diffusers' train_unconditional.py recipe at its defaults, steppable in chunks of wall time."""

    kind = "diffusers"

    def __init__(self, data: torch.Tensor, seed: int = 0):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        self.data = data
        self.model = build("diffusers", DEFAULT_UNET, seed)
        self.g = torch.Generator().manual_seed(seed)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.batch_size = 16
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
        )
        # train_unconditional's horizon is len(dataloader) * num_epochs (31,300 here); the figures in
        # benchmarks/README.md were measured with this 100,000 (lr 0.99x vs 0.93x of peak by step 5,913)
        self.lr = get_cosine_schedule_with_warmup(self.opt, num_warmup_steps=500, num_training_steps=100_000)
        self.ema = EMAModel(
            self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75
        )
        self.T = self.scheduler.config.num_train_timesteps
        self.train_s, self.steps, self.images, self.losses = 0.0, 0, 0, []

    @property
    def loss(self) -> float:
        last = self.losses[-20:]
        return sum(last) / max(len(last), 1)

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
        self.losses.append(loss.item())
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


def score(pipe, num_samples: int, sampler: str, steps: int | None, reference, seed: int = 0) -> dict:
    """fd and the other metrics of ``num_samples`` images from one seed, with the images' classifier
    ``features`` (popped by the caller: the pooled fd over seeds is computed from them)."""
    from ddpm_hub import evaluate

    t = time.perf_counter()
    images = evaluate.generate(pipe, num_samples, sampler, steps, seed=seed)
    sample_s = time.perf_counter() - t
    report = evaluate.evaluate_images(images, reference)
    return {
        "fd": report.fd,
        "kid": report.kid,
        "confidence": report.confidence,
        "entropy": report.entropy,
        "sample_s": sample_s,
        "features": evaluate.classifier_outputs(images)[0],
    }


def pooled_fd(features_dir: Path, reference, relative_to: str | None = None, bootstrap: int = 0) -> dict:
    """The fd of every sampler's images pooled over all the seeds saved in ``features_dir`` (by
    ``--features-dir``, from one run or several): one Gaussian fitted to N x seeds images, so far less noisy
    than the mean of the per-seed fds (at N = 500 the same model's fd moves by up to 15 points between seeds).

    ``relative_to``: a sampler key (``ddpm-seed-512``); each sampler's pooled fd is also given as a ratio to
    that sampler's, over the seeds both have. ``bootstrap``: that many resamplings of the seeds (with replacement, the same seeds for both) give
    the ratio's 5-95% range, i.e. how much of it is the choice of seeds."""
    from ddpm_hub import evaluate

    pooled: dict[str, dict[int, torch.Tensor]] = {}
    for path in sorted(Path(features_dir).glob("*-seed*.pt")):
        key, seed = path.stem.rsplit("-seed", 1)
        pooled.setdefault(key, {})[int(seed)] = torch.load(path, weights_only=True)
    if not pooled:
        raise SystemExit(
            f"no SAMPLER-STEPS-seedS.pt features in {features_dir}; part 2 writes them with --features-dir"
        )

    def fd(key: str, seeds) -> float:
        return evaluate.frechet_distance(torch.cat([pooled[key][s] for s in seeds]), reference.features)

    out = {}
    for key, by_seed in pooled.items():
        seeds = sorted(by_seed)
        out[key] = {
            "fd_pooled": fd(key, seeds),
            "seeds": seeds,
            "num_images": sum(map(len, by_seed.values())),
        }
    if relative_to is not None and relative_to not in pooled:
        raise SystemExit(f"--relative-to {relative_to!r}: no features of it in {features_dir}")
    rng = random.Random(0)
    for key, row in out.items():
        line = f"{key:22s} fd {row['fd_pooled']:7.1f} pooled over {row['num_images']} images, seeds {row['seeds']}"
        if relative_to is not None:
            common = sorted(set(row["seeds"]) & set(pooled[relative_to]))
            row["ratio"] = fd(key, common) / fd(relative_to, common)
            line += f"; x{row['ratio']:.2f} of {relative_to} (seeds {common})"
            if bootstrap and key != relative_to:
                draws = []
                for _ in range(bootstrap):
                    pick = [common[rng.randrange(len(common))] for _ in common]
                    draws.append(fd(key, pick) / fd(relative_to, pick))
                draws.sort()
                row["ratio_5_95"] = [draws[int(0.05 * bootstrap)], draws[int(0.95 * bootstrap) - 1]]
                line += (
                    f", {row['ratio_5_95'][0]:.2f}-{row['ratio_5_95'][1]:.2f} over {bootstrap} resamplings"
                )
        print(line, flush=True)
    return out


def part1(args, reference) -> tuple[dict, HubRun]:
    from ddpm_hub.evaluate import load_images

    data = load_images("mnist5k", range(0, 5000)) * 2 - 1  # pre-decoded: data loading is never the bottleneck
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-quality-"))
    hub, textbook = HubRun(work / "ddpm-hub", args.chunk_steps), TextbookRun(data)
    curves: dict[str, list] = {"ddpm-hub": [], "diffusers": []}
    reach: dict[str, float | None] = {"ddpm-hub": None, "diffusers": None}

    def record(run) -> None:
        q = score(run.pipeline(), args.num_samples, "sde-dpm-solver++", 20, reference)
        q.pop("features")
        point = {"train_s": run.train_s, "steps": run.steps, "images": run.images, "loss": run.loss, **q}
        if run is hub:
            point["train_loop_s"] = hub.inner_train_s
        curves[run.kind].append(point)
        if reach[run.kind] is None and q["fd"] <= args.target_fd:
            reach[run.kind] = run.train_s
        print(
            f"{run.kind:9s} {run.train_s:7.0f}s {run.steps:6d} steps {run.images:7d} img  loss {run.loss:.4f}"
            f"  fd {q['fd']:7.1f}  conf {q['confidence']:.3f}  (sampling {q['sample_s']:.0f}s)",
            flush=True,
        )

    def diffusers_done() -> bool:
        if reach["diffusers"] is not None or textbook.train_s >= args.budget_s:
            return True
        return reach["ddpm-hub"] is not None and textbook.train_s >= 2 * reach["ddpm-hub"]

    while not diffusers_done():
        if reach["ddpm-hub"] is None and hub.train_s < args.budget_s:
            chunk_s = hub.train_chunk()
            record(hub)
        else:
            chunk_s = hub.train_s / max(len(curves["ddpm-hub"]), 1)  # ddpm-hub is done: same slice length
        textbook.train_for(chunk_s)
        record(textbook)
    hub_s, diff_s = reach["ddpm-hub"], reach["diffusers"]
    if hub_s and diff_s:
        ratio, bound = hub_s / diff_s, "="
    elif hub_s:  # diffusers did not get there in the time it had: the ratio is at most this
        ratio, bound = hub_s / textbook.train_s, "<"
    else:
        ratio, bound = None, None
    print(
        f"seconds to fd <= {args.target_fd}: {reach}"
        + (f"  ratio ddpm-hub/diffusers {bound} {ratio:.2f}" if ratio else ""),
        flush=True,
    )
    result = {
        "curves": curves,
        "seconds_to_target": reach,
        "target_fd": args.target_fd,
        "ratio": ratio,
        "ratio_is": {"=": "measured", "<": "upper bound: diffusers had not reached the target"}.get(bound),
        "work_dir": str(work),
    }
    return result, hub


#: part 2's samplers and steps (None: all T steps)
STEP_SWEEP = (
    ("ddpm", None),
    ("sde-dpm-solver++", 10),
    ("sde-dpm-solver++", 20),
    ("sde-dpm-solver++", 30),
    ("dpm-solver++", 20),
    ("ddim", 50),
)


def part2(args, pipe, reference) -> dict:
    """Each sampler over ``--seeds`` (N images per seed): fd per seed and its mean; the spread between seeds
    is the sampling noise of fd at this N, against which the differences between samplers are read."""
    rows = {}
    T = pipe.scheduler.config.num_train_timesteps
    if args.samplers is None:
        sweep = list(STEP_SWEEP)
    else:  # NAME-STEPS, e.g. ddpm-512 ddim-50 sde-dpm-solver++-20 (any registered sampler)
        sweep = [(spec.rsplit("-", 1)[0], int(spec.rsplit("-", 1)[1])) for spec in args.samplers]
        sweep = [(n, None if s == T and n.startswith("ddpm") else s) for n, s in sweep]
    for name, steps in sweep:
        key = f"{name}-{steps or T}"
        per_seed = [score(pipe, args.num_samples, name, steps, reference, seed) for seed in args.seeds]
        for seed, r in zip(args.seeds, per_seed, strict=True):
            features = r.pop("features")
            if args.features_dir is not None:
                args.features_dir.mkdir(parents=True, exist_ok=True)
                torch.save(features, args.features_dir / f"{key}-seed{seed}.pt")
        q = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in per_seed[0]}
        q["fd_per_seed"] = [r["fd"] for r in per_seed]
        q["seeds"] = args.seeds
        rows[key] = q
        spread = f" (seeds: {', '.join(f'{v:.1f}' for v in q['fd_per_seed'])})" if len(per_seed) > 1 else ""
        print(
            f"{key:22s} fd {q['fd']:7.1f}{spread}  conf {q['confidence']:.3f}  {q['sample_s']:7.1f}s per seed",
            flush=True,
        )
    ddpm = next((k for k in rows if k.startswith("ddpm-")), None)
    if ddpm is None:
        return rows
    for q in rows.values():
        q["fd_vs_ddpm"] = q["fd"] / rows[ddpm]["fd"]
        q["speedup_vs_ddpm"] = rows[ddpm]["sample_s"] / q["sample_s"]
    for key, q in rows.items():
        print(
            f"{key:22s} fd x{q['fd_vs_ddpm']:5.2f} of {ddpm}, {q['speedup_vs_ddpm']:5.1f}x faster", flush=True
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    from ddpm_hub import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=3600, help="most training seconds per run (part 1)")
    p.add_argument("--chunk-steps", type=int, default=250, help="ddpm-hub steps per chunk (and evaluation)")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="where ddpm-hub's run goes (default: a temp dir)"
    )
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument(
        "--target-fd", type=float, default=30.0, help="'recognisable digits' (see benchmarks/README.md)"
    )
    p.add_argument("--pipeline", type=Path, default=None, help="skip part 1; part 2 on this trained pipeline")
    p.add_argument("--skip-steps", action="store_true", help="skip part 2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="part 2: sampling seeds per sampler")
    p.add_argument(
        "--samplers", nargs="+", default=None, help="part 2: only these, e.g. ddpm-512 sde-dpm-solver++-20"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="part 2: sample on this device (cpu, cuda)")
    p.add_argument(
        "--features-dir",
        type=Path,
        default=None,
        help="part 2: save each sampler's and seed's classifier features here (SAMPLER-STEPS-seedS.pt), then "
        "print the fd pooled over every seed saved there (seeds run by separate commands pool too)",
    )
    p.add_argument(
        "--pool-only", action="store_true", help="only print the pooled fd of what --features-dir holds"
    )
    p.add_argument(
        "--relative-to", default=None, help="pooled fds also as ratios to this, e.g. ddpm-seed-512"
    )
    p.add_argument("--bootstrap", type=int, default=0, help="resamplings of the seeds for the ratios' 5-95%%")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    reference = evaluate.Reference.from_dataset("mnist5k")
    if args.pool_only and args.features_dir is None:
        p.error("--pool-only needs --features-dir")
    if args.bootstrap and args.relative_to is None:
        p.error("--bootstrap resamples the ratios to --relative-to SAMPLER-STEPS: give it too")
    if args.pool_only:
        pooled = pooled_fd(args.features_dir, reference, args.relative_to, args.bootstrap)
        if args.json:
            args.json.write_text(json.dumps(pooled, indent=1))
        return pooled
    result = {"machine": machine(args.device), "args": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(result["machine"]), flush=True)
    if args.pipeline is None:
        result["wall_time"], run = part1(args, reference)
        pipe = run.pipeline()
    else:
        from ddpm_hub import load_pipeline

        pipe = load_pipeline(args.pipeline).to(args.device)
        pipe.set_progress_bar_config(disable=True)
    if not args.skip_steps:
        result["sampler_steps"] = part2(args, pipe, reference)
        if args.features_dir is not None:
            result["pooled"] = pooled_fd(args.features_dir, reference, args.relative_to, args.bootstrap)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
