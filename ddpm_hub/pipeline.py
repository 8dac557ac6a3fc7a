"""DDPMHubPipeline and load_pipeline (seed: "3. IMAGE GENERATION (Reverse Process)").

The pipeline is a diffusers ``DiffusionPipeline`` with two components, ``unet`` (any registered
backbone, or diffusers' ``UNet2DModel``) and ``scheduler`` (the training scheduler, or any diffusers
scheduler). It saves as a diffusers pipeline folder: ``model_index.json``, ``unet/`` (safetensors),
``scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

#: the type of ``callback_on_step_end``: (pipeline, step index, timestep, tensors) -> optional new tensors
StepCallback = Callable[
    ["DDPMHubPipeline", int, int, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None
]

OUTPUT_TYPES = ("pil", "np", "pt")


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
        from .samplers import make_sampler

        return make_sampler(name, self.scheduler)

    @staticmethod
    def predict_original_sample(
        scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor
    ) -> torch.Tensor:
        """x_0 implied by the model output at ``timestep`` (for schedulers whose step does not return it)."""
        alpha_bar = torch.as_tensor(scheduler.alphas_cumprod)[int(timestep)].to(sample.device, sample.dtype)
        prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "sample":
            return model_output
        if prediction_type == "v_prediction":
            return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()

    def _resolve_steps(self, sampler: str | None, scheduler, steps: Any) -> int:
        """The sampler's steps from its registry entry; for ``sampler=None`` the pipeline's own scheduler,
        checked as the ``ddpm`` sampler when it is a DDPM scheduler."""
        from .samplers import resolve_steps

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
            sampler: a registered sampler name (``ddpm``, ``ddim``, ``dpm-solver++``, ``sde-dpm-solver++``);
                default: ``self.scheduler``.
            callback_on_step_end: called after every step as ``callback(pipe, i, t, tensors)`` with
                ``tensors = {"sample": x_{t-1}, "pred_original_sample": predicted x_0}``; a returned dict
                may replace ``"sample"``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; use one of {OUTPUT_TYPES}")
        scheduler = self.scheduler if sampler is None else self.make_sampler(sampler)
        num_inference_steps = self._resolve_steps(sampler, scheduler, num_inference_steps)

        # Seed, "Initialization": x = randn((bs, C, IMG_SIZE, IMG_SIZE))
        image = randn_tensor(
            (batch_size, *self.image_shape), generator=generator, device=self.device, dtype=self.unet.dtype
        )
        image = image * scheduler.init_noise_sigma
        scheduler.set_timesteps(num_inference_steps, device=self.device)

        # Seed, "Reverse loop": for ts in range(0, T)[::-1]
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model_output = self.unet(scheduler.scale_model_input(image, t), t)
            if i == 0:
                check_backbone_output(self.unet, model_output, image)
            model_output = model_output.sample
            out = scheduler.step(model_output, t, image, generator=generator)
            if callback_on_step_end is not None:
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = self.predict_original_sample(scheduler, model_output, t, image)
                result = callback_on_step_end(
                    self, i, int(t), {"sample": out.prev_sample, "pred_original_sample": x0}
                )
                image = (result or {}).get("sample", out.prev_sample)
            else:
                image = out.prev_sample

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


def _pipeline_folder(path: Path) -> Path:
    """The pipeline folder in ``path``: the folder itself, or a training run's ``pipeline/``."""
    if (path / "model_index.json").is_file():
        return path
    if (path / "pipeline" / "model_index.json").is_file():
        return path / "pipeline"
    raise FileNotFoundError(
        f"{path} is not a pipeline folder: it has no model_index.json (nor pipeline/model_index.json, as a "
        "training run folder has). Point to the folder that `DDPMHubPipeline.save_pretrained` or "
        "`ddpm-hub train` wrote"
    )


def pipeline_requirements(unet: Any, scheduler: Any) -> dict[str, dict[str, Any]]:
    """What ``_ddpm_hub_requires`` records: for ``unet`` and ``scheduler``, the providing distribution and version.

    ``unet``: the distribution of the registered backbone (with its registry name under ``backbone``), or of
    the module that defines the class when it is not registered. ``scheduler``: for a ddpm-hub scheduler
    whose betas come from a named schedule, the distribution of that schedule (``beta_schedule``); otherwise
    the distribution of the scheduler class.
    """
    from .plugins import backbone_name_of, distribution_of, get_schedules

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
        and config.get("trained_betas") is None
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


def _missing_plugin_message(what: str, requirement: dict[str, Any], fallback: str) -> str:
    """The sentence that says which distribution to install (or allow) for ``what``."""
    import importlib.metadata

    from .plugins import unavailable_reason

    dist = requirement.get("distribution") or fallback
    version = requirement.get("version")
    saved = f" (saved with version {version})" if version else ""
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pin = f"=={version}" if version else ""
        return f"{what} is provided by the distribution {dist!r}{saved}, which is not installed: pip install {dist}{pin}"
    reason = unavailable_reason(dist)  # left out by DDPM_HUB_LOAD_PLUGINS, or disabled
    if reason:
        return f"{what} is provided by the distribution {dist!r}{saved}, which is installed but {reason}"
    return (
        f"{what} is provided by the distribution {dist!r}{saved}, which is installed but does not provide it; "
        f"upgrade it: pip install -U {dist}"
    )


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """Check that a pipeline folder is complete and loadable safely; return its model_index.json.

    Raises a clear error when a component folder or its safetensors weights are missing, when the weights
    exist only as pickle files (never loaded), or when a component's library or the scheduler's
    ``beta_schedule`` (a plugin) is not installed or not loaded (``MissingPluginError``, naming the
    distribution recorded in ``_ddpm_hub_requires``).
    """
    from .plugins import MissingPluginError, distribution_of, get_schedules, unavailable_reason

    index = json.loads((folder / "model_index.json").read_text())
    requires = index.get("_ddpm_hub_requires") or {}
    for name in ("unet", "scheduler"):
        if name not in index:
            raise ValueError(
                f"{folder / 'model_index.json'} has no {name!r} component; this is not a DDPM pipeline"
            )
        library, class_name = index[name]
        what = f"this checkpoint's {name} ({library}.{class_name})"
        try:
            module = importlib.import_module(library)
        except ImportError as exc:
            message = _missing_plugin_message(
                what, requires.get(name, {}), library.split(".")[0].replace("_", "-")
            )
            raise MissingPluginError(message, name=library) from exc
        if not hasattr(module, class_name):
            raise MissingPluginError(
                f"this checkpoint's {name} is {library}.{class_name}, but the installed {library} has no "
                f"{class_name}; upgrade it"
            )
        # importable is not enough: a plugin that DDPM_HUB_LOAD_PLUGINS leaves out, or a disabled one, is not used
        dist = requires.get(name, {}).get("distribution") or (distribution_of(module) or (None,))[0]
        if dist and unavailable_reason(dist):
            raise MissingPluginError(_missing_plugin_message(what, requires.get(name, {}), dist))
        component = folder / name
        if not component.is_dir():
            raise FileNotFoundError(f"incomplete pipeline folder {folder}: the {name}/ folder is missing")
    unet = folder / "unet"
    if not (unet / "config.json").is_file():
        raise FileNotFoundError(f"incomplete pipeline folder {folder}: unet/config.json is missing")
    if not list(unet.glob("*.safetensors")):
        pickles = [p.name for p in unet.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        if pickles:
            raise ValueError(
                f"{unet} holds weights only as pickle files ({', '.join(pickles)}); ddpm-hub loads safetensors only, "
                "since unpickling a downloaded file can run arbitrary code. Convert them where you trust the file "
                "(load it, then save_pretrained(..., safe_serialization=True))"
            )
        raise FileNotFoundError(f"incomplete pipeline folder {folder}: unet/ has no .safetensors weights")
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise FileNotFoundError(
            f"incomplete pipeline folder {folder}: scheduler/scheduler_config.json is missing"
        )
    if index["scheduler"][1] == "DDPMHubScheduler":
        config = json.loads(scheduler_config.read_text())
        schedule = config.get("beta_schedule", "linear")
        if config.get("trained_betas") is None and schedule not in get_schedules():
            requirement = requires.get("scheduler", {})
            if requirement.get("beta_schedule") not in (None, schedule):
                requirement = {}
            fallback = "the plugin that registers it (see `ddpm-hub plugins --all`)"
            if requirement:
                message = _missing_plugin_message(
                    f"this checkpoint's beta_schedule {schedule!r}", requirement, ""
                )
            else:
                message = (
                    f"this checkpoint's beta_schedule {schedule!r} is not registered; install {fallback}"
                )
            raise MissingPluginError(message)
    return index


def load_pipeline(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> DDPMHubPipeline:
    """Load a pipeline from a local folder (a pipeline folder or a training run folder) or a Hub repo.

    A local folder wins; otherwise ``repo_id_or_path`` is a Hub repo id (``NAMESPACE/NAME``), downloaded
    into the Hugging Face cache, safetensors/json/md/png files only (``revision``: a branch, tag or commit
    sha; ``token``: for private repos, default the logged-in token). With ``HF_HUB_OFFLINE=1`` it loads
    from the cache. A repo that holds only pickle weights is refused before anything is downloaded.
    Loads ddpm-hub checkpoints and stock diffusers DDPM checkpoints (``UNet2DModel`` + ``DDPMScheduler``)
    alike. ``kwargs`` go to ``DiffusionPipeline.from_pretrained`` (``torch_dtype`` ...).

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder that is not a pipeline folder.
        ValueError: a string that is neither an existing folder nor a valid Hub repo id.
        ddpm_hub.hub.HubLoadError: the Hub repo could not be loaded; ``.reason`` is one of
            ``repo_not_found``, ``revision_not_found``, ``authentication``, ``offline_not_cached``,
            ``pickle_only``, ``incomplete``, ``http``.
    """
    from .plugins import load_plugins

    load_plugins()
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        folder = _pipeline_folder(path)
        check_pipeline_folder(folder)
    else:
        from . import hub

        name = str(repo_id_or_path)
        if isinstance(repo_id_or_path, Path) or name.startswith((".", "/", "~", "\\")) or path.exists():
            raise FileNotFoundError(f"no pipeline folder at {path}")
        if not hub.is_repo_id(name):
            raise ValueError(
                f"{name!r} is neither an existing local folder nor a valid Hub repo id: give a pipeline folder, a "
                "training run folder, or a Hub repo id such as NAMESPACE/NAME (letters, digits, '-', '_', '.')"
            )
        folder = hub.download_pipeline(name, revision=revision, token=token, cache_dir=cache_dir)
        try:
            check_pipeline_folder(folder)
        except FileNotFoundError as exc:
            raise hub.HubLoadError(
                f"Hub repo {name}{f' (revision {revision})' if revision else ''} is not a complete pipeline: {exc}",
                "incomplete",
                name,
                revision,
            ) from exc
    return DDPMHubPipeline.from_pretrained(folder, use_safetensors=True, **kwargs)
