"""DDPMHubPipeline (seed: "3. IMAGE GENERATION (Reverse Process)"); ``ddpm_hub.loading`` loads it.

The pipeline is a diffusers ``DiffusionPipeline`` with two components, ``unet`` (any registered
backbone, or diffusers' ``UNet2DModel``) and ``scheduler`` (the training scheduler, or any diffusers
scheduler). It saves as a diffusers pipeline folder: ``model_index.json``, ``unet/`` (safetensors),
``scheduler/scheduler_config.json``, plus the pipeline's code for stock diffusers'
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (``ddpm_hub.remote_code``), which
ddpm-hub's own loading never runs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .conditioning import DEFAULT_GUIDANCE_SCALE, guide, label_ids, num_classes_of
from .plugins import backbone_name_of, distribution_of, get_sampler, get_schedules
from .remote_code import write_remote_code
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
    """Image generation by the seed's reverse loop; class-conditional with classifier-free guidance when the
    backbone was trained on labels (``unet.config.num_class_embeds``).

    Args:
        unet: the noise-predicting backbone (``config.sample_size``, ``config.in_channels``).
        scheduler: the scheduler it was trained with; ``sampler=`` in ``__call__`` picks another one.
        class_names: the name of each class of a class-conditional ``unet`` (saved in model_index.json, as
            DiTPipeline saves ``id2label``); default ``"0"``, ``"1"``, ...
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        n = num_classes_of(unet)
        if class_names is not None:
            if n is None:
                raise ValueError(
                    "class_names were given, but the unet is unconditional (no num_class_embeds)"
                )
            if len(class_names) != n:
                raise ValueError(f"{len(class_names)} class_names for a unet with {n} classes")
            # only for conditional models, so that an unconditional model_index.json stays as it was
            self.register_to_config(class_names=[str(c) for c in class_names])

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model; None for an unconditional one."""
        return num_classes_of(self.unet)

    @property
    def class_names(self) -> list[str] | None:
        """The class names (index = class id) of a class-conditional model; None for an unconditional one."""
        n = self.num_classes
        if n is None:
            return None
        names = self.config.get("class_names")
        return list(names) if names else [str(i) for i in range(n)]

    def get_label_ids(self, label: int | str | list[int | str]) -> list[int]:
        """Class ids for class names or ids (diffusers' DiTPipeline has the same method for names)."""
        if self.num_classes is None:
            raise ValueError(
                "this model is unconditional (its unet has no num_class_embeds), so it takes no class_labels; "
                "load a class-conditional model, or leave class_labels out"
            )
        return label_ids(label, self.class_names, self.num_classes)

    def save_pretrained(
        self, save_directory: str | Path, *args: Any, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """``DiffusionPipeline.save_pretrained``, plus what ddpm-hub and stock diffusers need to load the folder.

        ``_ddpm_hub_requires`` in model_index.json maps ``unet`` to the distribution and version that provided the
        backbone (and its registered name) and ``scheduler`` to the one that provided its ``beta_schedule``, so
        that ``load_pipeline`` can name the plugin to install where it is missing (diffusers ignores config keys
        that start with ``_``).

        The folder also carries the pipeline's code for stock diffusers (``ddpm_hub.remote_code``):
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads and samples it where
        ddpm-hub is not installed, and ``_class_name`` becomes ``["ddpm_hub.pipeline", "DDPMHubPipeline"]``, the
        form diffusers reads custom code from. ddpm-hub's own loading (``load_pipeline``, :meth:`from_pretrained`)
        never runs that code. ``push_to_hub=True`` (with ``repo_id=`` ...) uploads the folder with its code.
        """
        self.register_to_config(_ddpm_hub_requires=pipeline_requirements(self.unet, self.scheduler))
        push_keys = ("repo_id", "commit_message", "private", "token", "create_pr")
        push = {k: kwargs.pop(k) for k in push_keys if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory, self)
        if push_to_hub:
            repo_id = push.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, **push, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> DDPMHubPipeline:
        """Load a local pipeline folder without running any code from it (``load_pipeline`` checks it first).

        Each component is built by its class's own ``from_pretrained`` (the unet from safetensors only), the
        classes being the installed ones that model_index.json names; the ``.py`` files a folder carries for
        stock diffusers are never read. ``kwargs``: components to use instead (``unet=``, ``scheduler=``), the
        pipeline's other init arguments (default: model_index.json's, such as ``class_names``), and
        ``torch_dtype``, ``variant``, ``low_cpu_mem_usage``, ``device_map`` for the unet. For a Hub repo use
        ``ddpm_hub.load_pipeline(repo_id)``.
        """
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "model_index.json").is_file():
            raise ValueError(
                f"{folder} is not a local pipeline folder (no model_index.json): DDPMHubPipeline.from_pretrained "
                "loads local folders; for a Hub repo use ddpm_hub.load_pipeline(repo_id)"
            )
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError(
                "ddpm-hub loads weights from safetensors only; use_safetensors=False is not supported"
            )
        unet_options = ("torch_dtype", "variant", "low_cpu_mem_usage", "device_map")
        unet_kwargs = {k: kwargs.pop(k) for k in unet_options if k in kwargs}
        # diffusers' default low_cpu_mem_usage=True builds the model inside accelerate's init_empty_weights, which
        # patches nn.Module.register_parameter process-wide: two loads overlapping in threads (a Space's workers)
        # can leave it patched for good, and every model made afterwards lands on the meta device
        unet_kwargs.setdefault("low_cpu_mem_usage", "device_map" in unet_kwargs)
        components = {name: kwargs.pop(name) for name in ("unet", "scheduler") if name in kwargs}
        init_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in inspect.signature(cls.__init__).parameters
        }
        if kwargs:
            raise TypeError(
                f"DDPMHubPipeline.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}"
            )
        index = json.loads((folder / "model_index.json").read_text())
        for name, base in (("unet", ModelMixin), ("scheduler", SchedulerMixin)):
            if name in components:
                continue
            library, class_name = index[name]
            component_cls = getattr(importlib.import_module(library), class_name, None)
            if not (isinstance(component_cls, type) and issubclass(component_cls, base)):
                raise ValueError(
                    f"{folder}: model_index.json's {name} is {library}.{class_name}, which is not a {base.__name__}"
                )
            if name == "unet":
                components[name] = component_cls.from_pretrained(
                    folder, subfolder=name, use_safetensors=True, **unet_kwargs
                )
            else:
                components[name] = component_cls.from_pretrained(folder, subfolder=name)
        # the pipeline's own init arguments that model_index.json records (class_names of a conditional model)
        for key in inspect.signature(cls.__init__).parameters:
            if key not in ("self", "unet", "scheduler") and key in index and key not in init_kwargs:
                init_kwargs[key] = index[key]
        pipe = cls(**components, **init_kwargs)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

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
        class_labels: int | str | list[int | str] | None = None,
        guidance_scale: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images from pure noise.

        Args:
            batch_size: number of images; with a list of ``class_labels``, one image per label (then
                ``batch_size`` may be left at 1 or must equal the list's length).
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
            class_labels: class-conditional models only: a class id or name for every image, or a list of ids
                or names (one per image), as in diffusers' DiTPipeline; None: the null class (any class).
            guidance_scale: classifier-free guidance weight s, ``uncond + s * (cond - uncond)``; 1 is the plain
                conditional model; default ``ddpm_hub.conditioning.DEFAULT_GUIDANCE_SCALE``.

        Raises:
            NonFiniteSampleError: a generated value is NaN or infinite (never returned as an image). A chain
                that leaves the range a healthy one stays in (see ``CHAIN_SIGMAS``) gives a ``RuntimeWarning``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; use one of {OUTPUT_TYPES}")
        labels = None
        if class_labels is not None:
            ids = self.get_label_ids(class_labels)
            if isinstance(class_labels, (int, str)):
                ids = ids * batch_size
            elif batch_size not in (1, len(ids)):
                raise ValueError(
                    f"{len(ids)} class_labels for batch_size={batch_size}; give one label per image"
                )
            batch_size = len(ids)
            labels = torch.tensor(ids, device=self.device)
        if guidance_scale is None:
            guidance_scale = DEFAULT_GUIDANCE_SCALE
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (1: no guidance), got {guidance_scale}"
            )
        # Guidance needs the null-class output beside the conditional one: both in one batched forward.
        guided = labels is not None and guidance_scale != 1
        if guided:
            null = torch.full_like(labels, self.num_classes)
            forward_labels = torch.cat([labels, null])
        else:
            forward_labels = labels
        unet_kwargs = {} if forward_labels is None else {"class_labels": forward_labels}
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
            model_input = scheduler.scale_model_input(image, t)
            if guided:
                model_input = torch.cat([model_input, model_input])
            model_output = self.unet(model_input, t, **unet_kwargs)
            if i == 0:
                check_backbone_output(self.unet, model_output, model_input)
            model_output = model_output.sample
            if guided:
                model_output = guide(model_output, guidance_scale)
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
