"""The ddpm-hub Space: sample from a DDPM checkpoint and watch the reverse process, step by step.

Two tabs, following the seed ("Diffusion Models Explained Line by Line"):

- **Generate** ("IMAGE GENERATION"): a model (the bundled default, a Hub repo id, or a local folder where
  the operator allows it), a sampler from the registry (``ddpm`` is the seed's loop), the number of steps,
  images and the seed. Shows the image grid, and the denoising trajectory (x_t and the predicted x_0 at a
  few steps) that the pipeline's ``callback_on_step_end`` hands out.
- **Explain** ("Setup and Noise Schedule", "Add noise to images"): the model's schedule (beta_t, alpha_bar_t,
  and the signal and noise coefficients of q(x_t | x_0)) and the forward process applied to an image by the
  scheduler's own ``add_noise``.

The app only calls the library (``ddpm_hub.load_pipeline``, the pipeline, its scheduler): no diffusion
arithmetic lives here. Run it with ``python spaces/app.py`` or ``ddpm-hub space``.

Security: a visitor names a model by Hub repo id only. The string is checked by huggingface_hub's repo-id
validator before anything else and then only ever downloaded from the Hub (safetensors, json and md
files); it is never looked up on this server's disk unless the operator passes ``--allow-local-paths`` or
sets ``DDPM_HUB_SPACE_ALLOW_LOCAL=1``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from PIL import Image, ImageOps

import ddpm_hub
from ddpm_hub.images import make_grid
from ddpm_hub.plugins import get_samplers
from ddpm_hub.samplers import resolve_steps

#: the bundled model, used when no repo is given (replace the folder to change it)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default-model"
#: written by `ddpm-hub space --deploy --model NAMESPACE/NAME`: the Hub repo a deployed Space uses by default
DEFAULT_MODEL_REPO_FILE = Path(__file__).resolve().parent / "default-model-repo.txt"
#: what the model box shows for the bundled (or operator-chosen) default model
DEFAULT_MODEL_LABEL = "default (bundled MNIST model)"
#: Hub checkpoints offered in the model box (any other repo id can be typed in)
PRESETS = ("google/ddpm-cifar10-32",)
#: env var that lets visitors load folders on this server (off unless set to 1/true/yes)
ALLOW_LOCAL_ENV = "DDPM_HUB_SPACE_ALLOW_LOCAL"
#: files fetched from a Hub repo: configs, safetensors weights and the model card, never pickles
HUB_ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.md")
MAX_IMAGES = 16
MAX_SEED = 2**32 - 1
#: the steps slider's hard ceiling; the model's own T is enforced per request
MAX_STEPS = 1000
TRAJECTORY_FRAMES = 6
MNIST5K = Path(ddpm_hub.__file__).resolve().parent / "datasets" / "mnist5k.parquet"
MNIST5K_SIZE = 5000


class SpaceInputError(gr.Error):
    """A visitor's input was wrong: the message says what and how to fix it."""


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: ``kind`` is ``local`` (a folder on this server) or ``hub`` (a repo id)."""

    kind: str
    location: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hub":
            return self.location + (f"@{self.revision}" if self.revision else "")
        return Path(self.location).name if Path(self.location) == DEFAULT_MODEL_DIR else self.location


def env_allows_local_paths() -> bool:
    return os.environ.get(ALLOW_LOCAL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(
    spec: str | None, revision: str | None, *, allow_local: bool, default: ModelRef
) -> ModelRef:
    """Turn what the visitor typed into a ``ModelRef``; raise ``SpaceInputError`` with the reason otherwise.

    Empty or the default label gives the operator's default model. The string is validated as a Hub repo id
    before any filesystem access; a local folder is considered only when ``allow_local``.
    """
    spec = (spec or "").strip()
    revision = (revision or "").strip() or None
    if not spec or spec == DEFAULT_MODEL_LABEL:
        return (
            default
            if revision is None or default.kind != "hub"
            else ModelRef("hub", default.location, revision)
        )
    try:
        validate_repo_id(spec)
        problem = None
    except HFValidationError as exc:
        problem = str(exc)
    if allow_local:
        path = Path(spec).expanduser()
        if path.is_dir():
            return ModelRef("local", str(path.resolve()))
        if problem:
            raise SpaceInputError(
                f"{spec!r} is neither a folder on this server nor a valid Hub repo id: {problem}"
            )
    elif problem:
        looks_like_path = spec.startswith(("/", "~", ".", "\\")) or "\\" in spec or spec.count("/") > 1
        if looks_like_path:
            raise SpaceInputError(
                f"{spec!r} looks like a path on the server; this Space loads models from the Hub only. Enter a "
                "Hub repo id such as 'google/ddpm-cifar10-32' (the operator can allow local folders with "
                f"`ddpm-hub space --allow-local-paths` or {ALLOW_LOCAL_ENV}=1)"
            )
        raise SpaceInputError(
            f"{spec!r} is not a valid Hub repo id: {problem} Enter one like 'namespace/model-name', e.g. "
            "'google/ddpm-cifar10-32', or leave the box empty for the default model"
        )
    return ModelRef("hub", spec, revision)


@functools.lru_cache(maxsize=4)
def _load_cached(ref: ModelRef) -> ddpm_hub.DDPMHubPipeline:
    if ref.kind == "hub":
        folder = snapshot_download(
            ref.location, revision=ref.revision, allow_patterns=list(HUB_ALLOW_PATTERNS)
        )
    else:
        folder = ref.location
    pipe = ddpm_hub.load_pipeline(folder)
    if torch.cuda.is_available():
        pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)  # the Space shows gr.Progress instead
    return pipe


def load_model(ref: ModelRef) -> ddpm_hub.DDPMHubPipeline:
    """The pipeline for ``ref`` (cached, at most 4 at a time), or a ``gr.Error`` that says what went wrong."""
    try:
        return _load_cached(ref)
    except GatedRepoError as exc:
        raise gr.Error(
            f"the Hub repo {ref} is gated: accept its terms on the Hub and give this Space a token ({exc})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise gr.Error(
            f"no model repo {ref.location!r} on the Hub (or it is private): check the spelling of the repo id"
        ) from exc
    except RevisionNotFoundError as exc:
        raise gr.Error(
            f"the Hub repo {ref.location!r} has no revision {ref.revision!r}: use a branch, tag or commit sha"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise gr.Error(
            f"could not download {ref} from the Hub: the Hub cannot be reached from this server (offline, or "
            "no network) and the repo is not in its cache. Use the default model, or try again later"
        ) from exc
    except HfHubHTTPError as exc:
        raise gr.Error(f"the Hub answered with an error for {ref}: {exc}. Try again later") from exc
    except ImportError as exc:  # a component from a plugin that is not installed: the message names it
        raise gr.Error(f"{ref} needs a plugin that this Space does not have: {exc}") from exc
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise gr.Error(
            f"{ref} is not a ddpm-hub or diffusers DDPM pipeline that can be loaded: {exc}"
        ) from exc


def sampler_names() -> list[str]:
    """Registered samplers, the core's first (``ddpm`` is the seed's loop)."""
    names = list(get_samplers())
    core = [n for n in ("ddpm", "sde-dpm-solver++", "dpm-solver++", "ddim") if n in names]
    return core + sorted(n for n in names if n not in core)


def num_train_timesteps(pipe) -> int:
    return int(pipe.scheduler.config.num_train_timesteps)


def default_steps(sampler: str, T: int) -> int:
    """The sampler's default number of steps (all T for ``ddpm``), at most T."""
    return resolve_steps(sampler, None, T)


def _checked_int(name: str, value, low: int, high: int, hint: str = "") -> int:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise SpaceInputError(f"{name} must be a whole number between {low} and {high}, got {value!r}{hint}")
    if float(value) != int(value) or not low <= int(value) <= high:
        raise SpaceInputError(f"{name} must be a whole number between {low} and {high}, got {value!r}{hint}")
    return int(value)


# ---------------------------------------------------------------------------------------------- images


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model-space images (B, C, H, W) in [-1, 1] to [0, 1] for display (clamped, as the pipeline's output)."""
    return (x.detach().float().cpu().clamp(-1, 1) + 1) / 2


def _enlarge(image: Image.Image, target: int) -> Image.Image:
    """Nearest-neighbour upscaling by a whole factor, so 28-pixel digits stay crisp in the browser."""
    factor = max(1, target // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


# ---------------------------------------------------------------------------------------------- generate


def generate(
    model, revision, sampler, steps, num_images, seed, *, allow_local: bool, default: ModelRef, progress=None
):
    """Sample ``num_images`` images; return (grid, individual images, trajectory, summary)."""
    n = _checked_int("Number of images", num_images, 1, MAX_IMAGES)
    seed = _checked_int("Seed", seed, 0, MAX_SEED)
    samplers = sampler_names()
    if sampler not in samplers:
        raise SpaceInputError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers)}")
    ref = resolve_model(model, revision, allow_local=allow_local, default=default)
    pipe = load_model(ref)
    T = num_train_timesteps(pipe)
    steps = _checked_int("Steps", steps, 1, T, f" (this model has T={T} diffusion steps)")

    frames = set(np.linspace(0, steps - 1, min(TRAJECTORY_FRAMES, steps)).round().astype(int).tolist())
    trajectory: list[tuple[Image.Image, str]] = []

    def on_step_end(_pipe, i: int, t: int, tensors: dict[str, torch.Tensor]):
        if progress is not None:
            progress((i + 1, steps), desc=f"{sampler}: step {i + 1}/{steps}, t={t}")
        if i in frames:
            trajectory.append(
                (
                    _enlarge(make_grid(_to_unit(tensors["sample"])), 256),
                    f"x after step {i + 1}/{steps} (t={t})",
                )
            )
            trajectory.append(
                (
                    _enlarge(make_grid(_to_unit(tensors["pred_original_sample"])), 256),
                    f"predicted x0 at t={t}",
                )
            )

    start = time.perf_counter()
    images = pipe(
        batch_size=n,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=steps,
        sampler=sampler,
        output_type="pt",
        callback_on_step_end=on_step_end,
    ).images
    elapsed = time.perf_counter() - start
    grid = _enlarge(make_grid(images), 512)
    singles = [
        (_enlarge(make_grid(img[None], padding=0), 128), f"image {k + 1}") for k, img in enumerate(images)
    ]
    summary = (
        f"{n} image{'s' if n > 1 else ''} from **{ref}** (T={T}) with `{sampler}`, {steps} steps, seed {seed}: "
        f"{elapsed:.1f} s on {pipe.device}."
    )
    return grid, singles, trajectory, summary


# ---------------------------------------------------------------------------------------------- explain


def _forward_coefficients(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) as the scheduler's own add_noise applies them.

    q(x_t | x_0) is x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, so add_noise(x_0=1, eps=0, t)
    is the signal kept and add_noise(x_0=0, eps=1, t) the noise added.
    """
    ones = torch.ones(len(timesteps), dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    return scheduler.add_noise(ones, zeros, timesteps), scheduler.add_noise(zeros, ones, timesteps)


def schedule(model, revision, *, allow_local: bool, default: ModelRef):
    """The loaded model's schedule: a beta_t plot, an alpha_bar / signal / noise plot, and a summary."""
    ref = resolve_model(model, revision, allow_local=allow_local, default=default)
    scheduler = load_model(ref).scheduler
    T = num_train_timesteps(load_model(ref))
    t = torch.arange(T)
    signal, noise = _forward_coefficients(scheduler, t)
    betas = torch.as_tensor(scheduler.betas, dtype=torch.float64)
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    beta_df = pd.DataFrame({"t": t.numpy(), "value": betas.numpy(), "curve": "beta_t"})
    curves_df = pd.concat(
        [
            pd.DataFrame({"t": t.numpy(), "value": alpha_bar.numpy(), "curve": "alpha_bar_t"}),
            pd.DataFrame({"t": t.numpy(), "value": signal.numpy(), "curve": "signal sqrt(alpha_bar_t)"}),
            pd.DataFrame({"t": t.numpy(), "value": noise.numpy(), "curve": "noise sqrt(1 - alpha_bar_t)"}),
        ],
        ignore_index=True,
    )
    config = scheduler.config
    summary = (
        f"**{ref}**: `{type(scheduler).__name__}`, T={T}, `beta_schedule={config.get('beta_schedule')}`, "
        f"beta from {betas[0].item():.3g} to {betas[-1].item():.3g}. At t=T-1 the image keeps "
        f"sqrt(alpha_bar)={signal[-1].item():.2g} of its signal, so sampling starts from almost pure noise."
    )
    return beta_df, curves_df, summary


def _mnist_image(index: int) -> Image.Image:
    return _mnist5k()[index]["image"]


@functools.lru_cache(maxsize=1)
def _mnist5k():
    from datasets import load_dataset

    return load_dataset("parquet", data_files=str(MNIST5K), split="train")


def _image_to_model_space(image: Image.Image, shape: tuple[int, int, int]) -> torch.Tensor:
    """A PIL image to a (1, C, H, W) tensor in [-1, 1] in the model's shape (center crop and resize)."""
    c, h, w = shape
    image = ImageOps.fit(image.convert("L" if c == 1 else "RGB"), (w, h), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    array = array[None] if c == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def forward_process(model, revision, image, dataset_index, t, seed, *, allow_local: bool, default: ModelRef):
    """q(x_t | x_0) on an uploaded image (or MNIST-5k digit ``dataset_index``): (x_0 | eps | x_t) and a summary."""
    ref = resolve_model(model, revision, allow_local=allow_local, default=default)
    pipe = load_model(ref)
    T = num_train_timesteps(pipe)
    t = _checked_int("t", t, 0, T - 1, f" (this model has T={T})")
    seed = _checked_int("Noise seed", seed, 0, MAX_SEED)
    if image is None:
        index = _checked_int("Dataset image", dataset_index, 0, MNIST5K_SIZE - 1)
        image, source = _mnist_image(index), f"MNIST-5k digit #{index}"
    else:
        source = "your image"
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    x0 = _image_to_model_space(image, pipe.image_shape)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    timesteps = torch.tensor([t])
    xt = pipe.scheduler.add_noise(x0, noise, timesteps)  # seed: "Add noise to images"
    signal, noise_scale = _forward_coefficients(pipe.scheduler, timesteps)
    strip = _enlarge(make_grid(_to_unit(torch.cat([x0, noise.clamp(-1, 1), xt])), nrow=3, padding=2), 600)
    summary = (
        f"{source} at t={t}: x_t = {signal.item():.4f} x_0 + {noise_scale.item():.4f} eps "
        f"(left to right: x_0, eps, x_t; model {ref}, T={T})."
    )
    return strip, summary


# ---------------------------------------------------------------------------------------------- the UI


INTRO = """# ddpm-hub: watch a diffusion model draw
A DDPM starts from pure noise and removes a little of it at each of T steps. Pick a model and a sampler,
press **Generate**, and see the image emerge: the trajectory shows the noisy x_t and the model's guess of
the clean image x_0 along the way. The **Explain** tab shows the noise schedule and the forward process
that the model was trained to undo. Built with [ddpm-hub](https://github.com/ddpm-hub/ddpm-hub)."""


def build_demo(
    default_model: str | Path | None = None,
    allow_local_paths: bool | None = None,
    presets: Sequence[str] = PRESETS,
    concurrency_limit: int | None = None,
) -> gr.Blocks:
    """Build the Space.

    Args:
        default_model: the model used when the visitor gives none: a pipeline or run folder, or a Hub repo id
            (chosen by the operator, so a local path is always allowed here). Default: the repo named in
            ``DEFAULT_MODEL_REPO_FILE`` (a deployed Space's ``--model``), else ``DEFAULT_MODEL_DIR``.
        allow_local_paths: let visitors load folders on this server; default: the ``DDPM_HUB_SPACE_ALLOW_LOCAL``
            env var, else off.
        presets: Hub repo ids offered in the model box.
        concurrency_limit: requests run at once (gradio's queue); default ``DDPM_HUB_SPACE_CONCURRENCY`` or 2.
    """
    allow_local = env_allows_local_paths() if allow_local_paths is None else bool(allow_local_paths)
    if default_model is None and DEFAULT_MODEL_REPO_FILE.is_file():
        default_model = DEFAULT_MODEL_REPO_FILE.read_text().strip()
    default = resolve_model(
        str(default_model or DEFAULT_MODEL_DIR),
        None,
        allow_local=True,
        default=ModelRef("local", str(DEFAULT_MODEL_DIR)),
    )
    samplers = sampler_names()
    initial_sampler = "sde-dpm-solver++" if "sde-dpm-solver++" in samplers else samplers[0]
    concurrency = concurrency_limit or int(os.environ.get("DDPM_HUB_SPACE_CONCURRENCY", "2"))
    opts = dict(allow_local=allow_local, default=default)
    model_info = "a Hub repo id (namespace/name) or a preset; leave the default for the bundled model" + (
        "; a folder on this server is also accepted" if allow_local else ""
    )

    def _generate(model, revision, sampler, steps, num_images, seed, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        return generate(model, revision, sampler, steps, num_images, seed, progress=progress, **opts)

    def _schedule(model, revision):
        return schedule(model, revision, **opts)

    def _forward(model, revision, image, dataset_index, t, seed):
        return forward_process(model, revision, image, dataset_index, t, seed, **opts)

    def _on_model_change(model, revision, sampler, t):
        """Fit the step and t sliders to the model's T, and redraw the schedule."""
        pipe = load_model(resolve_model(model, revision, **opts))
        T = num_train_timesteps(pipe)
        beta_df, curves_df, summary = schedule(model, revision, **opts)
        return (
            gr.update(maximum=T, value=default_steps(sampler, T)),
            gr.update(maximum=T - 1, value=min(int(t), T - 1)),
            beta_df,
            curves_df,
            summary,
        )

    def _on_sampler_change(model, revision, sampler):
        T = num_train_timesteps(load_model(resolve_model(model, revision, **opts)))
        return gr.update(value=default_steps(sampler, T))

    with gr.Blocks(title="ddpm-hub: watch a diffusion model draw") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(
                [DEFAULT_MODEL_LABEL, *presets],
                value=DEFAULT_MODEL_LABEL,
                allow_custom_value=True,
                label="Model",
                info=model_info,
                scale=3,
                elem_id="model",
            )
            revision = gr.Textbox(
                label="Revision",
                placeholder="main",
                info="Hub branch, tag or commit (optional)",
                scale=1,
                elem_id="revision",
            )
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    sampler = gr.Radio(
                        samplers,
                        value=initial_sampler,
                        label="Sampler",
                        elem_id="sampler",
                        info="ddpm: the seed's loop, all T steps; sde-dpm-solver++ (stochastic), dpm-solver++, ddim: fewer steps",
                    )
                    steps = gr.Slider(
                        1,
                        MAX_STEPS,
                        value=default_steps(initial_sampler, 512),
                        step=1,
                        label="Steps",
                        info="at most the model's T",
                        elem_id="steps",
                    )
                    num_images = gr.Slider(
                        1, MAX_IMAGES, value=16, step=1, label="Number of images", elem_id="num-images"
                    )
                    seed = gr.Number(
                        0,
                        label="Seed",
                        precision=0,
                        minimum=0,
                        maximum=MAX_SEED,
                        elem_id="seed",
                        info="the same seed gives the same images",
                    )
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    grid = gr.Image(
                        label="Samples",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=420,
                        buttons=["download", "fullscreen"],
                        elem_id="grid",
                    )
                    summary = gr.Markdown(elem_id="generate-summary")
            trajectory = gr.Gallery(
                label="Denoising trajectory: x_t and the predicted x0 at a few steps",
                columns=6,
                height="auto",
                format="png",
                object_fit="contain",
                elem_id="trajectory",
            )
            with gr.Accordion("Individual images", open=False):
                singles = gr.Gallery(
                    label="Images",
                    columns=8,
                    height="auto",
                    format="png",
                    buttons=["download", "download_all"],
                    elem_id="singles",
                )
        with gr.Tab("Explain", elem_id="tab-explain"):
            gr.Markdown(
                "### The noise schedule\nbeta_t is the noise added at step t; alpha_bar_t the share of "
                "the image's variance left after t steps. The forward process q(x_t | x_0) mixes "
                "sqrt(alpha_bar_t) of the image with sqrt(1 - alpha_bar_t) of Gaussian noise."
            )
            schedule_summary = gr.Markdown(elem_id="schedule-summary")
            with gr.Row():
                beta_plot = gr.LinePlot(
                    x="t",
                    y="value",
                    color="curve",
                    title="beta_t",
                    x_title="t",
                    y_title="beta",
                    height=300,
                    elem_id="beta-plot",
                )
                curves_plot = gr.LinePlot(
                    x="t",
                    y="value",
                    color="curve",
                    x_title="t",
                    y_title="",
                    title="alpha_bar_t, signal and noise",
                    height=300,
                    elem_id="curves-plot",
                )
            gr.Markdown(
                "### The forward process q(x_t | x_0)\nUpload an image, or pick a digit of the built-in "
                "MNIST-5k, and choose t: `scheduler.add_noise` makes x_t."
            )
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    upload = gr.Image(
                        label="Your image (optional)",
                        type="pil",
                        sources=["upload", "clipboard"],
                        height=200,
                        elem_id="upload",
                    )
                    dataset_index = gr.Slider(
                        0, MNIST5K_SIZE - 1, value=0, step=1, label="MNIST-5k digit", elem_id="dataset-index"
                    )
                    t_slider = gr.Slider(0, 511, value=100, step=1, label="t", elem_id="t")
                    noise_seed = gr.Number(0, label="Noise seed", precision=0, minimum=0, maximum=MAX_SEED)
                    forward_button = gr.Button("Add noise", variant="primary", elem_id="add-noise")
                with gr.Column(scale=2):
                    forward_image = gr.Image(
                        label="x_0, eps, x_t",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=260,
                        elem_id="forward",
                    )
                    forward_summary = gr.Markdown(elem_id="forward-summary")

        go.click(
            _generate,
            [model, revision, sampler, steps, num_images, seed],
            [grid, singles, trajectory, summary],
            api_name="generate",
        )
        forward_inputs = [model, revision, upload, dataset_index, t_slider, noise_seed]
        forward_button.click(
            _forward, forward_inputs, [forward_image, forward_summary], api_name="forward_process"
        )
        for trigger in (t_slider.release, dataset_index.release, upload.change):
            trigger(_forward, forward_inputs, [forward_image, forward_summary], api_visibility="private")
        model.change(
            _on_model_change,
            [model, revision, sampler, t_slider],
            [steps, t_slider, beta_plot, curves_plot, schedule_summary],
            api_visibility="private",
        )
        sampler.change(_on_sampler_change, [model, revision, sampler], [steps], api_visibility="private")
        # The schedule endpoint for API users; on page load, the sliders and plots follow the default model.
        schedule_api = gr.Button(visible=False)
        schedule_api.click(
            _schedule, [model, revision], [beta_plot, curves_plot, schedule_summary], api_name="schedule"
        )
        demo.load(
            _on_model_change,
            [model, revision, sampler, t_slider],
            [steps, t_slider, beta_plot, curves_plot, schedule_summary],
            api_visibility="private",
        )
        demo.load(_forward, forward_inputs, [forward_image, forward_summary], api_visibility="private")

    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ddpm-hub Space locally.")
    parser.add_argument(
        "--model",
        default=None,
        help="default model: a pipeline/run folder or a Hub repo id "
        "(default: the bundled spaces/default-model)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--allow-local-paths",
        action="store_true",
        default=None,
        help=f"let visitors load folders on this machine (also: {ALLOW_LOCAL_ENV}=1); off by default",
    )
    args = parser.parse_args(argv)
    demo = build_demo(default_model=args.model, allow_local_paths=args.allow_local_paths)
    demo.launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
