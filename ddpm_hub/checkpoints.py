"""A training run's checkpoints and its folder: save (atomically), verify (nothing unpickled), resume.

A checkpoint is ``accelerator.save_state`` (model, optimizer, lr schedule, each process's RNG) plus ddpm-hub's
own state as data formats only: :class:`TrainState` as JSON and the EMA weights as safetensors. It is written
as ``.tmp-checkpoint-STEP`` and renamed once complete, so a killed process never leaves a half-written
``latest``. :func:`prepare_output_dir` decides, before anything is built, whether a run starts fresh or
continues from a checkpoint, and never lets a run be retrained or overwritten behind the user's back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file

from .config import ConfigError, TrainConfig, check_resume, run_config_file, saved_run_config

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from (a missing, truncated or foreign file); the message names it."""


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


def prepare_output_dir(config: TrainConfig, run_dir: Path, main: bool = True) -> Path | None:
    """Check the output folder; return the checkpoint to resume from (None: start fresh).

    A run is never retrained or overwritten behind the user's back: a folder that holds a run needs
    ``--resume`` or ``--overwrite_output_dir true``, and so does a finished run without checkpoints.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"output_dir {run_dir} is a file, not a folder; choose a folder with --output_dir DIR"
        )
    run_traces = ("config.yaml", "checkpoints", "pipeline", "train_info.json")
    if config.resume == "latest" and not any((run_dir / p).exists() for p in run_traces):
        raise ConfigError(
            f"resume=latest: there is no run in {run_dir} to continue"
            f"{'' if run_dir.is_dir() else ' (no such folder)'}; check --output_dir, or drop --resume to start "
            "a new run there"
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
