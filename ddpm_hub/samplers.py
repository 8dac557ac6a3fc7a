"""Samplers: the scheduler used at generation time, built from the training scheduler's config.

``make_sampler(name, scheduler)`` looks ``name`` up in the sampler registry (core: ``ddpm``, ``ddpm-seed``,
``ddim``, ``dpm-solver++``, ``sde-dpm-solver++``; plugins add more) and builds a scheduler with the same betas.

Why ``ddpm`` clips x_0 and ``ddpm-seed`` does not: the seed's 512-step loop clamps only the final image. On a
well-trained model that is fine, but a small or half-trained model's chain runs away: a base_channels 8
model after 5,000 steps (loss 0.026) drifts to |x| = 26 and gives 14 of 16 solid black or white tiles. So
``ddpm``, the default generation path (``pipe()`` without a sampler, ``ddpm-hub sample``, training's final
grid, the Space), clamps the predicted x_0 to [-1, 1] at every step, as diffusers' ``DDPMScheduler`` does by
default (``clip_sample=True``); ``ddpm-seed`` is the seed's exact loop (``clip_sample=False``), kept for
reproducing it and for comparing with ``DDPMPipeline`` on a non-clipping scheduler.

Why the few-step samplers clip x_0: with the T-scaled range alpha_bar_T is about 4e-5, so the x_0 that a
sampler predicts at high t is the model's noise error amplified about 1/sqrt(4e-5) = 160 times. Over
512 small steps a well-trained model's chain recovers from it; a 20- or 50-step sampler copied from a
non-clipping config saturates. So ``ddim`` clips x_0 to [-1, 1] and ``dpm-solver++`` thresholds it, and
both use "trailing" timestep spacing so that the first step starts at t = T-1 (Lin et al. 2023).

What limits the deterministic samplers (``ddim``, ``dpm-solver++``) on a briefly trained model is the ODE,
not clipping, spacing or step count: on the seed's noise-predicting model (benchmarks/README.md, "Every core
sampler on the bundled default model") unclipped DDIM is as bad at 200 steps as at 50 (grey grounds), and the
same 50 steps with fresh noise at each step (eta = 1, the ancestral chain) match the 512-step chain. A model
that predicts v (Salimans & Ho 2022; the default config since then) has a far better ODE: the same solvers
halve their Frechet distance. The stochastic samplers (``ddpm``, ``sde-dpm-solver++``) stay the quality
defaults. ``min_steps`` of each sampler is the fewest steps that still give digits (measured on the
noise-predicting model; one step of any sampler is the x_0 predicted from pure noise).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .hookspecs import hookimpl
from .plugins import Entry, PluginError, get_sampler, provider, set_smoke_check
from .scheduler import DDPMHubScheduler

#: beta_schedule names that diffusers' schedulers compute themselves
DIFFUSERS_SCHEDULES = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"}


def _diffusers_config(config: dict[str, Any], betas: torch.Tensor) -> dict[str, Any]:
    """A config any diffusers scheduler accepts; schedules diffusers does not compute travel as trained_betas.

    A ddpm-hub scheduler's ``beta_schedule`` names an entry of ddpm-hub's registry, which may share a name
    with a different diffusers schedule (diffusers' ``sigmoid`` is GeoDiff's, the plugin's is Chen 2023's),
    so only ``linear`` (the same formula, with the resolved range in the config) is left to diffusers.
    """
    from_ddpm_hub = config.get("_class_name") == DDPMHubScheduler.__name__
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    schedule = config.get("beta_schedule", "linear")
    foreign = schedule != "linear" if from_ddpm_hub else schedule not in DIFFUSERS_SCHEDULES
    if config.get("trained_betas") is None and foreign:
        config["trained_betas"] = betas.tolist()
    return config


def ddpm(config: dict[str, Any], betas: torch.Tensor) -> SchedulerMixin:
    """Ancestral sampling with the posterior variance over all T steps, x_0 clipped to [-1, 1] at each step.

    A ddpm-hub config gives a ``DDPMHubScheduler`` with ``clip_sample=True`` (diffusers' ``DDPMScheduler``
    default); a stock diffusers config (for example google/ddpm-cifar10-32's) keeps diffusers'
    ``DDPMScheduler`` with its own variance and clipping.
    """
    if config.get("_class_name") == DDPMHubScheduler.__name__:
        return DDPMHubScheduler.from_config(config, clip_sample=True)
    return DDPMScheduler.from_config(_diffusers_config(config, betas))


def ddpm_seed(config: dict[str, Any], betas: torch.Tensor) -> SchedulerMixin:
    """The seed's exact reverse loop: posterior variance, x_0 never clipped (only the final image is clamped).

    Diverges on small or under-trained models (see the module docstring); the pipeline warns when it does.
    """
    if config.get("_class_name") == DDPMHubScheduler.__name__:
        return DDPMHubScheduler.from_config(config, clip_sample=False)
    return DDPMScheduler.from_config(
        _diffusers_config(config, betas), clip_sample=False, variance_type="fixed_small"
    )


class ClippedDDIMScheduler(DDIMScheduler):
    """diffusers' ``DDIMScheduler`` whose ``step`` goes to the next listed timestep and re-derives the noise from
    the clipped x_0 by default.

    - diffusers' ``DDIMScheduler.step`` steps from t to ``t - T // num_inference_steps``, which is the next
      listed timestep only with ``leading`` spacing or a step count that divides T (diffusers issues #9261,
      #11347, #12633). With this sampler's ``trailing`` spacing and the seed's T=512 the listed timesteps are
      ``T / steps`` apart (10.24 at 50 steps, 2.56 at 200), so each step lands on a noise level up to a third
      lower than the next model call assumes; the noise left over piles up into speckled grounds, worse the more
      steps (on the bundled model fd 30 at 50 steps, 97 at 200; benchmarks/README.md). Here every step goes
      to the next entry of ``timesteps`` (``-1``, i.e. ``final_alpha_cumprod``, after the last), as
      ``DDPMScheduler.previous_timestep`` does.
    - plain ``DDIMScheduler.step`` clips x_0 but keeps the model's unclipped noise, so x_{t-1} mixes an x_0 and
      a noise that no longer describe the same x_t; here ``use_clipped_model_output=True`` (GLIDE's choice,
      diffusers' own option) is the default. Passing ``eta`` or ``use_clipped_model_output`` to ``step`` still
      overrides both; with eta=0 the sampler is deterministic as DDIM is.

    Everything else is diffusers' step formula (Song et al. 2021, eq. 12), unchanged.
    """

    def previous_timestep(self, timestep) -> int:
        """The timestep after ``timestep`` in ``self.timesteps``; -1 after the last one."""
        later = (self.timesteps < int(timestep)).nonzero()
        return int(self.timesteps[later[0, 0]]) if len(later) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = True,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step: the number of inference steps is not set")
        prev_timestep = self.previous_timestep(timestep)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        if self.config.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        elif self.config.prediction_type == "v_prediction":
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        else:
            raise ValueError(
                f"prediction_type {self.config.prediction_type!r} must be epsilon, sample or v_prediction"
            )
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(
                -self.config.clip_sample_range, self.config.clip_sample_range
            )
        std_dev_t = eta * self._get_variance(timestep, prev_timestep) ** 0.5
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        prev_sample = (
            alpha_prod_t_prev**0.5 * pred_original_sample
            + (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        )
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
            prev_sample = prev_sample + std_dev_t * variance_noise
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


def ddim(config: dict[str, Any], betas: torch.Tensor) -> SchedulerMixin:
    """DDIM (Song et al. 2021), deterministic (eta=0), x_0 clipped to [-1, 1] and the noise re-derived from it.

    Each step goes to the next listed timestep (``ClippedDDIMScheduler``; diffusers' own step misses it with
    trailing spacing at T=512 and left speckled grounds that grew with the step count). On a briefly trained
    model the deterministic probability-flow ODE is further from the data than the stochastic chain: on the
    seed's noise-predicting default model unclipped DDIM scored fd 250 at 50 steps; clipping and re-deriving the
    noise from the clipped x_0 took diffusers' default DDIM step from fd 124 to 79; v-prediction and the
    default's log-SNR-normal training timesteps bring it to about 1.2x the chain's fd (benchmarks/README.md,
    "Every core sampler on the bundled default model").
    For the best images in few steps use ``sde-dpm-solver++``; ``ddim`` is for a deterministic map from noise
    to image (same noise, same image, at any step count).
    """
    return ClippedDDIMScheduler.from_config(
        _diffusers_config(config, betas),
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def dpm_solver_pp(config: dict[str, Any], betas: torch.Tensor) -> SchedulerMixin:
    """DPM-Solver++ (Lu et al. 2022), 2nd order multistep, x_0 thresholded to [-1, 1]."""
    return DPMSolverMultistepScheduler.from_config(
        _diffusers_config(config, betas),
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
        dynamic_thresholding_ratio=0.995,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
    )


def sde_dpm_solver_pp(config: dict[str, Any], betas: torch.Tensor) -> SchedulerMixin:
    """``dpm-solver++`` for the reverse SDE instead of the ODE (SDE-DPM-Solver++(2M), Lu et al. 2022).

    Each step adds fresh noise (from the pipeline's generator, so a seed still fixes the images), as the
    seed's ancestral loop does; that noise washes out the model's errors instead of carrying them along the
    deterministic ODE path. On the default 1000-step model, at 20 steps: classifier fd 30.6 against 68.8 for
    the ODE solver and 29.4 for the 512-step chain (N = 500, two seeds; benchmarks/README.md).
    """
    return DPMSolverMultistepScheduler.from_config(
        dpm_solver_pp(config, betas).config, algorithm_type="sde-dpmsolver++"
    )


#: the T of the ddpm-hub config a plugin's sampler is first built from
SMOKE_TIMESTEPS = 100


def check_sampler_factory(entry: Entry) -> None:
    """The first-use check of a plugin's sampler (``ddpm_hub.plugins.smoke_check``): build it from a small
    ddpm-hub config (T=100), set its default steps and take one step; :class:`PluginError` naming the plugin
    if any of it fails."""
    T = SMOKE_TIMESTEPS
    training = DDPMHubScheduler(num_train_timesteps=T)
    rule = f"building it from a ddpm-hub scheduler config (T={T}) and taking one step"
    try:
        sampler = entry.obj({**training.config, "_class_name": "DDPMHubScheduler"}, training.betas.clone())
        steps = min(max(entry.default_steps or 10, entry.min_steps), T)
        sampler.set_timesteps(steps)
        timesteps = sampler.timesteps
        sample = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        model_input = sampler.scale_model_input(sample, timesteps[0])
        prev = sampler.step(torch.zeros_like(sample), timesteps[0], sample).prev_sample
    except Exception as exc:
        raise PluginError(
            f"{entry.who()}: its sampler {entry.name!r} fails {rule}: {' '.join(f'{type(exc).__name__}: {exc}'.split())}"
        ) from exc
    if not len(timesteps):
        raise PluginError(f"{entry.who()}: its sampler {entry.name!r} set no timesteps for {steps} steps")
    for what, value in (("scale_model_input", model_input), ("step(...).prev_sample", prev)):
        if not isinstance(value, torch.Tensor) or value.shape != sample.shape:
            raise PluginError(
                f"{entry.who()}: its sampler's {what} gave {type(value).__name__} "
                f"{tuple(getattr(value, 'shape', ()))} for a {tuple(sample.shape)} sample"
            )


set_smoke_check("samplers", check_sampler_factory)


def make_sampler(name: str, scheduler: SchedulerMixin) -> SchedulerMixin:
    """Build the sampler ``name`` with the same betas as ``scheduler`` (a training scheduler)."""
    entry = provider("samplers", name)
    factory = get_sampler(name)  # a plugin's is checked on its first use
    betas = torch.as_tensor(scheduler.betas, dtype=torch.float64)
    try:
        return factory({**scheduler.config, "_class_name": type(scheduler).__name__}, betas)
    except Exception as exc:
        if entry.builtin:
            raise
        raise PluginError(
            f"{entry.who()}: its sampler {name!r} fails to build from this model's scheduler config: "
            + " ".join(f"{type(exc).__name__}: {exc}".split())
        ) from exc


def resolve_steps(name: str, steps: Any, num_train_timesteps: int) -> int:
    """The number of inference steps for the sampler ``name``: its default when ``steps`` is None, else
    ``steps`` checked to be an integer within [the sampler's ``min_steps``, T].

    Steps above T are an error rather than a cap: a sampler cannot visit more timesteps than the model was
    trained on (diffusers' DPM-Solver++ returns NaN images there), and a silent cap would hide a typo.
    """
    entry = provider("samplers", name)
    T = int(num_train_timesteps)
    if steps is None:
        return min(entry.default_steps or T, T)
    if isinstance(steps, bool) or not isinstance(steps, int):
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        else:
            raise ValueError(f"num_inference_steps must be a whole number, got {steps!r}")
    low = min(entry.min_steps, T)
    if not low <= steps <= T:
        raise ValueError(
            f"the {name} sampler takes between {low} and {T} steps for this model (T={T}), got {steps}; "
            f"its default is {min(entry.default_steps or T, T)}"
        )
    return steps


@hookimpl
def register_samplers(register):
    # min_steps: the fewest steps whose images are still digits on the default model (classifier fd at most
    # 2.5x the 512-step chain's, N = 200; benchmarks/README.md, "Minimum steps" under
    # "Every core sampler on the bundled default model"); one step of any of them is
    # the x_0 predicted from pure noise, which is noise
    register("ddpm", ddpm, default_steps=None, min_steps=12)
    register("ddpm-seed", ddpm_seed, default_steps=None, min_steps=12)
    register("ddim", ddim, default_steps=50, min_steps=8)
    register("dpm-solver++", dpm_solver_pp, default_steps=20, min_steps=5)
    register("sde-dpm-solver++", sde_dpm_solver_pp, default_steps=20, min_steps=6)
