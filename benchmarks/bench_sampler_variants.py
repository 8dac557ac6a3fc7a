"""Why a sampler scores what it scores: variants of the core samplers on one pipeline, one seed, scored alike.

Each variant is a scheduler built from the pipeline's training config with one setting changed: x_0
clipping on or off or only below a timestep, the noise re-derived from the clipped x_0, DDIM's eta (0: the
deterministic ODE; 1: fresh noise at every step, i.e. the ancestral chain with skipped steps; or 1 only
above or below a timestep), timestep spacing, ``set_alpha_to_one``, DPM-Solver++'s thresholding, and the
step count. Every variant samples the same N images (one batch, ``--seed``) and ``ddpm_hub.evaluate``
scores them (classifier Frechet distance; ``mean`` is the mean pixel, 0.13 for real MNIST digits: grey
grounds raise it). One JSON line per variant.

Variant names: ``ddimSTEPS[-noclip][-clipeps][-eta1][-quad|-hiquad|-logsnr]`` (the last: timesteps from
the same top and bottom as trailing spacing, quadratic in the step index, dense at high t, or even in log
SNR), ``dpmSTEPS[-nothr]``, ``sdeSTEPS[-nothr]`` (the SDE variant of DPM-Solver++),
``ddpm-STEPS[-clip][-trailing]`` (ddpm-hub's ancestral chain), and the named ones in ``NAMED``.

    python benchmarks/bench_sampler_variants.py --num-samples 200 ddim50 ddim50-noclip ddim50-clipeps \\
        ddim50-eta1 ddim50-eta1-noclip ddim200-noclip ddim50-hiSDE256 ddim50-loSDE256 dpm20 dpm20-nothr
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.configuration_utils import FrozenDict

from ddpm_hub import DDPMHubScheduler
from ddpm_hub.samplers import ClippedDDIMScheduler


class VariantDDIM(ClippedDDIMScheduler):
    """ddpm-hub's DDIM step (each step lands on the next listed timestep) with eta, clipping and
    ``use_clipped_model_output`` chosen per variant, eta and clipping per step by timestep. Before commit
    debbc5e the variants used diffusers' own step, whose stride misses the listed timesteps at T=512."""

    eta = 0.0
    clip_below: int | None = None  # clip x_0 only at t < clip_below
    clipped_eps = False  # re-derive the noise from the clipped x_0
    stochastic_above: int | None = None  # eta = 1 at t >= this, else 0
    stochastic_below: int | None = None  # eta = 1 at t < this, else 0
    # None: the config's spacing; "quad": t quadratic in the step index (dense at low t); "hiquad": dense at
    # high t; "logsnr": even steps in log SNR. Same top and bottom timestep as the config's spacing.
    custom_spacing: str | None = None

    def set_timesteps(self, num_inference_steps, device=None):
        super().set_timesteps(num_inference_steps, device)
        if self.custom_spacing is None:
            return
        top, bottom = int(self.timesteps[0]), int(self.timesteps[-1])
        u = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        if self.custom_spacing == "quad":
            t = bottom + (top - bottom) * u**2
        elif self.custom_spacing == "hiquad":  # dense near T
            t = bottom + (top - bottom) * (1 - (1 - u) ** 2)
        elif self.custom_spacing == "logsnr":
            ab = self.alphas_cumprod.double()
            lam = (ab / (1 - ab)).log()
            target = lam[bottom] + (lam[top] - lam[bottom]) * u
            grid = torch.arange(len(lam), dtype=torch.float64)
            # lam decreases with t: interpolate t(lam) on the reversed arrays
            t = torch.from_numpy(np.interp(target.numpy(), lam.flip(0).numpy(), grid.flip(0).numpy()))
        else:
            raise ValueError(self.custom_spacing)
        t = t.round().long()
        for i in range(1, len(t)):  # strictly increasing, one timestep apart at least
            t[i] = max(int(t[i]), int(t[i - 1]) + 1)
        t[-1] = min(int(t[-1]), top)
        for i in range(len(t) - 2, -1, -1):  # and at most top
            t[i] = min(int(t[i]), int(t[i + 1]) - 1)
        self.timesteps = t.flip(0).to(self.timesteps.device)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        t = int(timestep)
        if self.clip_below is not None:
            self._internal_dict = FrozenDict({**self._internal_dict, "clip_sample": t < self.clip_below})
        eta = self.eta
        if self.stochastic_above is not None:
            eta = 1.0 if t >= self.stochastic_above else 0.0
        if self.stochastic_below is not None:
            eta = 1.0 if t < self.stochastic_below else 0.0
        return super().step(
            model_output,
            timestep,
            sample,
            eta=eta,
            generator=generator,
            use_clipped_model_output=self.clipped_eps,
            return_dict=return_dict,
        )


class VariantDDPM(DDPMHubScheduler):
    """ddpm-hub's chain under another class name, so that the pipeline runs it at any step count (the
    ``ddpm`` sampler refuses fewer than its ``min_steps``, which these variants measure)."""


def build_variant(name: str, base) -> tuple[object, int]:
    """(scheduler, steps) of the variant ``name`` for the training scheduler ``base``."""
    from ddpm_hub.samplers import _diffusers_config

    cfg = _diffusers_config({**base.config, "_class_name": type(base).__name__}, torch.as_tensor(base.betas))

    def ddim(steps, eta=0.0, clip=True, spacing="trailing", one=True, **attrs):
        s = VariantDDIM.from_config(
            cfg, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=one, timestep_spacing=spacing
        )
        s.eta = eta
        for k, v in attrs.items():
            setattr(s, k, v)
        return s, steps

    def dpm(steps, algorithm="dpmsolver++", thresholding=True):
        s = DPMSolverMultistepScheduler.from_config(
            cfg,
            algorithm_type=algorithm,
            solver_order=2,
            thresholding=thresholding,
            sample_max_value=1.0,
            dynamic_thresholding_ratio=0.995,
            timestep_spacing="trailing",
            final_sigmas_type="zero",
            lower_order_final=True,
        )
        return s, steps

    named = {
        "ddim50-leading": lambda: ddim(50, spacing="leading"),
        "ddim50-noone": lambda: ddim(50, one=False),
        "ddim50-eta0.5": lambda: ddim(50, eta=0.5),
        "ddim50-clipbelow100": lambda: ddim(50, clip_below=100),
        "ddim50-hiSDE256": lambda: ddim(50, clip=False, stochastic_above=256),
        "ddim50-loSDE256": lambda: ddim(50, clip=False, stochastic_below=256),
    }
    if name in named:
        return named[name]()
    if m := re.fullmatch(r"ddpm-(\d+)((?:-clip|-trailing)*)", name):
        spacing = "trailing" if "-trailing" in m.group(2) else "leading"
        s = VariantDDPM.from_config(base.config, clip_sample="-clip" in m.group(2), timestep_spacing=spacing)
        return s, int(m.group(1))
    if m := re.fullmatch(r"(ddim|dpm|sde)(\d+)((?:-\w+)*)", name):
        kind, steps, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "ddim":
            return ddim(
                steps,
                eta=1.0 if "-eta1" in rest else 0.0,
                clip="-noclip" not in rest,
                clipped_eps="-clipeps" in rest,
                custom_spacing=next((k for k in ("hiquad", "quad", "logsnr") if f"-{k}" in rest), None),
            )
        algorithm = "sde-dpmsolver++" if kind == "sde" else "dpmsolver++"
        return dpm(steps, algorithm, thresholding="-nothr" not in rest)
    raise SystemExit(f"unknown variant {name!r}; see the module docstring")


def main(argv: list[str] | None = None) -> None:
    from ddpm_hub import evaluate, load_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--pipeline", default="spaces/default-model")
    p.add_argument("--num-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.scheduler
    reference = evaluate.Reference.from_dataset("mnist5k")
    for name in args.variants:
        pipe.scheduler, steps = build_variant(name, base)
        start = time.perf_counter()
        images = evaluate.generate(
            pipe, args.num_samples, None, steps, seed=args.seed, batch_size=args.num_samples
        )
        took = time.perf_counter() - start
        pipe.scheduler = base
        r = evaluate.evaluate_images(images, reference)
        row = {"variant": name, "N": args.num_samples, "seed": args.seed, "fd": round(r.fd, 1)}
        row.update(kid=round(r.kid, 4), mean=round(images.mean().item(), 3), sample_s=round(took, 1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
