"""Beta schedules (seed: "1. Setup and Noise Schedule").

A schedule is a function ``(num_train_timesteps, **kwargs) -> betas`` returning a float64 tensor of
shape ``(T,)``. Core ships ``linear``; plugins add more through the ``register_schedules`` hook.

Why the default range is scaled by 1000/T: Ho et al. use beta in [1e-4, 0.02] at T=1000, which leaves
sqrt(alpha_bar_T) = 0.0064 of the image at the last step. The seed uses T=512; with the unscaled range
sqrt(alpha_bar_T) = 0.075, so 7.5% of the image survives at t=T and sampling would start from pure
noise, a distribution the model never saw. Scaling both ends by 1000/T (beta in [1.95e-4, 0.039] at
T=512) keeps the total noise about the same as at T=1000: sqrt(alpha_bar_T) = 0.0061 at T=512. Pass
``beta_start=1e-4, beta_end=0.02`` to get the seed's literal betas.

Small T: the scaling rests on sum(beta) ~ -log(alpha_bar_T), which holds only while the betas are small;
below T=100 the scaled beta_end passes 0.2 (ten times Ho's largest beta), at T <= 20 it reaches 1 (an
invalid schedule) and at T=1 the one beta is 0.1 (5% of the image noised). So for T < 100 the default is
the linear range with Ho's start:end ratio (1:200) whose terminal signal sqrt(alpha_bar_T) is exactly Ho's
0.0064 (solved numerically; at T=1 the one beta is 1 - 0.0064^2). T >= 100 keeps the 1000/T-scaled range.
"""

from __future__ import annotations

import math

import torch

from .hookspecs import hookimpl
from .plugins import PluginError, provider, smoke_check

#: T, the number of diffusion steps, when none is given (the seed's ``n_steps = 512``); the scheduler, the
#: training config and the schedules take their default from here
DEFAULT_NUM_TRAIN_TIMESTEPS = 512

#: Ho et al.'s range at T=1000; the default range at T is this times 1000/T.
REFERENCE_BETA_START = 1e-4
REFERENCE_BETA_END = 0.02
REFERENCE_TIMESTEPS = 1000
#: the scaled range is the default while its beta_end stays at or below this (T >= 100)
SCALED_RANGE_MAX_BETA_END = 0.2


def reference_alpha_bar_T() -> float:
    """alpha_bar_T of Ho et al.'s range at T=1000 (4.04e-5; sqrt: 0.0064), the target for small T."""
    betas = torch.linspace(REFERENCE_BETA_START, REFERENCE_BETA_END, REFERENCE_TIMESTEPS, dtype=torch.float64)
    return float(torch.prod(1.0 - betas))


def default_beta_range(num_train_timesteps: int) -> tuple[float, float]:
    """The default linear range at T (see the module docstring for the rule).

    T >= 100: ``(1e-4 * 1000 / T, 0.02 * 1000 / T)``. T < 100: ``(beta_end / 200, beta_end)`` with
    alpha_bar_T = Ho et al.'s (sqrt: 0.0064); at T=1 both ends are the one beta, ``1 - alpha_bar_T``.
    """
    T = int(num_train_timesteps)
    if T < 1:
        raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
    scale = REFERENCE_TIMESTEPS / T
    start, end = REFERENCE_BETA_START * scale, REFERENCE_BETA_END * scale
    if end <= SCALED_RANGE_MAX_BETA_END:
        return start, end
    target = reference_alpha_bar_T()
    if T == 1:
        return 1.0 - target, 1.0 - target
    ratio = REFERENCE_BETA_START / REFERENCE_BETA_END
    log_target = math.log(target)
    low, high = 0.0, 1.0  # alpha_bar_T(beta_end) falls from 1 to 0 on this interval: bisect
    for _ in range(200):
        mid = (low + high) / 2
        betas = torch.linspace(ratio * mid, mid, T, dtype=torch.float64)
        if float(torch.log1p(-betas).sum()) > log_target:
            low = mid
        else:
            high = mid
    return ratio * low, low


def linear(
    num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> torch.Tensor:
    """The seed's schedule: ``beta = linspace(start, end, n_steps)``, in float64."""
    default_start, default_end = default_beta_range(num_train_timesteps)
    beta_start = default_start if beta_start is None else beta_start
    beta_end = default_end if beta_end is None else beta_end
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def check_betas(betas: torch.Tensor, name: str) -> torch.Tensor:
    """Validate what a schedule returned: 1-D, finite, every beta strictly inside (0, 1)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(
            f"schedule {name!r} returned betas of shape {tuple(betas.shape)}; expected (T,) with T >= 1"
        )
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
        bad = betas[~((betas > 0) & (betas < 1))]
        raise ValueError(
            f"schedule {name!r} gives betas outside (0, 1) (for example {bad[:3].tolist()}); every beta must be "
            "strictly between 0 and 1: check beta_start and beta_end"
        )
    return betas


@hookimpl
def register_schedules(register):
    register("linear", linear)


def schedule_betas(
    name: str, num_train_timesteps: int, beta_start: float | None, beta_end: float | None
) -> torch.Tensor:
    """The betas of the registered schedule ``name`` for T steps, checked with :func:`check_betas`.

    A plugin's schedule is first run at small T (``ddpm_hub.plugins.smoke_check``). Bad betas from a plugin's
    schedule with ``beta_start``/``beta_end`` unset are the plugin's fault: the error names the plugin and its
    distribution, not the user's config; with a range the config set, the config is named.
    """
    entry = provider("schedules", name)
    smoke_check("schedules", entry)
    range_set = beta_start is not None or beta_end is not None
    try:
        betas = check_betas(entry.obj(num_train_timesteps, beta_start=beta_start, beta_end=beta_end), name)
    except Exception as exc:
        if entry.builtin or (range_set and isinstance(exc, ValueError)):
            raise
        detail = " ".join(str(exc).split(": check beta_start and beta_end")[0].split())
        raise PluginError(
            f"{entry.who()}: its schedule {name!r} gives bad betas for num_train_timesteps={num_train_timesteps} "
            f"(beta_start={beta_start}, beta_end={beta_end}, so this is the plugin's fault, not the config's): "
            f"{type(exc).__name__}: {detail}"
        ) from exc
    if betas.numel() != num_train_timesteps:
        raise ValueError(
            f"schedule {name!r} returned {betas.numel()} betas for num_train_timesteps={num_train_timesteps}"
        )
    return betas
