"""The ddpm-hub Space: sample from a DDPM checkpoint and watch the reverse process draw, step by step.

Two tabs, following the seed ("Diffusion Models Explained Line by Line"):

- **Generate** ("IMAGE GENERATION"): a model (the bundled default, a Hub repo id, or a local folder where
  the operator allows it), a sampler from the registry (``ddpm`` is the seed's loop), its steps, the number
  of images and the seed. While the pipeline samples, the page streams x_t and the predicted x_0 that its
  ``callback_on_step_end`` hands out; the final grid then replaces them. One image at a time can be followed
  large through every recorded step (a step slider and a GIF), and a copyable ``ddpm-hub sample`` line
  reproduces the grid.
- **Explain** ("Setup and Noise Schedule", "Add noise to images"): the model's schedule (beta_t, alpha_bar_t,
  and the signal and noise coefficients of q(x_t | x_0)) and the forward process applied to an image by the
  scheduler's own ``add_noise``.

The app only calls the library (``ddpm_hub.load_pipeline``, the pipeline, its scheduler): no diffusion
arithmetic lives here. Run it with ``python spaces/app.py`` or ``ddpm-hub space``.

Models: a Hub model is resolved to the commit its branch (or tag) points at on every request, and pipelines
are cached by commit, so a new push to ``main`` is served at once without serving a half-known state;
``load_pipeline`` checks the repo's file list before downloading anything (a repo that is not a pipeline,
or holds pickle weights only, is refused without downloading weights).

Security: a visitor names a model by Hub repo id only. The string is checked by huggingface_hub's repo-id
validator before anything else and then only ever downloaded from the Hub (safetensors, json, md and png
files); it is never looked up on this server's disk unless the operator passes ``--allow-local-paths`` or
sets ``DDPM_HUB_SPACE_ALLOW_LOCAL=1``.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image

import ddpm_hub
from ddpm_hub.conditioning import DEFAULT_GUIDANCE_SCALE
from ddpm_hub.datasets import BUILTIN_DATASET, BUILTIN_DATASETS
from ddpm_hub.devices import allow_fast_float32, select_device
from ddpm_hub.images import make_grid
from ddpm_hub.loading import download_pipeline, pipeline_folder
from ddpm_hub.plugins import get_samplers
from ddpm_hub.samplers import resolve_steps
from ddpm_hub.schedules import DEFAULT_NUM_TRAIN_TIMESTEPS

#: the bundled model, used when no repo is given (replace the folder to change it)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default-model"
#: written by `ddpm-hub space --deploy --model NAMESPACE/NAME`: the Hub repo a deployed Space uses by default
DEFAULT_MODEL_REPO_FILE = Path(__file__).resolve().parent / "default-model-repo.txt"
#: what the model box shows for the bundled (or operator-chosen) default model
DEFAULT_MODEL_LABEL = "default (bundled MNIST model)"
#: the bundled class-conditional model: pick a digit (offered when the folder is there)
COND_MODEL_DIR = Path(__file__).resolve().parent / "cond-model"
COND_MODEL_LABEL = "MNIST, pick a digit (bundled class-conditional model)"
#: the digit picker's choice that asks for no particular class (the model's null class)
ANY_CLASS = "any"
#: Hub checkpoints offered in the model box (any other repo id can be typed in)
PRESETS = ("google/ddpm-cifar10-32",)
#: env var that lets visitors load folders on this server (off unless set to 1/true/yes)
ALLOW_LOCAL_ENV = "DDPM_HUB_SPACE_ALLOW_LOCAL"
#: pipelines kept in memory (each is one model at one commit)
CACHED_PIPELINES = 4
MAX_IMAGES = 16
MAX_SEED = 2**32 - 1
#: the guidance slider's top (classifier-free guidance; 1 is none)
MAX_GUIDANCE = 10.0
#: the steps slider's hard ceiling before a model is loaded; the model's own T bounds it after
MAX_STEPS = 1000
#: steps recorded for the trajectory (every step up to this many, else evenly spaced ones)
MAX_FRAMES = 64
#: the fewest live pictures a run shows while sampling (when it has that many steps)
LIVE_UPDATES = 8
#: frames in the API's trajectory gallery (x_t and the predicted x_0 at each)
API_TRAJECTORY_FRAMES = 6
#: uploads larger than this (longest side, pixels) are scaled down for the Explain tab
MAX_UPLOAD_SIDE = 512
MNIST5K = BUILTIN_DATASETS[BUILTIN_DATASET]
MNIST5K_SIZE = 5000
#: plain words for the core samplers; a plugin sampler is described by its factory's docstring
SAMPLER_WORDS = {
    "ddpm": "DDPM: the original, slow",
    "sde-dpm-solver++": "SDE-DPM-Solver++: fast, sharpest",
    "dpm-solver++": "DPM-Solver++: fast, smooth",
    "ddim": "DDIM: deterministic shortcut",
}
SOURCE_DIGIT = "MNIST-5k digit"
SOURCE_UPLOAD = "your image"


class SpaceInputError(gr.Error):
    """Something the visitor asked for cannot be done: the message says what and what to do instead."""


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
        bundled = Path(self.location) in (DEFAULT_MODEL_DIR, COND_MODEL_DIR)
        return Path(self.location).name if bundled else self.location


@dataclass
class Loaded:
    """A loaded pipeline, and the Hub commit it was loaded from (None for a local folder)."""

    pipe: ddpm_hub.DDPMHubPipeline
    ref: ModelRef
    commit: str | None = None

    @property
    def T(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def describe(self) -> str:
        return f"{self.ref}" + (f" (commit {self.commit[:8]})" if self.commit else "")


def default_model_label(default: ModelRef) -> str:
    """What the model box shows for the operator's default model: the bundled one's description, else the
    repo or folder it really is (``ddpm-hub space --model user/name`` shows ``default (user/name)``)."""
    if default.kind == "local" and Path(default.location) == DEFAULT_MODEL_DIR:
        return DEFAULT_MODEL_LABEL
    return f"default ({default})"


def env_allows_local_paths() -> bool:
    return os.environ.get(ALLOW_LOCAL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(
    spec: str | None, revision: str | None, *, allow_local: bool, default: ModelRef
) -> ModelRef:
    """Turn what the visitor typed into a ``ModelRef``; raise ``SpaceInputError`` with the reason otherwise.

    Empty or the default's label gives the operator's default model. The string is validated as a Hub repo id
    before any filesystem access; a local folder is considered only when ``allow_local``.
    """
    spec = (spec or "").strip()
    revision = (revision or "").strip() or None
    if not spec or spec in (DEFAULT_MODEL_LABEL, default_model_label(default)):
        return (
            default
            if revision is None or default.kind != "hub"
            else ModelRef("hub", default.location, revision)
        )
    if spec == COND_MODEL_LABEL and COND_MODEL_DIR.is_dir():  # bundled by the operator, like the default
        return ModelRef("local", str(COND_MODEL_DIR))
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
        # One message for a visitor, whatever the string is (a typo or a server path): they can only
        # name Hub repos here, so say how one looks.
        raise SpaceInputError(
            f"{spec!r} is not a model name this Space can load. Enter a Hub model id such as "
            "'google/ddpm-cifar10-32' (namespace/model-name), or pick the default model"
        )
    return ModelRef("hub", spec, revision)


class PipelineCache:
    """The last few pipelines used, keyed by what makes them what they are: a Hub repo at one commit, or a
    local folder as last saved. A new push to a branch therefore gives a new key, never the old weights."""

    def __init__(self, size: int = CACHED_PIPELINES):
        self.size = size
        self._pipes: OrderedDict[tuple, ddpm_hub.DDPMHubPipeline] = OrderedDict()
        self._lock = threading.Lock()
        #: (repo, revision) -> the commit it pointed at when last seen, for when the Hub cannot be asked
        self.last_commit: dict[tuple[str, str | None], str] = {}
        self.loads = 0  # pipelines built so far (tests read it)

    def get(self, key: tuple, build) -> ddpm_hub.DDPMHubPipeline:
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
        pipe = build()
        with self._lock:
            self.loads += 1
            self._pipes[key] = pipe
            while len(self._pipes) > self.size:
                self._pipes.popitem(last=False)
        return pipe

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()
            self.last_commit.clear()


PIPELINES = PipelineCache()


def hub_commit(repo_id: str, revision: str | None) -> tuple[str | None, bool]:
    """(the commit that ``revision`` (default ``main``) of ``repo_id`` points at now, whether the Hub could be
    asked). The commit is None when the Hub refused (unknown repo or revision ...: load_pipeline meets the
    same answer next and names it) or could not be asked (offline, unreachable, a server error)."""
    try:
        return HfApi().model_info(repo_id, revision=revision).sha, True
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 500
        return None, status < 500
    except Exception:  # offline mode, or no connection: whatever the HTTP client raises
        return None, False


def _folder_stamp(folder: str) -> int:
    """When the pipeline in a local folder (a pipeline folder, or a run's ``pipeline/``) last changed, so a
    re-saved pipeline is reloaded; a run's checkpoints and logs do not count."""
    try:
        root = pipeline_folder(Path(folder))
    except FileNotFoundError:
        return 0  # not a pipeline: load_pipeline says so
    return max((p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()), default=0)


def _build(ref: ModelRef, revision: str | None) -> ddpm_hub.DDPMHubPipeline:
    """Load ``ref`` with the library: a Hub repo through its file-list check and download (never a folder on
    this server that happens to share the repo id's name), a local folder as it is."""
    if ref.kind == "hub":
        pipe = ddpm_hub.load_pipeline(download_pipeline(ref.location, revision=revision))
    else:
        pipe = ddpm_hub.load_pipeline(ref.location)
    device = select_device("auto")  # the Space's hardware: CUDA, XPU, MPS, else the CPU
    allow_fast_float32(device)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the Space shows its own progress
    return pipe


def _visitor_message(ref: ModelRef, exc: Exception) -> str:
    """What went wrong loading ``ref``, in the visitor's terms (no server paths, no operator switches)."""
    reason = getattr(exc, "reason", None)  # ddpm_hub's HubLoadError says why the Hub repo failed
    name = ref.location if ref.kind == "hub" else str(ref)
    if reason in ("repo_not_found", "authentication"):
        return (
            f"There is no model {name!r} on the Hub that this Space can read (it may be private or gated): "
            "check the spelling (namespace/model-name)"
        )
    if reason == "revision_not_found":
        return f"The Hub model {name!r} has no revision {ref.revision!r}: use a branch, tag or commit id"
    if reason == "offline_not_cached":
        return (
            f"The Hugging Face Hub cannot be reached from this Space right now, so {name!r} cannot be "
            "loaded. Try again later, or use the default model"
        )
    if reason == "pickle_only":
        return (
            f"{name!r} has its weights as pickle files only (.bin/.pt), which this Space does not load "
            "because unpickling can run arbitrary code; it needs safetensors weights. Nothing was downloaded"
        )
    if reason == "incomplete" or (ref.kind == "hub" and isinstance(exc, (FileNotFoundError, ValueError))):
        return (
            f"{name!r} is not a diffusion pipeline this Space can load (it needs model_index.json, "
            "unet/ with safetensors weights and scheduler/); nothing was downloaded"
        )
    if reason is not None:
        return f"The Hub answered with an error for {name!r}; try again later"
    if isinstance(exc, ImportError):  # a component from a plugin that is not installed: the message names it
        return f"{name!r} needs a plugin that this Space does not have: {exc}"
    return f"{name!r} is not a ddpm-hub or diffusers DDPM pipeline that can be loaded: {exc}"


def load_model(ref: ModelRef) -> Loaded:
    """The pipeline for ``ref`` (cached by commit), or a ``SpaceInputError`` that says what went wrong.

    A Hub ref is resolved to its current commit first (one API call), so a new push is seen on the next
    request. When the Hub cannot be reached, the commit served last for that branch is used (from memory or
    the Hugging Face cache); otherwise the library's loader explains the failure.
    """
    try:
        if ref.kind == "local":
            key = ("local", ref.location, _folder_stamp(ref.location))
            return Loaded(PIPELINES.get(key, lambda: _build(ref, None)), ref)
        branch = (ref.location, ref.revision)
        commit, asked = hub_commit(ref.location, ref.revision)
        if not asked:  # the Hub is out of reach: serve the commit this branch pointed at last, if known
            commit = PIPELINES.last_commit.get(branch)
        key = ("hub", ref.location, commit or f"unresolved:{ref.revision}")
        pipe = PIPELINES.get(key, lambda: _build(ref, commit or ref.revision))
        if commit is not None:
            PIPELINES.last_commit[branch] = commit
        return Loaded(pipe, ref, commit)
    except (OSError, ValueError, ImportError) as exc:  # HubLoadError is an OSError
        raise SpaceInputError(_visitor_message(ref, exc)) from exc


# --------------------------------------------------------------------------------------------- samplers


def sampler_names() -> list[str]:
    """Registered samplers, the core's first (``ddpm`` is the seed's loop)."""
    names = list(get_samplers())
    core = [n for n in SAMPLER_WORDS if n in names]
    return core + sorted(n for n in names if n not in core)


def sampler_label(name: str) -> str:
    """What the sampler is and its default steps, in plain words, from its registry entry."""
    entry = get_samplers()[name]
    words = SAMPLER_WORDS.get(name)
    if words is None:
        doc = (entry.obj.__doc__ or "").strip().split("\n")[0]
        words = f"{name}: {doc.split('. ')[0].rstrip('.')}" if doc else name
    default = f"{entry.default_steps} steps" if entry.default_steps else "all T steps"
    return f"{words} · {default}"


def step_bounds(sampler: str, T: int) -> tuple[int, int, int]:
    """(minimum, default, maximum) steps of ``sampler`` for a model with ``T`` steps, from its registry entry."""
    return min(get_samplers()[sampler].min_steps, T), resolve_steps(sampler, None, T), T


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


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model-space images (B, C, H, W) in [-1, 1] to uint8 for display (clamped, as the pipeline's output)."""
    unit = (x.detach().float().cpu().clamp(-1, 1) + 1) / 2
    return (unit * 255).round().to(torch.uint8).numpy()


def _grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """uint8 (B, C, H, W) images tiled by the library's ``make_grid``."""
    return make_grid(torch.from_numpy(images).float() / 255, nrow=nrow, padding=padding)


def _enlarge(image: Image.Image, target: int) -> Image.Image:
    """Nearest-neighbour upscaling by a whole factor, so 28-pixel digits stay crisp in the browser."""
    factor = max(1, target // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def _side_by_side(left: Image.Image, right: Image.Image, gap: int = 12) -> Image.Image:
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    out = Image.new(mode, (left.width + gap + right.width, max(left.height, right.height)), "white")
    out.paste(left.convert(mode), (0, 0))
    out.paste(right.convert(mode), (left.width + gap, 0))
    return out


# ---------------------------------------------------------------------------------------------- generate


@dataclass
class Frame:
    """The state after reverse step ``step`` (1-based, of ``steps``) at timestep ``t``: x_t and the predicted
    x_0, uint8 (B, C, H, W)."""

    step: int
    steps: int
    t: int
    sample: np.ndarray
    x0: np.ndarray


@dataclass
class Run:
    """A finished generation: what was asked, the images (uint8 B, C, H, W) and the recorded frames."""

    model: Loaded
    sampler: str
    steps: int
    seed: int
    images: np.ndarray
    frames: list[Frame]
    seconds: float
    command: str = ""
    files: dict[str, str] = field(default_factory=dict)
    #: class-conditional models: the class asked for (None: any, the null class) and the guidance scale
    class_name: str | None = None
    guidance_scale: float | None = None

    @property
    def n(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        asked = ""
        if self.class_name is not None:
            asked = f" of class **{self.class_name}** (guidance {self.guidance_scale:g})"
        return (
            f"{self.n} image{'s' if self.n > 1 else ''}{asked} from **{self.model.describe()}** "
            f"(T={self.model.T}) with `{self.sampler}`, {self.steps} steps, seed {self.seed}: "
            f"{self.seconds:.1f} s on {self.model.pipe.device}."
        )


class _Cancelled(Exception):
    """The visitor left (or pressed Generate again): the worker stops at the next step."""


def recorded_steps(steps: int) -> set[int]:
    """The 0-based steps whose x_t and x_0 are kept: all of them up to ``MAX_FRAMES``, else evenly spaced."""
    return set(np.linspace(0, steps - 1, min(MAX_FRAMES, steps)).round().astype(int).tolist())


def _sample(
    pipe,
    *,
    sampler: str,
    steps: int,
    n: int,
    seed: int,
    class_name: str | None = None,
    guidance_scale: float | None = None,
) -> Iterator[list[Frame] | torch.Tensor]:
    """Run the pipeline in a worker thread; yield the recorded frames as they arrive, in batches, then the
    final images (B, C, H, W) in [0, 1]."""
    record = recorded_steps(steps)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def on_step_end(_pipe, i: int, t: int, tensors: dict[str, torch.Tensor]):
        if stop.is_set():
            raise _Cancelled
        if i in record:
            events.put(
                Frame(
                    i + 1, steps, t, _to_uint8(tensors["sample"]), _to_uint8(tensors["pred_original_sample"])
                )
            )

    def work():
        try:
            images = pipe(
                batch_size=n,
                generator=torch.Generator("cpu").manual_seed(seed),
                num_inference_steps=steps,
                sampler=sampler,
                output_type="pt",
                callback_on_step_end=on_step_end,
                **(
                    {}
                    if class_name is None
                    else {"class_labels": class_name, "guidance_scale": guidance_scale}
                ),
            ).images
            events.put(images)
        except Exception as exc:  # handed to the consumer, which raises it
            events.put(exc)

    worker = threading.Thread(target=work, name="ddpm-hub-space-sampler", daemon=True)
    worker.start()
    # One yield carries the frames that arrived since the last one (the page shows the newest), so a slow
    # page never falls behind; but at most `span` of them, so even a fast run shows LIVE_UPDATES pictures.
    span = max(1, len(record) // LIVE_UPDATES)
    try:
        done = None
        while done is None:
            batch = [events.get()]
            while isinstance(batch[-1], Frame) and len(batch) < span:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            if not isinstance(batch[-1], Frame):
                done = batch.pop()  # the final images, or the worker's exception
            if batch:
                yield batch
        if isinstance(done, Exception):
            raise done
        yield done
    finally:
        stop.set()


def check_class(loaded: Loaded, digit, guidance_scale) -> tuple[str | None, float | None]:
    """The class name and guidance scale to sample with: (None, None) for "any" (or nothing asked); a
    ``SpaceInputError`` for a class the model does not have, or a class asked of an unconditional model."""
    digit = ANY_CLASS if digit is None else str(digit).strip()
    if digit in ("", ANY_CLASS):
        return None, None
    names = loaded.pipe.class_names
    if names is None:
        raise SpaceInputError(
            f'{loaded.ref} is not class-conditional, so it cannot draw a chosen class; pick "{ANY_CLASS}" or '
            f'the model "{COND_MODEL_LABEL}"'
        )
    if digit not in names:
        raise SpaceInputError(f"{loaded.ref} has no class {digit!r}; its classes are {', '.join(names)}")
    if guidance_scale is None:
        guidance_scale = DEFAULT_GUIDANCE_SCALE
    try:
        guidance_scale = float(guidance_scale)
    except (TypeError, ValueError):
        raise SpaceInputError(f"Guidance must be a number, got {guidance_scale!r}") from None
    if not 0 <= guidance_scale <= MAX_GUIDANCE:
        raise SpaceInputError(
            f"Guidance must be between 0 and {MAX_GUIDANCE:g} (1: none), got {guidance_scale:g}"
        )
    return digit, guidance_scale


def generate_stream(
    model,
    revision,
    sampler,
    steps,
    num_images,
    seed,
    digit=ANY_CLASS,
    guidance_scale=None,
    *,
    allow_local: bool,
    default: ModelRef,
) -> Iterator[list[Frame] | Run]:
    """Check the request, load the model, sample: yield batches of frames while sampling, then the ``Run``."""
    n = _checked_int("Number of images", num_images, 1, MAX_IMAGES)
    seed = _checked_int("Seed", seed, 0, MAX_SEED)
    samplers = sampler_names()
    if sampler not in samplers:
        raise SpaceInputError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers)}")
    loaded = load_model(resolve_model(model, revision, allow_local=allow_local, default=default))
    try:
        steps = resolve_steps(sampler, steps, loaded.T)
    except ValueError as exc:
        raise SpaceInputError(f"Steps: {exc}") from exc
    class_name, guidance_scale = check_class(loaded, digit, guidance_scale)
    frames: list[Frame] = []
    start = time.perf_counter()
    try:
        for item in _sample(
            loaded.pipe,
            sampler=sampler,
            steps=steps,
            n=n,
            seed=seed,
            class_name=class_name,
            guidance_scale=guidance_scale,
        ):
            if isinstance(item, list):
                frames.extend(item)
                yield item
            else:
                images = _to_uint8(item * 2 - 1)
    except ValueError as exc:  # the pipeline refuses to return a broken image (NaN ...): say so
        raise SpaceInputError(f"Sampling failed: {exc}") from exc
    run = Run(loaded, sampler, steps, seed, images, frames, time.perf_counter() - start)
    run.class_name, run.guidance_scale = class_name, guidance_scale
    run.command = reproduce_command(run, default)
    yield run


def generate(
    model,
    revision,
    sampler,
    steps,
    num_images,
    seed,
    digit=ANY_CLASS,
    guidance_scale=None,
    *,
    allow_local: bool,
    default: ModelRef,
):
    """Sample ``num_images`` images (of class ``digit`` with classifier-free guidance ``guidance_scale``, for
    a class-conditional model); return (grid, individual images, trajectory, summary) (the API)."""
    run = None
    for item in generate_stream(
        model,
        revision,
        sampler,
        steps,
        num_images,
        seed,
        digit,
        guidance_scale,
        allow_local=allow_local,
        default=default,
    ):
        run = item
    picks = np.linspace(0, len(run.frames) - 1, min(API_TRAJECTORY_FRAMES, len(run.frames)))
    trajectory: list[tuple[Image.Image, str]] = []
    for k in sorted(set(picks.round().astype(int).tolist())):
        frame = run.frames[k]
        trajectory.append(
            (_enlarge(_grid(frame.sample), 256), f"x after step {frame.step}/{frame.steps} (t={frame.t})")
        )
        trajectory.append((_enlarge(_grid(frame.x0), 256), f"predicted x0 at t={frame.t}"))
    singles = [
        (_enlarge(_grid(img[None], padding=0), 128), f"image {k + 1}") for k, img in enumerate(run.images)
    ]
    return grid_image(run), singles, trajectory, run.summary()


def grid_image(run: Run) -> Image.Image:
    """The final grid as the browser shows it: ``ddpm-hub sample``'s grid, enlarged by a whole factor."""
    return _enlarge(_grid(run.images), 512)


def live_image(frame: Frame) -> Image.Image:
    """x_t (left) and the predicted x_0 (right) of every image, after ``frame.step``."""
    return _side_by_side(_enlarge(_grid(frame.sample), 320), _enlarge(_grid(frame.x0), 320))


def live_caption(frame: Frame) -> str:
    return (
        f"**Step {frame.step} of {frame.steps}** (t = {frame.t}). Left: x_t, the images being denoised. "
        "Right: the model's current guess of the finished images (predicted x_0)."
    )


def follow_image(frame: Frame, index: int) -> Image.Image:
    """One image, large: its x_t (left) and predicted x_0 (right) after ``frame.step``."""
    return _side_by_side(
        _enlarge(_grid(frame.sample[index : index + 1], padding=0), 280),
        _enlarge(_grid(frame.x0[index : index + 1], padding=0), 280),
        gap=16,
    )


def follow_caption(frame: Frame, index: int) -> str:
    return (
        f"Image {index + 1}, **step {frame.step} of {frame.steps}** (t = {frame.t}): "
        "left x_t, right the predicted x_0."
    )


def frame_at(frames: list[Frame], step: int) -> Frame:
    """The last recorded frame at or before ``step`` (every step is recorded up to ``MAX_FRAMES`` steps)."""
    earlier = [f for f in frames if f.step <= step]
    return earlier[-1] if earlier else frames[0]


def reproduce_command(run: Run, default: ModelRef) -> str:
    """A ``ddpm-hub sample`` line that makes the same grid (the Hub model pinned to the commit used)."""
    ref = run.model.ref
    fetch = ""
    if ref.kind == "hub":
        model = ref.location
    elif Path(ref.location) in (DEFAULT_MODEL_DIR, COND_MODEL_DIR):
        bundled = Path(ref.location).name
        space = os.environ.get("SPACE_ID")  # set by Hugging Face Spaces: the bundled model is in its repo
        if space:
            folder = space.split("/")[-1]
            fetch = f"hf download {space} --repo-type space --include '{bundled}/*' --local-dir {folder} && "
            model = f"{folder}/{bundled}"
        else:
            model = f"spaces/{bundled}"  # a bundled model, in a ddpm-hub checkout
    else:
        model = ref.location
    revision = run.model.commit or ref.revision
    parts = [fetch + "ddpm-hub sample", _quote(model)]
    if revision:
        parts += ["--revision", revision]
    parts += [
        f"--sampler {run.sampler}",
        f"--steps {run.steps}",
        f"--num-images {run.n}",
        f"--seed {run.seed}",
    ]
    if run.class_name is not None:
        parts += [f"--class {_quote(run.class_name)}", f"--guidance-scale {run.guidance_scale:g}"]
    parts += ["--out grid.png"]
    return " ".join(parts)


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./@:+-]+", text) else "'" + text.replace("'", "'\\''") + "'"


_FILES = Path(tempfile.gettempdir()) / "ddpm-hub-space"


def _save(make, name: str) -> str:
    """Write a download into a fresh folder (``make(path)``); folders older than an hour are removed."""
    _FILES.mkdir(exist_ok=True)
    now = time.time()
    for old in _FILES.iterdir():
        if now - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    folder = _FILES / uuid.uuid4().hex
    folder.mkdir()
    path = folder / name
    make(path)
    return str(path)


def grid_file(run: Run) -> str:
    name = f"ddpm-hub-{run.sampler}-{run.steps}steps-seed{run.seed}.png"
    return _save(lambda path: grid_image(run).save(path), name)


def gif_file(run: Run, index: int) -> str:
    """The followed image's trajectory as an animated GIF (the final frame held for two seconds)."""
    frames = [follow_image(f, index) for f in run.frames]
    durations = [max(40, 4000 // len(frames))] * (len(frames) - 1) + [2000]

    def write(path: Path) -> None:
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)

    return _save(write, f"ddpm-hub-image{index + 1}-seed{run.seed}.gif")


# ---------------------------------------------------------------------------------------------- explain


def _forward_coefficients(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) as the scheduler's own add_noise applies them.

    q(x_t | x_0) is x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, so add_noise(x_0=1, eps=0, t)
    is the signal kept and add_noise(x_0=0, eps=1, t) the noise added.
    """
    ones = torch.ones(len(timesteps), dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    return scheduler.add_noise(ones, zeros, timesteps), scheduler.add_noise(zeros, ones, timesteps)


def _schedule_frames(loaded: Loaded):
    scheduler = loaded.pipe.scheduler
    T = loaded.T
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
        f"**{loaded.describe()}**: `{type(scheduler).__name__}`, T={T}, "
        f"`beta_schedule={config.get('beta_schedule')}`, beta from {betas[0].item():.3g} to "
        f"{betas[-1].item():.3g}. At t=T-1 the image keeps sqrt(alpha_bar)={signal[-1].item():.2g} of its "
        "signal, so sampling starts from almost pure noise."
    )
    return beta_df, curves_df, summary


def schedule(model, revision, *, allow_local: bool, default: ModelRef):
    """The loaded model's schedule: a beta_t plot, an alpha_bar / signal / noise plot, and a summary."""
    return _schedule_frames(
        load_model(resolve_model(model, revision, allow_local=allow_local, default=default))
    )


def _mnist_image(index: int) -> Image.Image:
    return _mnist5k()[index]["image"]


_MNIST = None


def _mnist5k():
    global _MNIST
    if _MNIST is None:
        from datasets import load_dataset

        _MNIST = load_dataset("parquet", data_files=str(MNIST5K), split="train")
    return _MNIST


def prepare_upload(image) -> tuple[Image.Image, list[str]]:
    """A visitor's image as greyscale or RGB at its own size (at most ``MAX_UPLOAD_SIDE``), and what was
    converted on the way, in words."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    notes = []
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        flat = Image.new("RGBA", image.size, "white")
        flat.alpha_composite(image.convert("RGBA"))
        image = flat.convert("L" if image.mode == "LA" else "RGB")
        notes.append("transparent parts shown on white")
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).round().astype(np.uint8))
        notes.append("16/32-bit greyscale scaled to 8 bits")
    elif image.mode not in ("L", "RGB"):
        notes.append(f"{image.mode} converted to {'greyscale' if image.mode == '1' else 'RGB'}")
        image = image.convert("L" if image.mode == "1" else "RGB")
    if max(image.size) > MAX_UPLOAD_SIDE:
        before = image.size
        image = image.copy()
        image.thumbnail((MAX_UPLOAD_SIDE, MAX_UPLOAD_SIDE), Image.LANCZOS)
        notes.append(
            f"scaled down from {before[0]}x{before[1]} to {image.width}x{image.height} "
            f"(at most {MAX_UPLOAD_SIDE} pixels a side keeps the page fast)"
        )
    return image, notes


def _to_model_space(image: Image.Image) -> torch.Tensor:
    """A greyscale or RGB PIL image to a (1, C, H, W) tensor in [-1, 1], at its own size."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def forward_process(model, revision, image, dataset_index, t, seed, *, allow_local: bool, default: ModelRef):
    """q(x_t | x_0) on an uploaded image (or MNIST-5k digit ``dataset_index``): (x_0 | eps | x_t) and a summary.

    The image keeps its colour and size (up to ``MAX_UPLOAD_SIDE``): the forward process is the same per
    pixel whatever the model was trained on; the summary says what was converted.
    """
    loaded = load_model(resolve_model(model, revision, allow_local=allow_local, default=default))
    T = loaded.T
    t = _checked_int("t", t, 0, T - 1, f" (this model has T={T})")
    seed = _checked_int("Noise seed", seed, 0, MAX_SEED)
    if image is None:
        index = _checked_int("Dataset image", dataset_index, 0, MNIST5K_SIZE - 1)
        image, source = _mnist_image(index), f"MNIST-5k digit #{index}"
    else:
        image, notes = prepare_upload(image)
        colour = "colour" if image.mode == "RGB" else "greyscale"
        source = (
            f"your image ({colour}, {image.width}x{image.height}" + "".join(f"; {n}" for n in notes) + ")"
        )
    x0 = _to_model_space(image)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    timesteps = torch.tensor([t])
    xt = loaded.pipe.scheduler.add_noise(x0, noise, timesteps)  # seed: "Add noise to images"
    signal, noise_scale = _forward_coefficients(loaded.pipe.scheduler, timesteps)
    panels = _to_uint8(torch.cat([x0, noise.clamp(-1, 1), xt]))
    strip = _enlarge(_grid(panels, nrow=3, padding=2), 600)
    summary = (
        f"{source} at t={t}: x_t = {signal.item():.4f} x_0 + {noise_scale.item():.4f} eps "
        f"(left to right: x_0, eps, x_t; model {loaded.describe()}, T={T})."
    )
    return strip, summary


# ---------------------------------------------------------------------------------------------- the UI


INTRO = """# Watch a diffusion model draw
From pure noise, a little less at each step: press **Generate** and watch the noisy images (x_t) and the
model's guess of the result (x_0) sharpen."""


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
    default = operator_default(default_model)
    samplers = sampler_names()
    initial_sampler = "sde-dpm-solver++" if "sde-dpm-solver++" in samplers else samplers[0]
    initial_T = DEFAULT_NUM_TRAIN_TIMESTEPS  # until a model is loaded
    concurrency = concurrency_limit or int(os.environ.get("DDPM_HUB_SPACE_CONCURRENCY", "2"))
    opts = dict(allow_local=allow_local, default=default)
    default_label = default_model_label(default)
    low, initial_steps, _ = step_bounds(initial_sampler, initial_T)

    def _message(text: str | None):
        return gr.update(value=f"⚠️ {text}" if text else "", visible=bool(text))

    with gr.Blocks(title="ddpm-hub: watch a diffusion model draw", delete_cache=(3600, 3600)) as demo:
        current = gr.State((default_label, ""))  # the model and revision that last loaded
        last_run = gr.State(None)
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Row(equal_height=False):
            model = gr.Dropdown(
                [default_label, *([COND_MODEL_LABEL] if COND_MODEL_DIR.is_dir() else []), *presets],
                value=default_label,
                allow_custom_value=True,
                label="Model",
                info="pick one, or type a Hub model id (namespace/name)"
                + ("; a folder on this server also works" if allow_local else ""),
                scale=3,
                min_width=240,
                elem_id="model",
            )
            revision = gr.Textbox(
                label="Revision (optional)",
                placeholder="main: or a branch, tag, commit",
                scale=1,
                min_width=120,
                elem_id="revision",
            )
        message = gr.Markdown(visible=False, elem_id="message")
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280, elem_id="controls"):
                    sampler = gr.Dropdown(
                        [(sampler_label(s), s) for s in samplers],
                        value=initial_sampler,
                        label="Sampler",
                        elem_id="sampler",
                    )
                    steps = gr.Slider(
                        min(get_samplers()[s].min_steps for s in samplers),
                        MAX_STEPS,
                        value=initial_steps,
                        step=1,
                        label="Steps",
                        info=f"this sampler: {low} to T",
                        elem_id="steps",
                    )
                    with gr.Row():
                        num_images = gr.Slider(
                            1,
                            MAX_IMAGES,
                            value=16,
                            step=1,
                            label="Images",
                            min_width=120,
                            elem_id="num-images",
                        )
                        seed = gr.Number(
                            0,
                            label="Seed",
                            precision=0,
                            minimum=0,
                            maximum=MAX_SEED,
                            min_width=100,
                            elem_id="seed",
                        )
                    with gr.Row():  # shown when the model is class-conditional
                        digit = gr.Dropdown(
                            [ANY_CLASS],
                            value=ANY_CLASS,
                            label="Digit",
                            info="the class to draw",
                            allow_custom_value=True,  # the choices are the loaded model's classes
                            visible=False,
                            min_width=120,
                            elem_id="digit",
                        )
                        guidance = gr.Slider(
                            0,
                            MAX_GUIDANCE,
                            value=DEFAULT_GUIDANCE_SCALE,
                            step=0.5,
                            label="Guidance",
                            info="1: none; higher: more like the class",
                            visible=False,
                            min_width=120,
                            elem_id="guidance",
                        )
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2, min_width=280):
                    grid = gr.Image(
                        show_label=False,
                        type="pil",
                        format="png",
                        interactive=False,
                        height=420,
                        buttons=["fullscreen"],
                        placeholder="Press Generate: the images appear here while they are drawn",
                        elem_id="grid",
                    )
                    summary = gr.Markdown(elem_id="generate-summary")
                    with gr.Row(equal_height=True):
                        reproduce = gr.Textbox(
                            label="Same grid on your machine",
                            interactive=False,
                            buttons=["copy"],
                            lines=1,
                            max_lines=4,
                            scale=3,
                            min_width=200,
                            elem_id="reproduce",
                        )
                        download_grid = gr.DownloadButton(
                            "Download grid (PNG)",
                            interactive=False,
                            size="md",
                            scale=1,
                            min_width=140,
                            elem_id="download-grid",
                        )
            gr.Markdown("### Follow one image through the steps", elem_id="follow-title")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=280):
                    trajectory = gr.Image(
                        show_label=False,
                        type="pil",
                        format="png",
                        interactive=False,
                        buttons=["fullscreen"],
                        placeholder="x_t and the predicted x_0 of one image, step by step",
                        elem_id="trajectory",
                    )
                    trajectory_caption = gr.Markdown(elem_id="trajectory-caption")
                with gr.Column(scale=1, min_width=240):
                    follow = gr.Slider(1, 16, value=1, step=1, label="Image", elem_id="follow")
                    step_slider = gr.Slider(
                        1, initial_steps, value=initial_steps, step=1, label="Step", elem_id="step"
                    )
                    download_gif = gr.DownloadButton(
                        "Download animation (GIF)", interactive=False, size="md", elem_id="download-gif"
                    )
            with gr.Accordion("Individual images (click one to follow it)", open=False):
                singles = gr.Gallery(
                    show_label=False,
                    columns=8,
                    height="auto",
                    format="png",
                    allow_preview=False,
                    buttons=["download_all"],
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
                    x_lim=[0, initial_T],
                    height=300,
                    min_width=280,
                    elem_id="beta-plot",
                )
                curves_plot = gr.LinePlot(
                    x="t",
                    y="value",
                    color="curve",
                    x_title="t",
                    y_title="",
                    title="alpha_bar_t, signal and noise",
                    x_lim=[0, initial_T],
                    height=300,
                    min_width=280,
                    elem_id="curves-plot",
                )
            gr.Markdown(
                "### The forward process q(x_t | x_0)\nPick a digit of the built-in MNIST-5k or upload an "
                "image (it keeps its colour and size), and move t: `scheduler.add_noise` makes x_t."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    source = gr.Radio(
                        [SOURCE_DIGIT, SOURCE_UPLOAD], value=SOURCE_DIGIT, label="Image", elem_id="source"
                    )
                    dataset_index = gr.Slider(
                        0, MNIST5K_SIZE - 1, value=0, step=1, label="MNIST-5k digit", elem_id="dataset-index"
                    )
                    upload = gr.Image(
                        label="Your image",
                        type="pil",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=200,
                        elem_id="upload",
                    )
                    t_slider = gr.Slider(0, initial_T - 1, value=100, step=1, label="t", elem_id="t")
                    noise_seed = gr.Number(
                        0, label="Noise seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="noise-seed"
                    )
                with gr.Column(scale=2, min_width=280):
                    forward_image = gr.Image(
                        show_label=False,
                        type="pil",
                        format="png",
                        interactive=False,
                        height=260,
                        elem_id="forward",
                    )
                    forward_summary = gr.Markdown(elem_id="forward-summary")

        # -- the API: stable names and signatures; errors are raised (gradio_client gets an AppError)
        with gr.Row(visible=False):
            api_grid = gr.Image(type="pil", format="png")
            api_singles = gr.Gallery(format="png")
            api_trajectory = gr.Gallery(format="png")
            api_summary = gr.Markdown()
            api_forward = gr.Image(type="pil", format="png")
            api_forward_summary = gr.Markdown()
            api_beta, api_curves = gr.LinePlot(x="t", y="value"), gr.LinePlot(x="t", y="value")
            api_schedule_summary = gr.Markdown()
            api_generate = gr.Button()
            api_schedule = gr.Button()
            api_forward_button = gr.Button()

        def _api_generate(model, revision, sampler, steps, num_images, seed, digit, guidance_scale):
            return generate(model, revision, sampler, steps, num_images, seed, digit, guidance_scale, **opts)

        def _api_schedule(model, revision):
            return schedule(model, revision, **opts)

        def _api_forward(model, revision, image, dataset_index, t, seed):
            return forward_process(model, revision, image, dataset_index, t, seed, **opts)

        api_generate.click(
            _api_generate,
            [model, revision, sampler, steps, num_images, seed, digit, guidance],
            [api_grid, api_singles, api_trajectory, api_summary],
            api_name="generate",
        )
        api_schedule.click(
            _api_schedule,
            [model, revision],
            [api_beta, api_curves, api_schedule_summary],
            api_name="schedule",
        )
        api_forward_button.click(
            _api_forward,
            [model, revision, upload, dataset_index, t_slider, noise_seed],
            [api_forward, api_forward_summary],
            api_name="forward_process",
        )

        # -- the page: handlers never raise; what went wrong goes to `message`, every control keeps working

        model_outputs = [
            model,
            revision,
            current,
            message,
            steps,
            t_slider,
            beta_plot,
            curves_plot,
            schedule_summary,
            digit,
            guidance,
        ]

        def _on_model_change(model_value, revision_value, sampler_value, t_value, current_value):
            try:
                loaded = load_model(resolve_model(model_value, revision_value, **opts))
            except SpaceInputError as exc:
                previous_model, previous_revision = current_value
                still = previous_model + (f" @ {previous_revision}" if previous_revision else "")
                return (
                    gr.update(value=previous_model),
                    gr.update(value=previous_revision),
                    current_value,
                    _message(f"{exc.message.rstrip('.')}. Still using: {still}."),
                    *[gr.update()] * 7,
                )
            T = loaded.T
            low, value, high = step_bounds(sampler_value, T)
            beta_df, curves_df, text = _schedule_frames(loaded)
            return (
                gr.update(),
                gr.update(),
                (model_value, revision_value or ""),
                _message(None),
                gr.update(minimum=low, maximum=high, value=value, info=f"this sampler: {low} to T={T}"),
                gr.update(maximum=T - 1, value=min(int(t_value), T - 1)),
                gr.update(value=beta_df, x_lim=[0, T]),
                gr.update(value=curves_df, x_lim=[0, T]),
                text,
                *_class_controls(loaded),
            )

        def _class_controls(loaded: Loaded):
            """The digit picker and guidance slider: shown, with the model's classes, for a conditional model."""
            names = loaded.pipe.class_names
            if names is None:
                return gr.update(visible=False, value=ANY_CLASS), gr.update(visible=False)
            return gr.update(visible=True, choices=[ANY_CLASS, *names], value=ANY_CLASS), gr.update(
                visible=True
            )

        model_inputs = [model, revision, sampler, t_slider, current]
        model_events = [
            trigger(_on_model_change, model_inputs, model_outputs, api_visibility="private")
            for trigger in (model.input, revision.submit, revision.blur)
        ]
        demo.load(_on_model_change, model_inputs, model_outputs, api_visibility="private")

        def _on_sampler_change(model_value, revision_value, sampler_value):
            try:
                T = load_model(resolve_model(model_value, revision_value, **opts)).T
            except SpaceInputError:
                T = initial_T
            low, value, high = step_bounds(sampler_value, T)
            return gr.update(minimum=low, maximum=high, value=value, info=f"this sampler: {low} to T={T}")

        sampler.change(_on_sampler_change, [model, revision, sampler], [steps], api_visibility="private")

        run_outputs = [
            message,
            grid,
            summary,
            trajectory,
            trajectory_caption,
            last_run,
            step_slider,
            follow,
            reproduce,
            download_grid,
            download_gif,
            singles,
        ]

        def _generate_page(
            model_value, revision_value, sampler_value, steps_value, n, seed_value, digit_value, scale, index
        ):
            updates = {component: gr.update() for component in run_outputs}
            try:
                stream = generate_stream(
                    model_value,
                    revision_value,
                    sampler_value,
                    steps_value,
                    n,
                    seed_value,
                    digit_value,
                    scale,
                    **opts,
                )
                try:  # the image followed: the one chosen before, if this run has it
                    index = int(index) - 1 if 1 <= int(index) <= int(n) else 0
                except (TypeError, ValueError):
                    index = 0
                for item in stream:
                    if isinstance(item, list):
                        frame = item[-1]
                        yield {
                            **updates,
                            message: _message(None),
                            grid: live_image(frame),
                            summary: live_caption(frame),
                            trajectory: follow_image(frame, index),
                            trajectory_caption: follow_caption(frame, index),
                        }
                    else:
                        run = item
            except SpaceInputError as exc:
                yield {**updates, message: _message(exc.message)}
                return
            last = run.frames[-1]
            yield {
                message: _message(None),
                grid: grid_image(run),
                summary: run.summary(),
                trajectory: follow_image(last, index),
                trajectory_caption: follow_caption(last, index),
                last_run: run,
                step_slider: gr.update(maximum=run.steps, value=run.steps),
                follow: gr.update(maximum=max(run.n, 2), value=index + 1, interactive=run.n > 1),
                reproduce: run.command,
                download_grid: gr.update(value=grid_file(run), interactive=True),
                download_gif: gr.update(value=gif_file(run, index), interactive=True),
                singles: [
                    (_enlarge(_grid(img[None], padding=0), 112), f"image {k + 1}")
                    for k, img in enumerate(run.images)
                ],
            }

        go.click(
            _generate_page,
            [model, revision, sampler, steps, num_images, seed, digit, guidance, follow],
            run_outputs,
            api_visibility="private",
            show_progress="hidden",
        )

        def _show_step(run: Run | None, index, step):
            if run is None:
                return gr.update(), gr.update()
            index = min(int(index), run.n) - 1
            frame = frame_at(run.frames, int(step))
            return follow_image(frame, index), follow_caption(frame, index)

        step_slider.change(
            _show_step,
            [last_run, follow, step_slider],
            [trajectory, trajectory_caption],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )

        def _follow(run: Run | None, index, step):
            if run is None:
                return gr.update(), gr.update(), gr.update()
            picture, caption = _show_step(run, index, step)
            return picture, caption, gr.update(value=gif_file(run, min(int(index), run.n) - 1))

        follow.change(
            _follow,
            [last_run, follow, step_slider],
            [trajectory, trajectory_caption, download_gif],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )

        def _pick(evt: gr.SelectData):
            return evt.index + 1

        singles.select(_pick, None, follow, api_visibility="private").then(
            _follow,
            [last_run, follow, step_slider],
            [trajectory, trajectory_caption, download_gif],
            api_visibility="private",
            show_progress="hidden",
        )

        # -- Explain: the digit and the upload are two sources, the radio says which one is shown

        def _forward_page(model_value, revision_value, source_value, image, index, t, noise):
            try:
                picture, text = forward_process(
                    model_value,
                    revision_value,
                    image if source_value == SOURCE_UPLOAD else None,
                    index,
                    t,
                    noise,
                    **opts,
                )
            except SpaceInputError as exc:
                return gr.update(), f"⚠️ {exc.message}"
            if source_value == SOURCE_UPLOAD and image is None:
                text = "No image uploaded yet, so the MNIST digit is shown. " + text
            return picture, text

        forward_inputs = [model, revision, source, upload, dataset_index, t_slider, noise_seed]
        forward_outputs = [forward_image, forward_summary]
        redraw = dict(api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        for trigger in (t_slider.change, noise_seed.change, source.change):
            trigger(_forward_page, forward_inputs, forward_outputs, **redraw)
        for event in model_events:  # another model: its forward process (t may not have moved)
            event.then(_forward_page, forward_inputs, forward_outputs, **redraw)
        dataset_index.change(lambda: SOURCE_DIGIT, None, source, api_visibility="private").then(
            _forward_page, forward_inputs, forward_outputs, **redraw
        )
        upload.upload(lambda: SOURCE_UPLOAD, None, source, api_visibility="private").then(
            _forward_page, forward_inputs, forward_outputs, **redraw
        )
        upload.clear(lambda: SOURCE_DIGIT, None, source, api_visibility="private")
        demo.load(_forward_page, forward_inputs, forward_outputs, api_visibility="private")

    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def operator_default(default_model: str | Path | None) -> ModelRef:
    """The model used when a visitor names none: ``default_model`` (a folder, or a Hub repo id), else the repo
    in ``DEFAULT_MODEL_REPO_FILE`` (a deployed Space's ``--model``), else the bundled ``DEFAULT_MODEL_DIR``."""
    if default_model is None and DEFAULT_MODEL_REPO_FILE.is_file():
        default_model = DEFAULT_MODEL_REPO_FILE.read_text().strip()
    return resolve_model(
        str(default_model or DEFAULT_MODEL_DIR),
        None,
        allow_local=True,
        default=ModelRef("local", str(DEFAULT_MODEL_DIR)),
    )


def check_default_model(default: ModelRef) -> str | None:
    """Load the operator's default model once before serving (so the first visitor does not wait for it).

    Raises ``SpaceInputError`` when it can never load (no such repo or revision, not a pipeline, pickle-only
    weights, a plugin missing); returns a warning when it cannot load *now* (the Hub unreachable and the model
    not in the cache, a Hub server error): the Space still starts, and says so to each visitor until it can.
    """
    try:
        load_model(default)
    except SpaceInputError as exc:
        if getattr(exc.__cause__, "reason", None) in ("offline_not_cached", "http"):
            return f"the default model {default} cannot be loaded now; visitors who use it get this until it can: {exc.message}"
        raise
    return None


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
    warning = check_default_model(operator_default(args.model))
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    demo = build_demo(default_model=args.model, allow_local_paths=args.allow_local_paths)
    demo.launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    try:
        main()
    except SpaceInputError as exc:  # the operator's --model (or default-model-repo.txt) can never load
        sys.exit(f"{Path(sys.argv[0]).name}: error: the default model: {exc.message}")
