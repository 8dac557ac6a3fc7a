"""DDPMHubScheduler: the seed's derived variables and reverse step as a diffusers scheduler.

Seed sections: "Derived Variables" (alpha, alpha_bar, sqrt_alpha_bar, sqrt_one_minus_alpha_bar),
"Add noise to images" (``add_noise``, Ho et al. 2020 eq. 4) and "IMAGE GENERATION" (``step``: eq. 11 for
the mean, eq. 7 for the posterior variance). Config keys are named as in diffusers' ``DDPMScheduler``, so
``DDIMScheduler.from_config(s.config)`` and ``DDPMScheduler.from_config(s.config)`` work.

The scheduler is the one owner of the method's maths (as diffusers' schedulers and lucidrains'
``GaussianDiffusion`` are): noising (``add_noise``), the training target of each ``prediction_type``
(``get_target``), the min-SNR loss weights (``loss_weights``), and x_0 or the noise implied by a model
output (``predict_original_sample``, ``predict_noise``). The training loop, the pipeline, the model card and
the Space call these. A new prediction type is one more entry of :data:`PREDICTION_TYPES`.

The schedule tables are float64 tensors held by the scheduler (never by the model, so an EMA of the
model never averages them); they are cast to the sample's dtype and device where used.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .schedules import DEFAULT_NUM_TRAIN_TIMESTEPS, check_betas, default_beta_range, schedule_betas

Tensor = torch.Tensor


@dataclass(frozen=True)
class PredictionType:
    """What a model trained with one ``prediction_type`` outputs, in terms of x_t = a x_0 + s noise.

    ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)`` (broadcast per sample), ``snr = a^2 / s^2``.
    """

    #: what the model predicts, for the model card: "the MSE of the predicted {description}"
    description: str
    #: (x_0, noise, a, s) -> the training target
    target: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    #: (model_output, x_t, a, s) -> the x_0 it implies
    original_sample: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    #: (model_output, x_t, a, s) -> the noise it implies
    noise: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    #: snr -> the SNR of the target; the min-SNR-gamma weight is min(snr, gamma) / target_snr(snr)
    target_snr: Callable[[Tensor], Tensor]


#: every supported ``prediction_type``
PREDICTION_TYPES: dict[str, PredictionType] = {
    # the seed (Ho et al. 2020): the model predicts the added noise
    "epsilon": PredictionType(
        description="added noise (the DDPM paper's objective)",
        target=lambda x0, noise, a, s: noise,
        original_sample=lambda out, x, a, s: (x - s * out) / a,
        noise=lambda out, x, a, s: out,
        target_snr=lambda snr: snr,
    ),
    # Salimans & Ho 2022: v = a * noise - s * x_0
    "v_prediction": PredictionType(
        description="velocity v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x_0 (v-prediction)",
        target=lambda x0, noise, a, s: a * noise - s * x0,
        original_sample=lambda out, x, a, s: a * x - s * out,
        noise=lambda out, x, a, s: a * out + s * x,
        target_snr=lambda snr: snr + 1,
    ),
    # the model predicts the clean image itself
    "sample": PredictionType(
        description="clean image x_0",
        target=lambda x0, noise, a, s: x0,
        original_sample=lambda out, x, a, s: out,
        noise=lambda out, x, a, s: (x - a * out) / s,
        target_snr=lambda snr: torch.ones_like(snr),
    ),
}


def prediction_type_of(config) -> PredictionType:
    """The :class:`PredictionType` of a scheduler config (diffusers' default ``epsilon`` when it has none)."""
    name = config.get("prediction_type", "epsilon")
    if name not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {name!r} is not supported; use one of {tuple(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[name]


def original_sample(scheduler, model_output: Tensor, timestep, sample: Tensor) -> Tensor:
    """x_0 implied by ``model_output`` at ``timestep``, for any diffusers scheduler with ``alphas_cumprod``.

    For samplers whose ``step`` does not return it (DPM-Solver++); model_output and sample (B, C, H, W).
    """
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod)[int(timestep)].to(sample.device, sample.dtype)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return prediction_type_of(scheduler.config).original_sample(model_output, sample, a, s)


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
        beta_start, beta_end: ends of the schedule's range. ``None`` means the default range,
            ``ddpm_hub.schedules.default_beta_range(T)``: ``(1e-4 * 1000 / T, 0.02 * 1000 / T)`` for T >= 100,
            and for smaller T the range that keeps Ho et al.'s sqrt(alpha_bar_T) = 0.0064; the resolved numbers are
            written back to the config so that other diffusers schedulers built from it use the same betas.
        beta_schedule: the name of a registered schedule (core: ``linear``; plugins add more).
        trained_betas: explicit betas; overrides ``beta_schedule``.
        variance_type: only ``fixed_small`` (the seed's posterior variance); kept for diffusers compatibility.
        clip_sample, clip_sample_range: clamp the predicted x_0 at each step (off in the seed, which
            clamps only the final image).
        prediction_type: what the model predicts: ``epsilon`` (the seed), ``v_prediction`` or ``sample``.
        timestep_spacing, steps_offset: how ``set_timesteps`` picks fewer steps than T, as in diffusers.
        rescale_betas_zero_snr: only ``False``. Zero terminal SNR (Lin et al. 2023) makes alpha_T = 0, and the
            seed's reverse step (Ho et al. eq. 11) divides by sqrt(alpha_t); a config that asks for it is
            refused rather than sampled with other betas than the ones it names.

    A schedule that diffusers' schedulers cannot compute (any registered one but ``linear``, such as a plugin's
    ``cosine``) is also recorded as ``trained_betas``, so that ``DDIMScheduler.from_config(s.config)`` works
    and a saved folder holds its exact betas. ``from_config`` of another diffusers scheduler's config keeps
    that scheduler's T and betas (see ``extract_init_dict``).
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
        num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS,
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
        rescale_betas_zero_snr: bool = False,
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not supported; use one of {tuple(PREDICTION_TYPES)}"
            )
        if variance_type != "fixed_small":
            raise ValueError(
                f"variance_type {variance_type!r} is not supported; DDPMHubScheduler samples with the posterior "
                "variance, variance_type='fixed_small'"
            )
        if rescale_betas_zero_snr:
            raise ValueError(
                "rescale_betas_zero_snr=True (zero terminal SNR, Lin et al. 2023) is not supported by "
                "DDPMHubScheduler: it makes alpha_T = 0, where the seed's reverse step divides by sqrt(alpha_t). "
                "Use diffusers' DDPMScheduler or DDIMScheduler for this config, or set it to False"
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
            if beta_schedule == "linear" and (beta_start is None or beta_end is None):
                default_start, default_end = default_beta_range(num_train_timesteps)
                beta_start = default_start if beta_start is None else beta_start
                beta_end = default_end if beta_end is None else beta_end
                self.register_to_config(beta_start=beta_start, beta_end=beta_end)
            # checked there; bad betas from a plugin's schedule name the plugin, not this config
            betas = schedule_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            if beta_schedule != "linear":  # diffusers cannot compute it: other schedulers read the betas
                self.register_to_config(trained_betas=betas.tolist())

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

        # Every value of this config is meaningful to other schedulers built from it (the default T and the
        # T-scaled betas differ from diffusers' defaults), so none may be dropped as "a default was used".
        self.register_to_config(_use_default_values=[])

        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        # (device, dtype) -> (sqrt_alpha_bar, sqrt_one_minus_alpha_bar, alpha_bar), see _tables
        self._table_cache: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    #: config keys whose values another diffusers scheduler's config keeps even where it left them at that
    #: class's defaults (T=1000 and 1e-4..0.02 for DDPMScheduler, not ddpm-hub's T=512 and scaled range)
    SCHEDULE_KEYS = (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
        "clip_sample",
        "clip_sample_range",
    )

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' ``extract_init_dict``, except that a config written by another scheduler class keeps its
        values of ``SCHEDULE_KEYS``: diffusers lists the keys a class left at its defaults in
        ``_use_default_values`` and drops them, which would fill them with ddpm-hub's defaults. A
        ``beta_schedule`` that only diffusers computes (``scaled_linear``, ``squaredcos_cap_v2``, its
        ``sigmoid``) arrives as the ``trained_betas`` diffusers' ``DDPMScheduler`` makes from it."""
        config_dict = dict(config_dict)
        own_keys = set(inspect.signature(cls.__init__).parameters) - {"self"}
        origin = config_dict.get("_class_name")  # only a saved config has it
        if origin is None:
            foreign = any(not k.startswith("_") and k not in own_keys for k in config_dict)
        else:
            foreign = origin != cls.__name__
        if foreign:
            used_defaults = config_dict.get("_use_default_values") or []
            config_dict["_use_default_values"] = [k for k in used_defaults if k not in cls.SCHEDULE_KEYS]
            config_dict = cls._foreign_betas(config_dict, kwargs)
        return super().extract_init_dict(config_dict, **kwargs)

    @staticmethod
    def _foreign_betas(config: dict, kwargs: dict) -> dict:
        """``config`` with ``trained_betas`` computed by diffusers when its ``beta_schedule`` is not ``linear``."""
        merged = {**config, **{k: v for k, v in kwargs.items() if k in DDPMHubScheduler.SCHEDULE_KEYS}}
        schedule = merged.get("beta_schedule", "linear")
        if merged.get("trained_betas") is not None or schedule == "linear":
            return config
        options = {k: merged[k] for k in ("num_train_timesteps", "beta_start", "beta_end") if k in merged}
        try:
            betas = DDPMScheduler(beta_schedule=schedule, **options).betas
        except NotImplementedError as exc:
            raise ValueError(
                f"beta_schedule {schedule!r} of this {config.get('_class_name')} config is not a diffusers "
                "schedule; give trained_betas, or a DDPMHubScheduler config whose beta_schedule is registered"
            ) from exc
        return {**config, "trained_betas": betas.double().tolist()}

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

    def _check_timesteps(self, timesteps: Tensor) -> None:
        """Refuse timesteps outside [0, T-1] (a negative index would silently wrap around).

        On an accelerator the check is a device-side assertion, so that the training loop, which calls
        ``add_noise`` every step, never waits for the device to read a result back.
        """
        T = self.config.num_train_timesteps
        if timesteps.device.type != "cpu":
            try:
                torch._assert_async(((timesteps >= 0) & (timesteps < T)).all())
                return
            except (NotImplementedError, RuntimeError):  # a backend without it: check on the host
                pass
        if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
            raise ValueError(
                f"timesteps must be in [0, {T - 1}] (num_train_timesteps={T}); got values in "
                f"[{int(timesteps.min())}, {int(timesteps.max())}]"
            )

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(sqrt_alpha_bar, sqrt_one_minus_alpha_bar, alpha_bar) on ``device`` in ``dtype``.

        Cast from the float64 tables once per (device, dtype) and kept, so that ``add_noise``,
        ``get_target`` and ``loss_weights``, called at every training step, index a ready table.
        """
        key = (torch.device(device), dtype)
        if key not in self._table_cache:
            self._table_cache[key] = (
                self.sqrt_alphas_cumprod.to(device=device, dtype=dtype),
                self.sqrt_one_minus_alphas_cumprod.to(device=device, dtype=dtype),
                self.alphas_cumprod.to(device=device, dtype=dtype),
            )
        return self._table_cache[key]

    def _coefficients(self, timesteps, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt_alpha_bar[t], sqrt_one_minus_alpha_bar[t]) shaped (B, 1, 1, ...) to broadcast over ``like``."""
        timesteps = torch.as_tensor(timesteps, device=like.device).long()
        self._check_timesteps(timesteps)
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar, _ = self._tables(like.device, like.dtype)
        shape = (-1, *([1] * (like.ndim - 1)))
        return sqrt_alpha_bar[timesteps].reshape(shape), sqrt_one_minus_alpha_bar[timesteps].reshape(shape)

    @property
    def prediction(self) -> PredictionType:
        """The :class:`PredictionType` of this scheduler's ``prediction_type``."""
        return PREDICTION_TYPES[self.config.prediction_type]

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The forward process q(x_t | x_0) (Ho et al. eq. 4; seed: "Add noise to images").

        ``x_t = sqrt_alpha_bar[t] * x_0 + sqrt_one_minus_alpha_bar[t] * noise``; x_0 and noise (B, C, H, W),
        timesteps (B,) or a scalar.
        """
        a, s = self._coefficients(timesteps, original_samples)
        return a * original_samples + s * noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The v-prediction target ``v = sqrt_alpha_bar * noise - sqrt_one_minus_alpha_bar * x_0``."""
        a, s = self._coefficients(timesteps, sample)
        return PREDICTION_TYPES["v_prediction"].target(sample, noise, a, s)

    def get_target(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the model is trained to output for x_0 = ``sample`` noised with ``noise`` at ``timesteps``.

        ``epsilon``: the noise (the seed's ``F.mse_loss(noise, model(x_noisy, t))``); ``v_prediction``: the
        velocity (``get_velocity``); ``sample``: x_0. Shapes (B, C, H, W); timesteps (B,).
        """
        a, s = self._coefficients(timesteps, sample)
        return self.prediction.target(sample, noise, a, s)

    def snr(self, timesteps: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` of each timestep, shape (B,)."""
        timesteps = torch.as_tensor(timesteps).long()
        self._check_timesteps(timesteps)
        alpha_bar = self._tables(timesteps.device, dtype)[2][timesteps]
        return alpha_bar / (1 - alpha_bar)

    def timestep_probabilities(
        self, logsnr_mean: float, logsnr_std: float, uniform_share: float = 0.0
    ) -> Tensor:
        """Probabilities of the T training timesteps under which log SNR(t) is normal (mean, std), shape (T,).

        Each t gets the normal's mass over the log SNR interval between its neighbours (midpoints), so the
        distribution does not depend on T or the schedule's spacing; ``uniform_share`` of it is uniform.
        """
        T = self.config.num_train_timesteps
        alpha_bar = self._tables(torch.device("cpu"), torch.float64)[2]
        logsnr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)  # decreasing in t
        if not float(logsnr[-1]) <= logsnr_mean <= float(logsnr[0]):  # else nearly all draws at t=0 or T-1
            raise ValueError(
                f"the log SNR mean {logsnr_mean:g} is outside this schedule's log SNR, {float(logsnr[-1]):.1f} "
                f"(t=T-1) to {float(logsnr[0]):.1f} (t=0)"
            )
        edges = torch.cat(
            [logsnr.new_tensor([math.inf]), (logsnr[1:] + logsnr[:-1]) / 2, logsnr.new_tensor([-math.inf])]
        )
        cdf = torch.distributions.Normal(logsnr_mean, logsnr_std).cdf(edges.clamp(-1e4, 1e4))
        mass = (cdf[:-1] - cdf[1:]).clamp(min=0)
        probs = (1 - uniform_share) * mass / mass.sum() + uniform_share / T
        return probs.float()

    def loss_weights(self, timesteps: Tensor, snr_gamma: float, dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), shape (B,).

        ``min(SNR_t, gamma) / SNR of the target``: for ``epsilon`` that is ``min(SNR, gamma) / SNR``, for
        ``v_prediction`` ``min(SNR, gamma) / (SNR + 1)``, for ``sample`` ``min(SNR, gamma)`` (as in diffusers'
        training scripts and lucidrains' ``GaussianDiffusion``).
        """
        snr = self.snr(timesteps, dtype)
        return snr.clamp(max=snr_gamma) / self.prediction.target_snr(snr)

    def predict_original_sample(self, model_output: Tensor, timesteps, sample: Tensor) -> Tensor:
        """x_0 implied by ``model_output`` for x_t = ``sample`` at ``timesteps`` (B,) or a scalar."""
        a, s = self._coefficients(timesteps, sample)
        return self.prediction.original_sample(model_output, sample, a, s)

    def predict_noise(self, model_output: Tensor, timesteps, sample: Tensor) -> Tensor:
        """The noise implied by ``model_output`` for x_t = ``sample`` at ``timesteps`` (B,) or a scalar."""
        a, s = self._coefficients(timesteps, sample)
        return self.prediction.noise(model_output, sample, a, s)

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

        prediction = self.prediction
        pred_original_sample = prediction.original_sample(
            model_output, sample, sqrt_alpha_bar_t, sqrt_one_minus_alpha_bar_t
        )
        eps = prediction.noise(model_output, sample, sqrt_alpha_bar_t, sqrt_one_minus_alpha_bar_t)

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
