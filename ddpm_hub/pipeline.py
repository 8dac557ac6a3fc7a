"""DDPMHubPipeline (seed: "3. IMAGE GENERATION (Reverse Process)"); ``ddpm_hub.loading`` loads it.

The pipeline is a diffusers ``DiffusionPipeline`` with two components, ``unet`` (any registered
backbone, or diffusers' ``UNet2DModel``) and ``scheduler`` (the training scheduler, or any diffusers
scheduler). It saves as a diffusers pipeline folder: ``model_index.json``, ``unet/`` (safetensors),
``scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .plugins import backbone_name_of, distribution_of, get_sampler, get_schedules
from .samplers import make_sampler, resolve_steps
from .scheduler import original_sample

#: the type of ``callback_on_step_end``: (pipeline, step index, timestep, tensors) -> optional new tensors
StepCallback = Callable[
    ["DDPMHubPipeline", int, int, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None
]

OUTPUT_TYPES = ("pil", "np", "pt")

#: a sampling chain whose |x_t| exceeds ``1 + CHAIN_SIGMAS * init_noise_sigma`` (10 for DDPM) has diverged:
#: x_t is sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) z with x_0 in [-1, 1], so a healthy chain stays within
#: 1 + a few standard deviations of the noise (one N(0, 1) value beyond 9 has a chance of 2e-19); the seed's
#: unclipped loop on a small model reaches 26
CHAIN_SIGMAS = 9.0


class NonFiniteSampleError(FloatingPointError):
    """Sampling produced NaN or infinite values; the pipeline returns no images rather than black ones."""


class DDPMHubPipeline(DiffusionPipeline):
    """Unconditional image generation by the seed's reverse loop.

    Args:
        unet: the noise-predicting backbone (``config.sample_size``, ``config.in_channels``).
        scheduler: the scheduler it was trained with; ``sampler=`` in ``__call__`` picks another one.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """``DiffusionPipeline.save_pretrained``, recording in model_index.json what the pipeline needs.

        ``_ddpm_hub_requires`` maps ``unet`` to the distribution and version that provided the backbone (and
        its registered name) and ``scheduler`` to the one that provided its ``beta_schedule``, so that
        ``load_pipeline`` can name the plugin to install where it is missing. diffusers ignores config keys
        that start with ``_`` when loading, so the folder stays loadable by ``DiffusionPipeline.from_pretrained``.
        """
        self.register_to_config(_ddpm_hub_requires=pipeline_requirements(self.unet, self.scheduler))
        super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this pipeline makes."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, h, w

    def make_sampler(self, name: str):
        """The registered sampler ``name`` (``ddpm``, ``ddim``, ``dpm-solver++``, ...) with this model's betas."""
        return make_sampler(name, self.scheduler)

    def resolve_steps(self, sampler: str | None = None, steps: Any = None) -> int:
        """The number of steps ``pipe(sampler=sampler, num_inference_steps=steps)`` runs; ValueError (naming
        the allowed range) for bad steps or an unknown sampler, before any work."""
        if sampler is None and type(self.scheduler).__name__ == "DDPMHubScheduler":
            sampler = "ddpm"
        if sampler is not None:
            get_sampler(sampler)  # an unknown name: ValueError listing the registered samplers
        return self._resolve_steps(sampler, self.scheduler, steps)

    def _resolve_steps(self, sampler: str | None, scheduler, steps: Any) -> int:
        """The sampler's steps from its registry entry; for ``sampler=None`` the pipeline's own scheduler,
        checked as the ``ddpm`` sampler when it is a DDPM scheduler."""
        T = int(scheduler.config.num_train_timesteps)
        if sampler is not None:
            return resolve_steps(sampler, steps, T)
        if type(scheduler).__name__ in ("DDPMHubScheduler", "DDPMScheduler"):
            return resolve_steps("ddpm", steps, T)
        if steps is None:
            return min(50, T)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"num_inference_steps must be a whole number in [1, {T}], got {steps!r}")
        return steps

    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: str | None = None,
        callback_on_step_end: StepCallback | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images from pure noise.

        Args:
            batch_size: number of images.
            generator: a ``torch.Generator`` (or one per image) for reproducible images. With the same
                generator seed, unet and scheduler this gives the same images as diffusers' ``DDPMPipeline``.
            num_inference_steps: reverse steps; default all T for DDPM, the sampler's default otherwise.
            output_type: ``pil`` (list of PIL images), ``np`` (B, H, W, C floats in [0, 1]) or ``pt``
                (B, C, H, W floats in [0, 1]).
            sampler: a registered sampler name (``ddpm``, ``ddpm-seed``, ``ddim``, ``dpm-solver++``,
                ``sde-dpm-solver++``); default: ``ddpm`` (x_0 clipped at each step) when ``self.scheduler`` is a
                ``DDPMHubScheduler``, else ``self.scheduler`` as it is (as diffusers' ``DDPMPipeline`` does).
                ``ddpm-seed`` is the seed's exact, unclipped loop.
            callback_on_step_end: called after every step as ``callback(pipe, i, t, tensors)`` with
                ``tensors = {"sample": x_{t-1}, "pred_original_sample": predicted x_0}``; a returned dict
                may replace ``"sample"``.

        Raises:
            NonFiniteSampleError: a generated value is NaN or infinite (never returned as an image). A chain
                that leaves the range a healthy one stays in (see ``CHAIN_SIGMAS``) gives a ``RuntimeWarning``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; use one of {OUTPUT_TYPES}")
        if sampler is None and type(self.scheduler).__name__ == "DDPMHubScheduler":
            sampler = "ddpm"  # the default generation path clips x_0 (ddpm_hub.samplers explains why)
        scheduler = self.scheduler if sampler is None else self.make_sampler(sampler)
        num_inference_steps = self._resolve_steps(sampler, scheduler, num_inference_steps)

        # Seed, "Initialization": x = randn((bs, C, IMG_SIZE, IMG_SIZE))
        image = randn_tensor(
            (batch_size, *self.image_shape), generator=generator, device=self.device, dtype=self.unet.dtype
        )
        image = image * scheduler.init_noise_sigma
        scheduler.set_timesteps(num_inference_steps, device=self.device)

        # Seed, "Reverse loop": for ts in range(0, T)[::-1]
        peak = image.new_zeros(())  # the largest |x_t| of the chain, to warn when it diverges
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model_output = self.unet(scheduler.scale_model_input(image, t), t)
            if i == 0:
                check_backbone_output(self.unet, model_output, image)
            model_output = model_output.sample
            out = scheduler.step(model_output, t, image, generator=generator)
            if callback_on_step_end is not None:
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = original_sample(scheduler, model_output, t, image)
                result = callback_on_step_end(
                    self, i, int(t), {"sample": out.prev_sample, "pred_original_sample": x0}
                )
                image = (result or {}).get("sample", out.prev_sample)
            else:
                image = out.prev_sample
            peak = torch.maximum(peak, image.abs().amax())

        limit = 1.0 + CHAIN_SIGMAS * float(scheduler.init_noise_sigma)
        check_chain(image, float(peak), limit, sampler or type(scheduler).__name__, num_inference_steps)
        # Seed, "Final Output": generated_image = torch.clamp(x, -1, 1), mapped to [0, 1]
        image = image.clamp(-1, 1) / 2 + 0.5
        if output_type == "pt":
            images = image.float().cpu()
        else:
            images = image.float().cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def check_chain(image: torch.Tensor, peak: float, limit: float, sampler: str, steps: int) -> None:
    """Raise ``NonFiniteSampleError`` when the final chain value ``image`` (B, C, H, W) has a NaN or inf; warn
    when the chain's largest ``|x_t|`` (``peak``) went beyond ``limit``."""
    finite = torch.isfinite(image).flatten(1).all(1)
    if not bool(finite.all()):
        raise NonFiniteSampleError(
            f"sampling with {sampler} ({steps} steps) gave NaN or infinite values in {int((~finite).sum())} of "
            f"{len(image)} images, so no images were returned; try the ddpm sampler (it clips x0) or another "
            "number of steps, and check that the model's weights are finite"
        )
    if peak > limit:
        warnings.warn(
            f"the {sampler} sampling chain diverged: |x_t| reached {peak:.1f} (a healthy chain stays below "
            f"{limit:g}), so the images are likely saturated (solid black or white). Use a sampler that "
            "clips x0 (ddpm, ddim, dpm-solver++) or train the model longer",
            RuntimeWarning,
            stacklevel=4,  # the caller of pipe(...)
        )


def check_backbone_output(unet: Any, output: Any, sample: torch.Tensor) -> None:
    """Raise a clear error when a backbone's forward breaks the contract (``.sample`` of the input's B, H, W)."""
    name = type(unet).__name__
    result = getattr(output, "sample", None)
    if not isinstance(result, torch.Tensor):
        raise TypeError(
            f"the backbone {name} returned {type(output).__name__} from forward(sample, timestep); a backbone must "
            "return an object with a .sample tensor (a diffusers BaseOutput; see the backbone contract in "
            "CONTRIBUTING.md)"
        )
    B, _, H, W = sample.shape
    if result.ndim != 4 or result.shape[0] != B or tuple(result.shape[-2:]) != (H, W):
        raise ValueError(
            f"the backbone {name} returned .sample of shape {tuple(result.shape)} for input {tuple(sample.shape)}; a "
            f"backbone must return (batch, out_channels, H, W) = ({B}, out_channels, {H}, {W}) (see CONTRIBUTING.md)"
        )


def pipeline_requirements(unet: Any, scheduler: Any) -> dict[str, dict[str, Any]]:
    """What ``_ddpm_hub_requires`` records: for ``unet`` and ``scheduler``, the providing distribution and version.

    ``unet``: the distribution of the registered backbone (with its registry name under ``backbone``), or of
    the module that defines the class when it is not registered. ``scheduler``: for a ddpm-hub scheduler
    whose betas come from a named schedule, the distribution of that schedule (``beta_schedule``); otherwise
    the distribution of the scheduler class.
    """
    requires: dict[str, dict[str, Any]] = {}
    cls = type(unet)
    entry = backbone_name_of(cls)
    if entry is not None:
        requires["unet"] = {
            "distribution": entry.distribution,
            "version": entry.version,
            "backbone": entry.name,
        }
    elif (found := distribution_of(cls)) is not None:
        requires["unet"] = {"distribution": found[0], "version": found[1]}
    config = scheduler.config
    schedule = config.get("beta_schedule")
    schedules = get_schedules()
    if (
        type(scheduler).__name__ == "DDPMHubScheduler"
        and (config.get("trained_betas") is None or schedule != "linear")  # plugin schedules record betas
        and schedule in schedules
    ):
        entry = schedules[schedule]
        requires["scheduler"] = {
            "distribution": entry.distribution,
            "version": entry.version,
            "beta_schedule": schedule,
        }
    elif (found := distribution_of(type(scheduler))) is not None:
        requires["scheduler"] = {"distribution": found[0], "version": found[1]}
    return requires
