"""Training (seed: "TRAINING (Forward Process)") with 🤗 Accelerate.

The loop is the seed's, line for line::

    for batch in dataloader:
        t = torch.randint(0, T, (bs,))                        # each image its own noise level
        noise = torch.randn_like(batch)
        x_noisy = sqrt_alpha_bar[t] * batch + sqrt_one_minus_alpha_bar[t] * noise
        loss = F.mse_loss(noise, model(x_noisy, t))
        loss.backward(); optimizer.step()

around which Accelerate adds devices, processes, mixed precision and gradient accumulation, and this module
adds what users of diffusers' ``train_unconditional.py`` and lucidrains' ``Trainer`` ask for: an EMA of the
weights (diffusers' ``EMAModel``, warmed-up decay; the schedule tensors live in the scheduler, never in the
model it averages), gradient clipping, learning-rate warmup, optional min-SNR weighting, a guard that stops
on a non-finite loss, sample grids (on the training device), any tracker accelerate supports, checkpoints
(``accelerator.save_state``, written to a temporary folder and renamed, so a killed process never leaves a
half-written ``latest``) and an exact ``--resume`` that continues the run's own config and never unpickles
anything from a checkpoint (see :func:`load_checkpoint`). Ctrl-C saves a checkpoint and prints the command
that continues.

Run it as ``python -m ddpm_hub.train``, ``accelerate launch -m ddpm_hub.train`` or ``ddpm-hub train``, with
``--config FILE`` and ``--key value`` overrides (see ``ddpm_hub.config``). It writes a run folder::

    OUTPUT_DIR/
      pipeline/            the final pipeline (EMA weights): ddpm_hub.load_pipeline(OUTPUT_DIR)
      checkpoints/checkpoint-STEP/   accelerator.save_state (model, optimizer, lr, RNG) + EMA (safetensors)
                                     + train_state.json (step, data position, loss history)
      samples/step-STEP.png          sample grids during training
      logs/                the trackers' files (TensorBoard: loss, lr, images/s, sample grids)
      config.yaml  samples.png  loss.png  train_info.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from accelerate.utils import load as accelerate_load
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import __version__
from .conditioning import check_backbone_supports
from .config import (
    ConfigError,
    TrainConfig,
    check_resume,
    config_from_argv,
    describe,
    run_config_file,
    saved_run_config,
    tracker_names,
)
from .data import DataError, ShardedBatchSampler, load_images, random_flip
from .hub import HubPushError, push, write_model_card
from .images import make_grid
from .pipeline import DDPMHubPipeline, pipeline_requirements
from .plugins import PluginError, check_backbone, get_sampler, one_line_warnings, provider
from .samplers import resolve_steps
from .scheduler import DDPMHubScheduler

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving the bad weights."""


# --------------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run, ``(step, path)`` sorted by step.

    A checkpoint folder only gets its final name ``checkpoint-STEP`` once everything is written (it is
    written as ``.tmp-checkpoint-STEP`` and renamed), so every listed one is loadable.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))
    ]
    return sorted(found)


def resolve_checkpoint(run_dir: str | Path, resume: str) -> Path | None:
    """``latest`` -> the newest complete checkpoint of ``run_dir`` (None if it has none); else a checkpoint path."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(resume).expanduser()
    if path.is_dir() and not CHECKPOINT_RE.match(path.name) and list_checkpoints(path):
        return list_checkpoints(path)[-1][1]  # a run folder: its latest checkpoint
    if not path.is_dir() or not CHECKPOINT_RE.match(path.name):
        raise ConfigError(
            f"resume={resume!r} is neither 'latest' nor a checkpoint folder (checkpoints/checkpoint-STEP) nor a run "
            f"folder with checkpoints"
        )
    return path


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from (a missing, truncated or foreign file); the message names it."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) stopped training; the message says what was saved and the command that resumes."""


class TrainState:
    """The loop's own state, saved in every checkpoint as JSON: step, data position, loss history, time spent."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps done
        self.micro_step = 0  # batches consumed per process: the data position
        self.images_seen = 0
        self.wall_time_s = 0.0
        self.loss_history: list[tuple[int, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])
        self.images_seen = int(state["images_seen"])
        self.wall_time_s = float(state["wall_time_s"])
        self.loss_history = [(int(s), float(v)) for s, v in state["loss_history"]]


#: ddpm-hub's own files in a checkpoint, beside accelerate's model.safetensors, optimizer.bin, scheduler.bin and
#: random_states_N.pkl: nothing in a checkpoint is ever unpickled (see load_checkpoint).
TRAIN_STATE_NAME = "train_state.json"
EMA_WEIGHTS_NAME = "ema.safetensors"
EMA_STATE_NAME = "ema.json"


def save_checkpoint(
    accelerator, run_dir: Path, step: int, total_limit: int | None, state=None, ema=None, model=None
) -> Path:
    """``accelerator.save_state`` into checkpoints/checkpoint-STEP, atomically, then prune to ``total_limit``.

    ``accelerator.save_state`` writes the model (safetensors), the optimizer and lr schedule and each process's
    RNG state; the main process adds ``state`` (TrainState) as JSON and ``ema`` (the EMA weights of
    ``model``'s parameters) as safetensors plus JSON. Every process writes into ``.tmp-checkpoint-STEP``;
    once all have finished, the main process renames the folder. SIGKILL at any moment leaves either the old
    set of checkpoints or the new one, and a stale ``.tmp-*`` folder that the next save removes.
    """
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"{TMP_PREFIX}checkpoint-{step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if state is not None:
            (tmp / TRAIN_STATE_NAME).write_text(json.dumps(state.state_dict()) + "\n")
        if ema is not None:
            _save_ema(ema, accelerator.unwrap_model(model), tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (a finished run re-saved): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        if total_limit is not None:
            for _, old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _save_ema(ema, model: torch.nn.Module, folder: Path) -> None:
    """diffusers' EMAModel.state_dict(), split into its weights (safetensors, by parameter name) and the rest (JSON)."""
    state = ema.state_dict()
    names = [name for name, _ in model.named_parameters()]
    shadow = state.pop("shadow_params")
    save_file(
        {name: p.detach().contiguous().cpu() for name, p in zip(names, shadow, strict=True)},
        str(folder / EMA_WEIGHTS_NAME),
    )
    (folder / EMA_STATE_NAME).write_text(json.dumps(state) + "\n")


def _previous(checkpoint: Path) -> str:
    """' or resume from the previous checkpoint with --resume PATH' (empty when there is none)."""
    m = CHECKPOINT_RE.match(checkpoint.name)
    older = [p for s, p in list_checkpoints(checkpoint.parent.parent) if m and s < int(m.group(1))]
    return f"; resume from the previous one with --resume {older[-1]}" if older else ""


def verify_checkpoint(
    checkpoint: Path, model: torch.nn.Module, ema, process_index: int = 0, num_processes: int = 1
) -> dict[str, Any]:
    """Read every file of ``checkpoint`` without unpickling anything; return ddpm-hub's own state from it.

    safetensors and JSON are data formats; accelerate's ``.bin``/``.pkl`` files (optimizer, lr schedule, RNG
    states) are read with ``torch.load(weights_only=True)`` plus the numpy types accelerate allows, the same
    restricted loader that ``accelerator.load_state`` then uses. A missing, truncated or foreign file stops
    with CheckpointError naming the checkpoint and the file; a model whose tensors do not fit says so in one
    line.
    """
    legacy = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if legacy:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds {', '.join(legacy)}: a pickle, which ddpm-hub never loads (older "
            f"versions stored the EMA and train state that way, and a pickle can run code). Start a new run, "
            f"or remove the file if you did not expect it"
        )
    required = ["model.safetensors", "optimizer.bin", "scheduler.bin", f"random_states_{process_index}.pkl"]
    required.append(TRAIN_STATE_NAME)
    if ema is not None:
        required += [EMA_WEIGHTS_NAME, EMA_STATE_NAME]
    missing = [name for name in required if not (checkpoint / name).is_file()]
    saved_by = len(list(checkpoint.glob("random_states_*.pkl")))
    if saved_by and saved_by != num_processes:
        raise CheckpointError(
            f"checkpoint {checkpoint} was written by {saved_by} process(es), this resume runs {num_processes}; "
            f"resume with {saved_by} (the global batch is the per-process batch x processes, so another count "
            f"changes the run)"
        )
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint} lacks {', '.join(missing)}: it is incomplete or was not written by this "
            f"version of ddpm-hub{_previous(checkpoint)}"
        )
    out: dict[str, Any] = {}
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                out[path.name] = load_file(str(path))
            elif path.suffix == ".json":
                out[path.name] = json.loads(path.read_text())
            elif path.suffix in (".bin", ".pkl", ".pt"):
                accelerate_load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt, or a pickle of something other than tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(
                f"cannot read {path.name} of checkpoint {checkpoint}: it is truncated, corrupt or not what "
                f"ddpm-hub writes ({type(exc).__name__}: {first[:200]}){_previous(checkpoint)}"
            ) from exc

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # accelerate saves the model as prepared: under data parallelism its keys start with "module."
    found = {k.removeprefix("module."): tuple(v.shape) for k, v in out["model.safetensors"].items()}
    differ = [k for k in expected if k in found and found[k] != expected[k]]
    if differ or expected.keys() != found.keys():
        detail = [f"{len(differ)} tensor(s) of another shape"] if differ else []
        if differ:
            detail[0] += (
                f" (e.g. {differ[0]}: checkpoint {list(found[differ[0]])}, config {list(expected[differ[0]])})"
            )
        if expected.keys() - found.keys():
            detail.append(f"{len(expected.keys() - found.keys())} missing")
        if found.keys() - expected.keys():
            detail.append(f"{len(found.keys() - expected.keys())} unexpected")
        raise CheckpointError(
            f"checkpoint {checkpoint} holds another model than this config builds ({', '.join(detail)}); "
            f"resume with the run's own model settings (its config.yaml), or start a new run in another "
            f"--output_dir"
        )
    return out


def load_checkpoint(accelerator, checkpoint: Path, model, ema, state: TrainState) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint`: verified first (nothing is unpickled), then
    ``accelerator.load_state`` (model, optimizer, lr schedule, RNG) and ddpm-hub's own JSON/safetensors state."""
    files = verify_checkpoint(
        checkpoint, accelerator.unwrap_model(model), ema, accelerator.process_index, accelerator.num_processes
    )
    accelerator.load_state(str(checkpoint))
    try:
        state.load_state_dict(files[TRAIN_STATE_NAME])
        if ema is not None:
            weights = files[EMA_WEIGHTS_NAME]
            names = [name for name, _ in accelerator.unwrap_model(model).named_parameters()]
            ema.load_state_dict({**files[EMA_STATE_NAME], "shadow_params": [weights[n] for n in names]})
            ema.to(accelerator.device)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint}: {TRAIN_STATE_NAME} or the EMA state does not hold what ddpm-hub writes "
            f"({type(exc).__name__}: {exc}){_previous(checkpoint)}"
        ) from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------- building blocks


def _check_kwargs(what: str, cls: type, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n in params if n != "self"]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown {what} key(s) {unknown} for {cls.__name__}; allowed: {', '.join(allowed)}"
        )


def build_model(
    config: TrainConfig, channels: int, image_size: int, num_classes: int | None = None
) -> torch.nn.Module:
    """The backbone ``config.backbone`` from the registry, sized to the data unless the config says otherwise;
    class-conditional with ``num_classes`` classes when given (labelled data)."""
    try:
        entry = provider("backbones", config.backbone)
    except ValueError as exc:
        raise ConfigError(f"bad value for backbone: {exc}") from exc
    cls = entry.obj
    kwargs = dict(config.model)
    try:
        _check_kwargs("model", cls, kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{exc}. {_model_hint(config.backbone, cls)}") from None
    if num_classes is not None:
        try:
            check_backbone_supports(cls, config.backbone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if kwargs.setdefault("num_class_embeds", num_classes) != num_classes:
            raise ConfigError(
                f"model.num_class_embeds={kwargs['num_class_embeds']} does not match the {num_classes} classes of "
                "the data; drop model.num_class_embeds to take it from the data"
            )
    elif kwargs.get("num_class_embeds") is not None:
        raise ConfigError(
            "model.num_class_embeds is set but data.label_column is null, so there are no labels to train on; set "
            "data.label_column (auto, or the column's name)"
        )
    params = inspect.signature(cls.__init__).parameters
    for key, value in (("sample_size", image_size), ("in_channels", channels), ("out_channels", channels)):
        if key in params and key not in kwargs:
            kwargs[key] = value
    for key, value in (("sample_size", image_size), ("in_channels", channels)):
        given = kwargs.get(key)
        if (
            given is not None
            and given != value
            and not (isinstance(given, (list, tuple)) and set(given) == {value})
        ):
            raise ConfigError(
                f"model.{key}={given} does not match the data ({channels} channel(s), {image_size}x{image_size} px); "
                f"drop model.{key} to take it from the data, or change data.image_size / data.channels"
            )
    for key in (
        "channel_mult",
        "attention_resolutions",
        "block_out_channels",
        "down_block_types",
        "up_block_types",
    ):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        return cls(**kwargs)
    except Exception as exc:
        if entry.builtin and not isinstance(exc, (TypeError, ValueError)):
            raise
        by = "" if entry.builtin else f" ({entry.who()})"
        raise ConfigError(
            f"cannot build backbone {config.backbone!r}{by} from model={config.model}: {type(exc).__name__}: {exc}"
        ) from exc


def _model_hint(backbone: str, cls: type) -> str:
    """How ``model`` works when the backbone changes, with the backbone's own keys as the example."""
    params = inspect.signature(cls.__init__).parameters.values()
    own = [p for p in params if p.name not in ("self", "sample_size", "in_channels", "out_channels")]
    example = ", ".join(
        f"{p.name}: {p.default!r}" for p in own[:2] if p.default is not inspect.Parameter.empty
    )
    example = example or "KEY: VALUE"
    return (
        f"`model` holds the constructor arguments of backbone {backbone!r} ({cls.__name__}) and is replaced as a whole "
        f"for another backbone: --backbone {backbone} alone starts from {cls.__name__}'s defaults, --model.KEY VALUE "
        f"changes one of them, --model '{{{example}}}' replaces the mapping (in a YAML file: model: next to backbone:)"
    )


def build_scheduler(config: TrainConfig):
    _check_kwargs("scheduler", DDPMHubScheduler, config.scheduler)
    try:
        return DDPMHubScheduler(**config.scheduler)
    except PluginError as exc:  # the plugin's fault, not the config's
        raise ConfigError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"bad scheduler config {config.scheduler}: {exc}") from exc


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW (with weight_decay=0, the seed's Adam); fused where this torch has it, else foreach."""
    kwargs = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def format_count(n: int) -> str:
    """A parameter count as people write it: 812, 12.3k, 0.69M, 35.7M."""
    if n < 1_000:
        return str(n)
    if n < 100_000:
        return f"{n / 1e3:.1f}k"
    if n < 10_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e6:.1f}M"


def _check_plugins_before_the_run_folder(config: TrainConfig, model: torch.nn.Module, T: int) -> None:
    """Run the backbone once and build the samplers the run will use, so that a broken plugin (or a model
    config its backbone cannot run) fails with one line before anything is written."""
    try:
        check_backbone(model, T)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    used = [("final_sampler", config.final_sampler)]
    if config.sample_steps:
        used.append(("sample_sampler", config.sample_sampler))
    for key, name in used:
        try:
            get_sampler(name)
        except ValueError as exc:
            raise ConfigError(f"bad value for {key}: {exc}") from exc


def hardware(accelerator) -> str:
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{n}x {torch.cuda.get_device_name(accelerator.device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({cpu}, {os.cpu_count()} cores), {n} process{'es' if n > 1 else ''}"


def ema_weights(
    model: torch.nn.Module, ema, device: torch.device | str = "cpu", net: torch.nn.Module | None = None
) -> torch.nn.Module:
    """A float32 model on ``device`` with the EMA weights (or ``model``'s without EMA), for sampling and saving.

    Built from the config rather than deep-copied: under mixed precision Accelerate wraps ``model.forward``,
    and a deep copy would keep calling the training model. ``net``: a model this function returned before,
    refreshed in place (the grids during training reuse one).
    """
    if net is None:
        with torch.random.fork_rng(devices=[]):  # building a model draws init weights: keep the training RNG
            net = type(model).from_config(model.config)
        net = net.to(device).float()  # every parameter and buffer; .float(): no dtype warning from diffusers
    net.load_state_dict(model.state_dict())
    if ema is not None:
        ema.copy_to(net.parameters())
    return net.eval()


def sampling_pipeline(
    model: torch.nn.Module,
    ema,
    scheduler,
    device: torch.device | str,
    net: torch.nn.Module | None = None,
    class_names: list[str] | None = None,
):
    """The ``DDPMHubPipeline`` of the EMA weights on ``device`` (grids, samples.png, the saved pipeline)."""
    pipe = DDPMHubPipeline(
        unet=ema_weights(model, ema, device, net), scheduler=scheduler, class_names=class_names
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_mixed_precision(config: TrainConfig) -> tuple[str, str]:
    """The precision to ask accelerate for, and where that choice came from (for the banner and train_info).

    An explicit ``mixed_precision`` in the config wins; unset (null), the launcher's choice holds:
    ``accelerate launch --mixed_precision`` and the accelerate config file reach the processes as
    ACCELERATE_MIXED_PRECISION; without either, ``no`` (float32).
    """
    if config.mixed_precision is not None:
        return config.mixed_precision, "from the training config"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return (
            launcher.lower(),
            "from the launcher: ACCELERATE_MIXED_PRECISION, set by accelerate launch --mixed_precision or "
            "accelerate config",
        )
    return "no", "the default: neither the training config nor the launcher sets one"


def precision_that_ran(accelerator) -> str:
    """The precision accelerate really trains in: fp16 on the CPU runs float32 (accelerate has no fp16 autocast
    there), which ``accelerator.mixed_precision`` does not say."""
    mixed = accelerator.mixed_precision
    if (
        mixed == "fp16"
        and not accelerator.native_amp
        and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    ):
        return "no"
    return mixed


def log_images(accelerator, name: str, image, step: int) -> list[str]:
    """Log a PIL image to every tracker that takes images (accelerate's ``tracker.log_images``); return the
    names of the trackers that do not (their grids are in samples/ only)."""
    array = np.asarray(image.convert("RGB"))[None]  # (1, H, W, 3): TensorBoard's add_images takes no list
    skipped = []
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            skipped.append(tracker.name)
            continue
        kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
        tracker.log_images({name: array}, step=step, **kwargs)
    return skipped


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (to check that data-parallel ranks agree)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def plot_loss(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if history:
        steps, losses = zip(*history, strict=True)
        ax.plot(steps, losses, lw=1, label="loss")
        if len(losses) >= 10:
            k = max(len(losses) // 20, 2)
            smooth = [
                sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, smooth, lw=2, label=f"mean of {k}")
            ax.legend()
        if min(losses) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ the loop


def _prepare_output_dir(config: TrainConfig, run_dir: Path, main: bool = True) -> Path | None:
    """Check the output folder; return the checkpoint to resume from (None: start fresh).

    A run is never retrained or overwritten behind the user's back: a folder that holds a run needs
    ``--resume`` or ``--overwrite_output_dir true``, and so does a finished run without checkpoints.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"output_dir {run_dir} is a file, not a folder; choose a folder with --output_dir DIR"
        )
    if main:
        try:
            created = not run_dir.exists()
            run_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=run_dir):
                pass
            if created:  # made again once the model and plugins have been checked: a failure leaves no folder
                run_dir.rmdir()
        except OSError as exc:
            raise ConfigError(
                f"cannot write to output_dir {run_dir} ({exc.strerror or exc}); choose a writable folder with "
                f"--output_dir DIR"
            ) from exc
    if config.resume is not None:
        checkpoint = resolve_checkpoint(run_dir, config.resume)
        if checkpoint is None:
            finished = [p for p in ("pipeline", "train_info.json") if (run_dir / p).exists()]
            if finished and not config.overwrite_output_dir:
                raise ConfigError(
                    f"resume={config.resume}: {run_dir} holds a finished run ({', '.join(finished)}) but no "
                    f"checkpoint to continue from, so resuming would retrain it from scratch and overwrite "
                    f"pipeline/. To do that, add --overwrite_output_dir true; or train into another --output_dir DIR"
                )
            if main:
                print(
                    f"resume={config.resume}: {run_dir} has no checkpoint yet, starting a new run", flush=True
                )
            return None
        saved = run_config_file(config)
        if saved is not None:  # the CLI already merged it; this guards the Python API
            check_resume(saved_run_config(saved), config, saved)
        return checkpoint
    occupied = [p for p in ("checkpoints", "pipeline", "train_info.json") if (run_dir / p).exists()]
    if occupied and not config.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {run_dir} already holds a run ({', '.join(occupied)}). Continue it with --resume latest, "
            "train into another folder with --output_dir DIR, or replace it with --overwrite_output_dir true"
        )
    return None


class _Interrupt:
    """Ctrl-C (SIGINT) during training: the first one asks the loop to stop after the current optimizer step,
    save a checkpoint and say how to resume; a second one stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.flag = False
        self._previous = None
        self._pid = os.getpid()

    def install(self) -> None:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked after install: the main process decides
            return
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print(
            "\nCtrl-C: stopping after this step to save a checkpoint (Ctrl-C again stops at once, unsaved)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self, accelerator) -> bool:
        """Whether any process was interrupted (all processes agree, so that they save together)."""
        if accelerator.num_processes == 1:
            return self.flag
        flag = torch.tensor([float(self.flag)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def guard(self, batches):
        """The batches; DataLoader workers killed by the same Ctrl-C end the loop rather than raise."""
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception:
                if self.flag:
                    return
                raise
            yield batch


def check_sampling(config: TrainConfig, num_train_timesteps: int) -> None:
    """Every sampling setting checked against T before step 1, so a grid never fails hours into a run."""
    settings = [("final_sampler", "final_inference_steps")]
    if config.sample_steps and config.sample_steps < config.max_steps:
        settings.insert(0, ("sample_sampler", "sample_inference_steps"))
    for name_key, steps_key in settings:
        name, steps = getattr(config, name_key), getattr(config, steps_key)
        try:
            resolve_steps(name, steps, num_train_timesteps)
        except ValueError as exc:
            raise ConfigError(f"{name_key}={name}, {steps_key}={steps}: {exc}") from exc


def train(config: TrainConfig, dataset=None) -> Path:
    """Train a DDPM as ``config`` says; return the run folder (see the module docstring for its layout).

    ``dataset``: a ``datasets.Dataset`` to train on instead of ``config.data.dataset``.
    """
    config.validate()
    run_dir = Path(config.output_dir).expanduser().resolve()
    mixed_precision, _ = resolve_mixed_precision(config)
    try:
        accelerator = Accelerator(
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=tracker_names(config.log_with) or None,
            project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
            step_scheduler_with_optimizer=False,  # the lr schedule counts optimizer steps, whatever the world size
            # the other ranks wait at a barrier while the main process samples a grid or the final samples
            # (on the training device: seconds on a GPU); NCCL's own default would give up after 10 minutes
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=30))],
        )
    except ValueError as exc:
        if "already been initialized" in str(exc):  # accelerate fixes the precision once per process
            raise ConfigError(
                f"mixed_precision {mixed_precision}: this Python process already trained with another precision, "
                "and accelerate sets it once per process; train in a new process (ddpm-hub train ...)"
            ) from None
        raise ConfigError(
            f"accelerate rejected the setup (mixed_precision {mixed_precision}): {exc}"
        ) from exc
    interrupt = _Interrupt()
    try:
        run_dir = _train(config, dataset, accelerator, run_dir, interrupt)
        if config.push_to_hub and accelerator.is_main_process:
            push_run(config, run_dir)
        return run_dir
    finally:
        interrupt.uninstall()
        accelerator.end_training()


def push_run(config: TrainConfig, run_dir: Path):
    """Push the finished run to ``config.hub_repo_id`` (``push_to_hub: true``); return the commit info."""
    info = json.loads((run_dir / "train_info.json").read_text())
    try:
        commit = push(
            run_dir,
            config.hub_repo_id,
            private=config.hub_private,
            revision=config.hub_revision,
            commit_message=f"ddpm-hub train: {info['num_train_steps']} steps on {info['dataset']}, "
            f"final loss {info['final_loss']:.4f}",
        )
    except HubPushError as exc:
        raise HubPushError(
            f"{exc}. The run is saved in {run_dir}; push it with `ddpm-hub push {run_dir} --repo-id "
            f"{config.hub_repo_id}`"
        ) from exc
    print(f"pushed to {commit.commit_url}", flush=True)
    return commit


def _train(config: TrainConfig, dataset, accelerator, run_dir: Path, interrupt: _Interrupt) -> Path:
    main = accelerator.is_main_process
    resume_from = _prepare_output_dir(config, run_dir, main)  # every process checks
    accelerator.wait_for_everyone()
    if main and resume_from is None and config.overwrite_output_dir:
        for sub in ("checkpoints", "samples", "pipeline", "logs"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    accelerator.wait_for_everyone()

    # Setup (seed: "1. Setup and Noise Schedule", "Model and Optimizer"): the same init on every process.
    set_seed(config.seed)
    scheduler = build_scheduler(config)
    T = scheduler.config.num_train_timesteps
    check_sampling(config, T)  # before the data: a bad grid setting fails in seconds
    with accelerator.main_process_first():
        data = load_images(config.data, dataset)
    num_classes = None if data.class_names is None else len(data.class_names)
    model = build_model(config, data.channels, data.image_size, num_classes)
    _check_plugins_before_the_run_folder(config, model, T)
    num_parameters = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(config, model.parameters())
    # diffusers' "constant" ignores warmup; "constant_with_warmup" is the same schedule with it
    schedule_name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    lr_scheduler = get_scheduler(
        schedule_name, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps
    )
    ema = None
    if config.ema.enabled:
        ema = EMAModel(
            model.parameters(),
            decay=config.ema.max_decay,
            min_decay=config.ema.min_decay,
            update_after_step=config.ema.update_after_step,
            use_ema_warmup=True,
            inv_gamma=config.ema.inv_gamma,
            power=config.ema.power,
            model_cls=type(model),
            model_config=model.config,
            foreach=True,
        )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    state = TrainState()

    if resume_from is not None:
        accelerator.print(f"resuming from {resume_from}")
        load_checkpoint(accelerator, resume_from, model, ema, state)  # nothing in it is unpickled
        if state.step > config.max_steps:
            raise ConfigError(f"the checkpoint is at step {state.step}, past max_steps={config.max_steps}")
    else:
        set_seed(config.seed, device_specific=True)  # each process its own noise and timesteps

    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    sampler = ShardedBatchSampler(
        data.num_images,
        config.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        seed=config.seed,
        start=state.micro_step,
    )
    batches = data.batches(sampler, num_workers=config.data.num_workers)

    requested, precision_source = resolve_mixed_precision(config)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # the resolved precision, so that --resume (the saved config wins) continues in the same one
        resolved = dataclasses.replace(config, mixed_precision=requested)
        (run_dir / "config.yaml").write_text(resolved.to_yaml())
    if tracker_names(config.log_with):
        accelerator.init_trackers("train", config=_flat(config.to_dict()))
    precision = precision_that_ran(accelerator)
    precision_note = f"mixed precision {precision} ({precision_source})"
    if precision != requested:
        precision_note = (
            f"mixed precision {precision}: {requested} was asked for ({precision_source}), but accelerate has no "
            f"{requested} on {accelerator.device.type}, so this run trains in float32 (for reduced "
            "precision on a CPU use bf16)"
        )
    accelerator.print(
        f"ddpm-hub {__version__}: {data.num_images} images ({data.source}, {data.channels}x{data.image_size}x"
        f"{data.image_size}{', pre-decoded' if data.images is not None else ''}), backbone {config.backbone} "
        f"({format_count(num_parameters)} parameters), T={T} {scheduler.config.beta_schedule}\n"
        f"{hardware(accelerator)}, {precision_note}\nglobal batch {global_batch} "
        f"({config.batch_size} x {accelerator.num_processes} process(es) x {config.gradient_accumulation_steps} "
        f"accumulation), steps {state.step} -> {config.max_steps}\nwriting to {run_dir}"
    )

    device = accelerator.device

    sampling_net = None  # the EMA weights' model on the device, built once, refreshed for every grid

    def sample_grid(sampler_name: str, steps: int | None) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] from the EMA weights on the training device (main process), fixed seed
        for comparability (a CPU generator: the same noise on every device)."""
        nonlocal sampling_net
        pipe = sampling_pipeline(
            accelerator.unwrap_model(model), ema, scheduler, device, sampling_net, data.class_names
        )
        sampling_net = pipe.unet
        # a class-conditional grid cycles through the classes: 0, 1, ..., n-1, 0, 1, ...
        labels = None if num_classes is None else [i % num_classes for i in range(config.num_sample_images)]
        return pipe(
            batch_size=config.num_sample_images,
            generator=torch.Generator("cpu").manual_seed(config.seed),
            sampler=sampler_name,
            num_inference_steps=steps,
            output_type="pt",
            class_labels=labels,
        ).images

    def write_grid(step: int) -> None:
        start = time.perf_counter()
        try:
            images = sample_grid(config.sample_sampler, config.sample_inference_steps)
        except Exception as exc:  # a grid is a view of the run, never a reason to stop it
            print(
                f"warning: the sample grid at step {step} failed ({type(exc).__name__}: {exc}); training goes on",
                file=sys.stderr,
                flush=True,
            )
            return
        seconds = time.perf_counter() - start
        (run_dir / "samples").mkdir(exist_ok=True)
        grid = make_grid(images)
        grid.save(run_dir / "samples" / f"step-{step}.png")
        skipped = log_images(accelerator, "samples", grid, step)
        accelerator.log({"samples/seconds": seconds}, step=step)
        bar.write(
            f"step {step}: samples/step-{step}.png, {len(images)} images by {config.sample_sampler} in "
            f"{seconds:.1f} s on {device}"
            + (f" (not logged to {', '.join(skipped)}: accelerate logs no images there)" if skipped else "")
        )

    # Running sums on the device: read back (a host sync) only every logging_steps.
    loss_sum = torch.zeros((), device=device)
    loss_count = torch.zeros((), device=device)
    nonfinite = torch.zeros((), device=device)
    last_log_time, last_log_images = time.perf_counter(), state.images_seen
    session_start, session_start_wall = time.perf_counter(), state.wall_time_s
    last_good = resume_from

    def check_finite(step: int) -> tuple[float, float]:
        """Mean loss since the last check, over all processes; stop on a non-finite loss."""
        nonlocal loss_sum, loss_count, nonfinite
        stats = accelerator.reduce(torch.stack([loss_sum, loss_count, nonfinite]), reduction="sum").tolist()
        loss_sum, loss_count, nonfinite = (torch.zeros((), device=device) for _ in range(3))
        if stats[2] > 0 or not math.isfinite(stats[0]):
            where = f"between steps {state.loss_history[-1][0] if state.loss_history else 0} and {step}"
            keep = (
                f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"the loss became non-finite (NaN or inf) {where}; training stopped and the weights after it were "
                f"not saved; {keep} (resume with --resume {last_good or 'latest'}). Usual fixes: a lower "
                f"learning_rate (now {config.learning_rate}), max_grad_norm (now {config.max_grad_norm}), "
                f"mixed_precision bf16 or no instead of fp16 (now {precision})"
            )
        return stats[0] / max(stats[1], 1.0), stats[1]

    bar = tqdm(
        total=config.max_steps,
        initial=state.step,
        disable=not main,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    measured_global_batch = None
    last_saved = state.step if resume_from is not None else None
    interrupt.install()
    model.train()
    # ------------------------------------------------------------- seed: "TRAINING (Forward Process)"
    for batch in interrupt.guard(batches):
        if state.step >= config.max_steps:
            break
        labels = None
        if num_classes is not None:
            batch, labels = batch
            labels = labels.to(device, non_blocking=True)
        batch = batch.to(device, non_blocking=True).float() / 127.5 - 1.0  # uint8 -> [-1, 1]
        if config.data.random_flip:
            batch = random_flip(batch)
        bs = batch.shape[0]
        if measured_global_batch is None:  # asserted, not assumed: what the processes really feed per step
            measured_global_batch = int(accelerator.gather(torch.tensor([bs], device=device)).sum())
            measured_global_batch *= config.gradient_accumulation_steps

        with accelerator.accumulate(model):
            t = torch.randint(0, T, (bs,), device=device).long()
            noise = torch.randn_like(batch)
            # Seed, "Derived Variables" and the forward process: the scheduler owns the tables (outside the
            # model and its EMA) and the maths; its float32 tables on this device are cast once and cached.
            x_noisy = scheduler.add_noise(batch, noise, t)
            if labels is None:
                model_output = model(x_noisy, t).sample.float()
            else:  # classifier-free guidance: a share p_uncond of the labels becomes the null class
                drop = torch.rand(bs, device=device) < config.p_uncond
                labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
                model_output = model(x_noisy, t, class_labels=labels).sample.float()
            target = scheduler.get_target(batch, noise, t)  # the noise, for the seed's prediction_type
            if config.snr_gamma is None:
                loss = F.mse_loss(model_output, target)
            else:
                per_sample = F.mse_loss(model_output, target, reduction="none").mean(dim=(1, 2, 3))
                loss = (per_sample * scheduler.loss_weights(t, config.snr_gamma)).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        loss = loss.detach()
        loss_sum += loss
        loss_count += 1
        nonfinite += (~torch.isfinite(loss)).float()
        state.micro_step += 1
        if not accelerator.sync_gradients:
            continue

        # one optimizer step done
        lr_scheduler.step()
        if ema is not None:
            ema.step(model.parameters())
        state.step += 1
        state.images_seen += global_batch
        step = state.step
        bar.update(1)

        last = step == config.max_steps
        checkpoint_now = last or (config.checkpointing_steps and step % config.checkpointing_steps == 0)
        if step % config.logging_steps == 0 or checkpoint_now:
            mean_loss, _ = check_finite(step)
            now = time.perf_counter()
            images_per_s = (state.images_seen - last_log_images) / max(now - last_log_time, 1e-9)
            last_log_time, last_log_images = now, state.images_seen
            lr = lr_scheduler.get_last_lr()[0]
            state.loss_history.append((step, mean_loss))
            bar.set_postfix(
                loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}", lr=f"{lr:.2e}", refresh=False
            )
            accelerator.log(
                {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": images_per_s}, step=step
            )
        # the checkpoint first: a failing grid never costs a step's checkpoint
        if checkpoint_now:
            state.wall_time_s = session_start_wall + time.perf_counter() - session_start
            last_good = save_checkpoint(
                accelerator, run_dir, step, config.checkpoints_total_limit, state, ema, model
            )
            last_saved = step
        if config.sample_steps and step % config.sample_steps == 0 and not last:
            if main:
                write_grid(step)
            accelerator.wait_for_everyone()
        if interrupt.requested(accelerator):
            break
    bar.close()
    if state.step < config.max_steps and interrupt.requested(accelerator):
        step = state.step
        if step and last_saved != step:
            state.wall_time_s = session_start_wall + time.perf_counter() - session_start
            last_good = save_checkpoint(
                accelerator, run_dir, step, config.checkpoints_total_limit, state, ema, model
            )
        if last_good is None:
            raise TrainingInterrupted("interrupted before the first step; nothing was saved")
        command = "ddpm-hub train"
        if accelerator.num_processes > 1:
            command = f"accelerate launch --num_processes {accelerator.num_processes} -m ddpm_hub.train"
        raise TrainingInterrupted(
            f"interrupted at step {step} of {config.max_steps}; saved {last_good}. Continue with: "
            f"{command} --output_dir {run_dir} --resume latest"
        )
    state.wall_time_s = session_start_wall + time.perf_counter() - session_start

    # The end: every process's weights (they must agree), then the pipeline with the EMA weights.
    unwrapped = accelerator.unwrap_model(model)
    digest = weights_digest(unwrapped)
    digests = gather_object([digest]) if accelerator.num_processes > 1 else [digest]
    if main:
        _finish(
            config,
            run_dir,
            accelerator,
            unwrapped,
            ema,
            scheduler,
            data,
            state,
            num_parameters,
            digests,
            measured_global_batch or global_batch,
            sample_grid,
            {
                "mixed_precision": precision,
                "mixed_precision_requested": requested,
                "mixed_precision_source": precision_source,
            },
        )
    accelerator.wait_for_everyone()
    return run_dir


def _finish(
    config,
    run_dir,
    accelerator,
    unwrapped,
    ema,
    scheduler,
    data,
    state,
    num_parameters,
    digests,
    global_batch,
    sample_grid,
    precision,
) -> None:
    pipe = sampling_pipeline(unwrapped, ema, scheduler, accelerator.device, class_names=data.class_names)
    net = pipe.unet
    tmp = run_dir / f"{TMP_PREFIX}pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(run_dir / "pipeline", ignore_errors=True)
    os.replace(tmp, run_dir / "pipeline")

    start = time.perf_counter()
    images = sample_grid(config.final_sampler, config.final_inference_steps)
    make_grid(images).save(run_dir / "samples.png")
    final_grid_s = time.perf_counter() - start
    final_loss = state.loss_history[-1][1] if state.loss_history else float("nan")
    plot_loss(
        state.loss_history,
        run_dir / "loss.png",
        f"{config.backbone} on {data.source}, final loss {final_loss:.4f}",
    )
    info = {
        "dataset": config.data.dataset if data.source.startswith("'") else data.source,
        "image_size": data.image_size,
        "channels": data.channels,
        "num_images": data.num_images,
        "num_train_steps": state.step,
        "batch_size": global_batch,
        "per_process_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "num_train_timesteps": scheduler.config.num_train_timesteps,
        "beta_schedule": scheduler.config.beta_schedule,
        "prediction_type": scheduler.config.prediction_type,
        "backbone": config.backbone,
        "num_parameters": num_parameters,
        **({"class_names": data.class_names, "p_uncond": config.p_uncond} if data.class_names else {}),
        **precision,  # what ran (fp16 asked for on a CPU runs float32), what was asked for, and by whom
        "ema_decay": config.ema.max_decay if ema is not None else None,
        "ema_decay_reached": getattr(ema, "cur_decay_value", None),
        "hardware": hardware(accelerator),
        "num_processes": accelerator.num_processes,
        "wall_time_s": round(state.wall_time_s, 2),
        "images_per_s": round(state.images_seen / state.wall_time_s, 2) if state.wall_time_s else None,
        "sample_device": str(accelerator.device),
        "peak_device_memory_mib": (
            round(torch.cuda.max_memory_allocated(accelerator.device) / 2**20, 1)
            if accelerator.device.type == "cuda"
            else None
        ),
        "final_samples_s": round(final_grid_s, 2),
        "final_loss": final_loss,
        "weights_sha256_per_process": digests,
        "ddpm_hub_version": __version__,
        # the distributions this model needs (its backbone's and schedule's), not every installed plugin
        "plugins": [
            {"distribution": dist, "version": version}
            for dist, version in sorted(
                {(r["distribution"], r["version"]) for r in pipeline_requirements(net, scheduler).values()}
            )
            if dist != "ddpm-hub"
        ],
    }
    (run_dir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_model_card(run_dir / "pipeline", info, repo_id=config.hub_repo_id)
    tensorboard = any(t.name == "tensorboard" for t in accelerator.trackers)
    print(
        f"done: {state.step} steps in {state.wall_time_s:.0f} s, final loss {final_loss:.4f}\n"
        f"  pipeline  {run_dir / 'pipeline'}   (ddpm_hub.load_pipeline({str(run_dir)!r}))\n"
        f"  samples   {run_dir / 'samples.png'}   loss curve {run_dir / 'loss.png'}\n"
        f"  more:     ddpm-hub sample {run_dir} --num-images 16 --out grid.png"
        + (f"\n  logs:     tensorboard --logdir {run_dir / 'logs'}" if tensorboard else ""),
        flush=True,
    )


USAGE = """usage: python -m ddpm_hub.train [--config FILE] [--KEY VALUE | KEY=VALUE ...]
       accelerate launch -m ddpm_hub.train [...]      ddpm-hub train [...]

Train a DDPM. Without --config: the built-in default (configs/mnist.yaml: MNIST-5k digits).
Nested keys use dots (--model.base_channels 64, --data.dataset ./my-images); values are YAML
(64, 2e-4, true, [1, 2, 2], null). --resume latest continues the run in output_dir from its own
config.yaml; only max_steps and the logging, sample, checkpoint, push and data.num_workers keys may change.
`model` is the backbone's constructor arguments: --backbone dit (another backbone than the file's)
starts from that backbone's own defaults, --model.KEY VALUE changes one, --model '{...}' replaces all.

keys:
"""


def main(argv: Sequence[str] | None = None) -> int:
    one_line_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + describe())
        return 0
    try:
        config = config_from_argv(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            train(config)
        finally:
            _close_progress_bars()  # a message then starts its own line, not the end of the bar's
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            f"interrupted; nothing after the last checkpoint was saved (continue with: ddpm-hub train "
            f"--output_dir {config.output_dir} --resume latest)",
            file=sys.stderr,
        )
        return 130
    except (ConfigError, DataError, CheckpointError, NonFiniteLossError, HubPushError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _close_progress_bars() -> None:
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
