"""DDPMHubScheduler: the seed's derived variables and reverse step as a diffusers scheduler.

Seed sections: "Derived Variables" (alpha, alpha_bar, sqrt_alpha_bar, sqrt_one_minus_alpha_bar),
"Add noise to images" (``add_noise``, Ho et al. 2020 eq. 4) and "IMAGE GENERATION" (``step``: eq. 11 for
the mean, eq. 7 for the posterior variance). Config keys are named as in diffusers' ``DDPMScheduler``, so
``DDIMScheduler.from_config(s.config)`` and ``DDPMScheduler.from_config(s.config)`` work.

The schedule tables are float64 tensors held by the scheduler (never by the model, so an EMA of the
model never averages them); they are cast to the sample's dtype and device where used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .schedules import check_betas, default_beta_range

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class DDPMHubSchedulerOutput(BaseOutput):
    """Output of ``DDPMHubScheduler.step``.

    prev_sample: x_{t-1}, shape (B, C, H, W).
    pred_original_sample: the predicted x_0 at this step, shape (B, C, H, W).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDPMHubScheduler(SchedulerMixin, ConfigMixin):
    """Ancestral DDPM sampling with the posterior variance ("fixed_small"), on any registered beta schedule.

    Args:
        num_train_timesteps: T, the number of diffusion steps (seed: ``n_steps = 512``).
        beta_start, beta_end: ends of the schedule's range. ``None`` means the 1000/T-scaled range
            ``(1e-4 * 1000 / T, 0.02 * 1000 / T)`` (see ``ddpm_hub.schedules``); the resolved numbers are
            written back to the config so that other diffusers schedulers built from it use the same betas.
        beta_schedule: the name of a registered schedule (core: ``linear``; plugins add more).
        trained_betas: explicit betas; overrides ``beta_schedule``.
        variance_type: only ``fixed_small`` (the seed's posterior variance); kept for diffusers compatibility.
        clip_sample, clip_sample_range: clamp the predicted x_0 at each step (off in the seed, which
            clamps only the final image).
        prediction_type: what the model predicts: ``epsilon`` (the seed), ``v_prediction`` or ``sample``.
        timestep_spacing, steps_offset: how ``set_timesteps`` picks fewer steps than T, as in diffusers.
    """

    _compatibles = [
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 512,
        beta_start: float | None = None,
        beta_end: float | None = None,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not supported; use one of {PREDICTION_TYPES}"
            )
        if variance_type != "fixed_small":
            raise ValueError(
                f"variance_type {variance_type!r} is not supported; DDPMHubScheduler samples with the posterior "
                "variance, variance_type='fixed_small'"
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {timestep_spacing!r} is not supported; use one of {TIMESTEP_SPACINGS}"
            )

        if trained_betas is not None:
            betas = check_betas(torch.tensor(trained_betas, dtype=torch.float64), "trained_betas")
            if betas.numel() != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {betas.numel()} values but num_train_timesteps is {num_train_timesteps}"
                )
        else:
            from .plugins import schedule_betas

            if beta_schedule == "linear" and (beta_start is None or beta_end is None):
                default_start, default_end = default_beta_range(num_train_timesteps)
                beta_start = default_start if beta_start is None else beta_start
                beta_end = default_end if beta_end is None else beta_end
                self.register_to_config(beta_start=beta_start, beta_end=beta_end)
            # checked there; bad betas from a plugin's schedule name the plugin, not this config
            betas = schedule_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)

        # Seed, "Derived Variables" (all float64, shape (T,))
        self.betas = betas
        self.alphas = 1.0 - betas  # alpha: signal kept at each step
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()  # sqrt_alpha_bar
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()  # sqrt_one_minus_alpha_bar
        self.sqrt_one_over_alphas = (1.0 / self.alphas).sqrt()  # sqrt_one_over_alpha
        alphas_cumprod_prev = torch.nn.functional.pad(self.alphas_cumprod[:-1], (1, 0), value=1.0)
        # Ho et al. eq. 7: beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

        # Every value of this config is meaningful to other schedulers built from it (T=512 and the
        # T-scaled betas differ from diffusers' defaults), so none may be dropped as "a default was used".
        self.register_to_config(_use_default_values=[])

        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self._table_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # The seed's names, for readers following it line by line.
    alpha = property(lambda self: self.alphas)
    beta = property(lambda self: self.betas)
    alpha_bar = property(lambda self: self.alphas_cumprod)
    sqrt_one_over_alpha = property(lambda self: self.sqrt_one_over_alphas)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM needs no input scaling; present for interchangeability with other schedulers."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the timesteps of the reverse chain.

        ``None`` (the default) gives all T steps, the seed's ``for ts in range(0, T)[::-1]``. Fewer steps use
        ``timestep_spacing`` as diffusers does; each step then jumps from t to the next listed timestep
        with the effective beta ``1 - alpha_bar_t / alpha_bar_prev``. ``timesteps`` gives a custom
        descending list.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if any(b >= a for a, b in zip(ts, ts[1:], strict=False)) or not ts or ts[0] >= T or ts[-1] < 0:
                raise ValueError(
                    f"timesteps must be strictly descending integers in [0, {T - 1}], got {ts[:5]}..."
                )
            self.timesteps = torch.tensor(ts, dtype=torch.long, device=device)
            self.num_inference_steps = len(ts)
            return
        n = T if num_inference_steps is None else num_inference_steps
        if not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(
                f"num_inference_steps must be an integer between 1 and num_train_timesteps={T}, got {n!r}"
            )
        spacing = self.config.timestep_spacing
        if spacing == "leading":
            ts = (torch.arange(n) * (T // n)).flip(0) + self.config.steps_offset
        elif spacing == "trailing":
            ts = torch.arange(T, 0, -T / n).round().long() - 1
        else:  # linspace
            ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0)
        self.timesteps = ts.clamp(0, T - 1).to(dtype=torch.long, device=device)
        self.num_inference_steps = n

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in the current chain (``-1`` after the last one)."""
        if self.num_inference_steps is None:
            return int(timestep) - 1
        later = (self.timesteps < int(timestep)).nonzero()
        return int(self.timesteps[later[0, 0]]) if len(later) else -1

    def _check_timesteps(self, timesteps: torch.Tensor) -> None:
        T = self.config.num_train_timesteps
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
            raise ValueError(
                f"timesteps must be in [0, {T - 1}] (num_train_timesteps={T}); got values in "
                f"[{int(timesteps.min())}, {int(timesteps.max())}]"
            )

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt_alpha_bar and sqrt_one_minus_alpha_bar on ``device`` in ``dtype`` (cached for the training loop)."""
        key = (device, dtype)
        if key not in self._table_cache:
            self._table_cache[key] = (
                self.sqrt_alphas_cumprod.to(device=device, dtype=dtype),
                self.sqrt_one_minus_alphas_cumprod.to(device=device, dtype=dtype),
            )
        return self._table_cache[key]

    @staticmethod
    def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Reshape a (B,) tensor to (B, 1, 1, ...) to broadcast over a sample like ``like``."""
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The forward process q(x_t | x_0) (Ho et al. eq. 4; seed: "Add noise to images").

        ``x_t = sqrt_alpha_bar[t] * x_0 + sqrt_one_minus_alpha_bar[t] * noise``; x_0 and noise (B, C, H, W),
        timesteps (B,) or a scalar.
        """
        timesteps = torch.as_tensor(timesteps, device=original_samples.device).long()
        self._check_timesteps(timesteps)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar = self._tables(
            original_samples.device, original_samples.dtype
        )
        a = self._per_sample(sqrt_alpha_bar[timesteps].reshape(-1), original_samples)
        s = self._per_sample(sqrt_one_minus_alpha_bar[timesteps].reshape(-1), original_samples)
        return a * original_samples + s * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target ``v = sqrt_alpha_bar * noise - sqrt_one_minus_alpha_bar * x_0``."""
        timesteps = torch.as_tensor(timesteps, device=sample.device).long()
        self._check_timesteps(timesteps)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar = self._tables(sample.device, sample.dtype)
        a = self._per_sample(sqrt_alpha_bar[timesteps].reshape(-1), sample)
        s = self._per_sample(sqrt_one_minus_alpha_bar[timesteps].reshape(-1), sample)
        return a * noise - s * sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMHubSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_{t-1} (seed: "Denoising step").

        ``x_{t-1} = sqrt_one_over_alpha_t * (x_t - beta_t / sqrt_one_minus_alpha_bar_t * eps) + sqrt(var_t) * z``
        (Ho et al. eq. 11), with var_t the posterior variance (eq. 7) and z ~ N(0, I) drawn after the model
        call and not at t=0, exactly as diffusers' DDPMScheduler draws it. With fewer inference steps than
        T, alpha_t is the effective ``alpha_bar_t / alpha_bar_prev``. model_output and sample: (B, C, H, W).
        """
        t = int(timestep)
        T = self.config.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(
                f"timestep {t} is out of range: must be in [0, {T - 1}] (num_train_timesteps={T})"
            )
        prev_t = self.previous_timestep(t)

        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.alphas_cumprod.new_tensor(1.0)
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1.0 - alpha_t
        variance = beta_t * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)  # eq. 7

        dtype = sample.dtype
        sqrt_alpha_bar_t = alpha_bar_t.sqrt().to(dtype)
        sqrt_one_minus_alpha_bar_t = (1.0 - alpha_bar_t).sqrt().to(dtype)

        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            eps = model_output
            pred_original_sample = (sample - sqrt_one_minus_alpha_bar_t * eps) / sqrt_alpha_bar_t
        elif prediction_type == "sample":
            pred_original_sample = model_output
            eps = (sample - sqrt_alpha_bar_t * pred_original_sample) / sqrt_one_minus_alpha_bar_t
        else:  # v_prediction
            pred_original_sample = sqrt_alpha_bar_t * sample - sqrt_one_minus_alpha_bar_t * model_output
            eps = sqrt_alpha_bar_t * model_output + sqrt_one_minus_alpha_bar_t * sample

        if self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-r, r)
            eps = (sample - sqrt_alpha_bar_t * pred_original_sample) / sqrt_one_minus_alpha_bar_t

        # eq. 11: mu = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps)
        prev_sample = (1.0 / alpha_t).sqrt().to(dtype) * (
            sample - (beta_t / (1.0 - alpha_bar_t).sqrt()).to(dtype) * eps
        )
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            prev_sample = prev_sample + variance.sqrt().to(dtype) * noise

        if not return_dict:
            return prev_sample, pred_original_sample
        return DDPMHubSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
