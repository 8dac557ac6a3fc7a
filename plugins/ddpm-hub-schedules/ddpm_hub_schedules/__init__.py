"""Cosine and sigmoid noise schedules for ddpm-hub, registered as ``beta_schedule: cosine`` and ``sigmoid``.

Both are defined by a continuous alpha_bar(t) on t in [0, 1] and discretised at t = i/T, so the same
schedule (the same curve of alpha_bar against t/T) comes out for any number of steps T:

    beta_i = min(1 - alpha_bar(i / T) / alpha_bar((i - 1) / T), max_beta),  i = 1 .. T

(Nichol & Dhariwal 2021, eq. 17 and the paragraph after it). ``max_beta = 0.999`` keeps the last step
from being singular, since alpha_bar(1) is (nearly) 0.

Note on names: diffusers' own ``beta_schedule="sigmoid"`` is a different schedule (GeoDiff's sigmoid of
a linspace between beta_start and beta_end). ddpm-hub's samplers pass a ddpm-hub scheduler's betas to
diffusers schedulers explicitly (``trained_betas``), so DDIM and DPM-Solver++ use these betas.
"""

from __future__ import annotations

import math

import torch

from ddpm_hub import hookimpl
from ddpm_hub.schedules import DEFAULT_NUM_TRAIN_TIMESTEPS

__all__ = ["cosine", "cosine_alpha_bar", "sigmoid", "sigmoid_alpha_bar", "betas_from_alpha_bar"]
__version__ = "0.1.0"


def betas_from_alpha_bar(alpha_bar: torch.Tensor, max_beta: float = 0.999) -> torch.Tensor:
    """Betas from alpha_bar sampled at t = 0, 1/T, ..., 1 (shape (T+1,)): ``1 - ab[i]/ab[i-1]``, clipped."""
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: ``f(t) / f(0)`` with ``f(t) = cos((t + s) / (1 + s) * pi / 2) ** 2``."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine(
    num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS,
    beta_start: float | None = None,
    beta_end: float | None = None,
    s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, "Improved DDPM"), float64 betas of shape (T,).

    alpha_bar falls like a squared cosine, so far less of the schedule is spent at near-pure noise than
    with the linear schedule. ``s = 0.008`` keeps beta_1 from being tiny; betas are clipped at 0.999.
    Equal (to float32 precision) to diffusers' ``beta_schedule="squaredcos_cap_v2"``.
    ``beta_start`` / ``beta_end`` are ignored (the schedule has no range).
    """
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return betas_from_alpha_bar(cosine_alpha_bar(t, s), max_beta)


def sigmoid_alpha_bar(
    t: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models", Algorithm 1 (``sigmoid_schedule``).

    ``(sigmoid(end / tau) - sigmoid((t * (end - start) + start) / tau)) / (sigmoid(end / tau) - sigmoid(start / tau))``
    """
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    return (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)


def sigmoid(
    num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS,
    beta_start: float | None = None,
    beta_end: float | None = None,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """The sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1, start=-3, end=3, tau=1), float64 (T,).

    alpha_bar follows a sigmoid of t, flatter at both ends than the cosine: more steps at low noise, which
    Chen (2023) finds better for larger images. ``tau`` sets its steepness (Chen also uses 0.7, 0.9, 1.1);
    register a variant with ``functools.partial(sigmoid, tau=0.9)``. Betas are clipped at 0.999.
    ``beta_start`` / ``beta_end`` are ignored.
    """
    if not end > start or tau <= 0:
        raise ValueError(
            f"sigmoid schedule needs end > start and tau > 0, got start={start}, end={end}, tau={tau}"
        )
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return betas_from_alpha_bar(sigmoid_alpha_bar(t, start, end, tau), max_beta)


@hookimpl
def register_schedules(register):
    register("cosine", cosine)
    register("sigmoid", sigmoid)
