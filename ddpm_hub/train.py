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
anything from a checkpoint (``ddpm_hub.checkpoints``). Ctrl-C saves a checkpoint and prints the command
that continues.

Read it top to bottom, as nanoGPT's train.py: :func:`train` makes the Accelerator, and :func:`_train` is the
whole run on one screen: the run folder, setup, data, model (:func:`build_run`: a :class:`Run` holds the
run's objects), the loop (:func:`train_loop`; the seed's lines are :func:`training_step`) and :func:`finish`.
The building blocks follow. Checkpoints (save, verify, resume) are ``ddpm_hub.checkpoints``; the model card
and pushing are ``ddpm_hub.hub``, the same functions ``ddpm-hub push`` uses.

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
import shutil
import signal
import sys
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
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from . import __version__
from .checkpoints import (
    TMP_PREFIX,
    CheckpointError,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    prepare_output_dir,
    resolve_checkpoint,
    save_checkpoint,
)
from .conditioning import check_backbone_supports
from .config import (
    ConfigError,
    TrainConfig,
    config_from_argv,
    describe,
    keep_run_precision,
    run_config_file,
    saved_run_config,
    tracker_names,
)
from .data import DataError, ImageData, ShardedBatchSampler, load_images, random_flip
from .datasets import BUILTIN_DATASET
from .devices import allow_fast_float32, auto_trains_bf16, available_devices
from .hub import HubPushError, push, write_model_card
from .images import make_grid
from .pipeline import DDPMHubPipeline, pipeline_requirements
from .plugins import PluginError, check_backbone, get_sampler, one_line_warnings, provider
from .samplers import resolve_steps
from .scheduler import DDPMHubScheduler

# the checkpoint API lived here before ddpm_hub.checkpoints; `from ddpm_hub.train import ...` keeps working
__all__ = ["CheckpointError", "NonFiniteLossError", "TrainingInterrupted", "list_checkpoints", "main"]
__all__ += ["resolve_checkpoint", "train"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving the bad weights."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) stopped training; the message says what was saved and the command that resumes."""


# ----------------------------------------------------------------------------------------------- the run


def train(config: TrainConfig, dataset=None) -> Path:
    """Train a DDPM as ``config`` says; return the run folder (see the module docstring for its layout).

    ``dataset``: a ``datasets.Dataset`` to train on instead of ``config.data.dataset``.
    """
    config.validate()
    run_dir = Path(config.output_dir).expanduser().resolve()
    saved = run_config_file(config)
    if saved is not None:  # mixed_precision auto: the run's own precision, not this machine's choice
        config = keep_run_precision(saved_run_config(saved), config)
    accelerator = make_accelerator(config, run_dir)
    allow_fast_float32(accelerator.device)  # float32 steps on CUDA use TF32 tensor cores, as sampling does
    interrupt = _Interrupt()
    try:
        run_dir = _train(config, dataset, accelerator, run_dir, interrupt)
        if config.push_to_hub and accelerator.is_main_process:
            push_run(config, run_dir)
        return run_dir
    finally:
        interrupt.uninstall()
        accelerator.end_training()


def _train(config: TrainConfig, dataset, accelerator, run_dir: Path, interrupt: _Interrupt) -> Path:
    """setup, data, model, loop, finish."""
    resume_from = open_run_dir(config, run_dir, accelerator)  # a fresh run, or the checkpoint to continue

    # Setup (seed: "1. Setup and Noise Schedule"): the same init on every process.
    set_seed(config.seed)
    scheduler = build_scheduler(config)
    check_sampling(config, scheduler.config.num_train_timesteps)  # before the data: fails in seconds
    timestep_probs = training_timestep_probabilities(config, scheduler)  # checked before the data, too

    # Data
    with accelerator.main_process_first():
        data = load_images(config.data, dataset)

    # Model, optimizer, lr schedule, EMA (seed: "Model and Optimizer"), then the checkpoint or the run's seed.
    run = build_run(config, accelerator, run_dir, scheduler, data)
    if timestep_probs is not None:
        run.timestep_probs = timestep_probs.to(accelerator.device)
    if resume_from is not None:
        accelerator.print(f"resuming from {resume_from}")
        load_checkpoint(accelerator, resume_from, run.model, run.ema, run.state)  # nothing is unpickled
        if run.state.step > config.max_steps:
            raise ConfigError(
                f"the checkpoint is at step {run.state.step}, past max_steps={config.max_steps}"
            )
        run.last_good = resume_from
    else:
        set_seed(config.seed, device_specific=True)  # each process its own noise and timesteps
    sampler = ShardedBatchSampler(
        data.num_images,
        config.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        seed=config.seed,
        start=run.state.micro_step,  # the data position: a resumed run continues with the next batch
    )
    batches = data.batches(sampler, num_workers=config.data.num_workers)
    start_logging(run)

    # The loop (seed: "TRAINING (Forward Process)")
    grids = Grids(run)
    train_loop(run, batches, grids, interrupt)

    # Finish: every process's weights (they must agree), then the pipeline with the EMA weights.
    unwrapped = accelerator.unwrap_model(run.model)
    digest = weights_digest(unwrapped)
    digests = gather_object([digest]) if accelerator.num_processes > 1 else [digest]
    if accelerator.is_main_process:
        finish(run, grids, digests)
    accelerator.wait_for_everyone()
    return run_dir


# ------------------------------------------------------------------------------------------------- setup


def make_accelerator(config: TrainConfig, run_dir: Path) -> Accelerator:
    """The Accelerator of the run: precision, gradient accumulation, trackers (their files in logs/)."""
    mixed_precision, _ = resolve_mixed_precision(config)
    try:
        return Accelerator(
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


def open_run_dir(config: TrainConfig, run_dir: Path, accelerator) -> Path | None:
    """Check the output folder on every process (see :func:`ddpm_hub.checkpoints.prepare_output_dir`); clear
    it for ``overwrite_output_dir``; return the checkpoint to resume from (None: a fresh run)."""
    main = accelerator.is_main_process
    resume_from = prepare_output_dir(config, run_dir, main)
    accelerator.wait_for_everyone()
    if main and resume_from is None and config.overwrite_output_dir:
        for sub in ("checkpoints", "samples", "pipeline", "logs"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    accelerator.wait_for_everyone()
    return resume_from


@dataclasses.dataclass
class Run:
    """One training run's objects: built by :func:`build_run`, advanced by the loop, saved by :func:`finish`."""

    config: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    scheduler: DDPMHubScheduler
    data: ImageData
    model: torch.nn.Module  # as prepared by accelerate (unwrap_model gives the backbone)
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: EMAModel | None
    num_parameters: int
    state: TrainState = dataclasses.field(default_factory=TrainState)
    #: what the train_info says about precision: what ran, what was asked for, and by whom (start_logging)
    precision: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the global batch that the processes really fed per optimizer step (measured at the first batch)
    measured_global_batch: int | None = None
    #: the newest checkpoint written or resumed from (the non-finite-loss message names it)
    last_good: Path | None = None
    #: the probability of each training timestep on the device; None: the seed's uniform t
    timestep_probs: torch.Tensor | None = None
    _session_start: float = dataclasses.field(default_factory=time.perf_counter)
    _session_start_wall: float | None = None

    @property
    def num_classes(self) -> int | None:
        return self.data.num_classes

    @property
    def global_batch(self) -> int:
        """The configured global batch: per-process batch x processes x accumulation."""
        return (
            self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation_steps
        )

    def start_clock(self) -> None:
        """Count this session's time on top of the resumed state's (train_info's wall_time_s)."""
        self._session_start, self._session_start_wall = time.perf_counter(), self.state.wall_time_s

    def update_wall_time(self) -> None:
        self.state.wall_time_s = self._session_start_wall + time.perf_counter() - self._session_start

    def save_checkpoint(self) -> Path:
        self.update_wall_time()
        self.last_good = save_checkpoint(
            self.accelerator,
            self.run_dir,
            self.state.step,
            self.config.checkpoints_total_limit,
            self.state,
            self.ema,
            self.model,
        )
        return self.last_good


def build_run(config: TrainConfig, accelerator, run_dir: Path, scheduler, data: ImageData) -> Run:
    """The model sized to the data, AdamW, the lr schedule and the EMA, prepared by accelerate."""
    model = build_model(config, data.channels, data.image_size, data.num_classes)
    _check_plugins_before_the_run_folder(config, model, scheduler.config.num_train_timesteps)
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
    return Run(
        config, accelerator, run_dir, scheduler, data, model, optimizer, lr_scheduler, ema, num_parameters
    )


def start_logging(run: Run) -> None:
    """config.yaml, the trackers and the banner: what this run is, where, in which precision."""
    config, accelerator, data = run.config, run.accelerator, run.data
    requested, precision_source = resolve_mixed_precision(config)
    if accelerator.is_main_process:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        # the resolved precision, so that --resume (the saved config wins) continues in the same one
        resolved = dataclasses.replace(config, mixed_precision=requested)
        (run.run_dir / "config.yaml").write_text(resolved.to_yaml())
    if tracker_names(config.log_with):
        accelerator.init_trackers("train", config=_flat(config.to_dict()))
    precision = precision_that_ran(accelerator)
    run.precision = {
        "mixed_precision": precision,
        "mixed_precision_requested": requested,
        "mixed_precision_source": precision_source,
    }
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
        f"({format_count(run.num_parameters)} parameters), T={run.scheduler.config.num_train_timesteps} "
        f"{run.scheduler.config.beta_schedule}\n"
        f"{hardware(accelerator)}, {precision_note}\nglobal batch {run.global_batch} "
        f"({config.batch_size} x {accelerator.num_processes} process(es) x {config.gradient_accumulation_steps} "
        f"accumulation), steps {run.state.step} -> {config.max_steps}\nwriting to {run.run_dir}"
    )


# -------------------------------------------------------------------------------------------------- loop


def train_loop(run: Run, batches, grids: Grids, interrupt: _Interrupt) -> None:
    """Optimizer steps up to ``max_steps``: the seed's step, the EMA, logs, checkpoints, grids; Ctrl-C saves."""
    config, accelerator, state = run.config, run.accelerator, run.state
    meter = LossMeter(run)
    bar = tqdm(
        total=config.max_steps,
        initial=state.step,
        disable=not accelerator.is_main_process,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    grids.bar = bar
    last_saved = state.step if run.last_good is not None else None
    run.start_clock()
    interrupt.install()
    run.model.train()
    for batch in interrupt.guard(batches):
        if state.step >= config.max_steps:
            break
        meter.add(training_step(run, batch))
        state.micro_step += 1
        if not accelerator.sync_gradients:
            continue

        # one optimizer step done
        run.lr_scheduler.step()
        if run.ema is not None:
            run.ema.step(run.model.parameters())
        state.step += 1
        state.images_seen += run.global_batch
        step = state.step
        bar.update(1)

        last = step == config.max_steps
        checkpoint_now = last or (config.checkpointing_steps and step % config.checkpointing_steps == 0)
        if step % config.logging_steps == 0 or checkpoint_now:
            meter.log(step, bar)
        if checkpoint_now:  # the checkpoint first: a failing grid never costs a step's checkpoint
            run.save_checkpoint()
            last_saved = step
        if config.sample_steps and step % config.sample_steps == 0 and not last:
            if accelerator.is_main_process:
                grids.write(step)
            accelerator.wait_for_everyone()
        if interrupt.requested(accelerator):
            break
    bar.close()
    if state.step < config.max_steps and interrupt.requested(accelerator):
        stop_interrupted(run, last_saved)
    run.update_wall_time()


def timestep_sampling_text(config: TrainConfig) -> str:
    """The training timesteps' distribution in words, for train_info and the model card."""
    ts = config.timestep_sampling
    if ts.kind == "uniform":
        return "uniform"
    share = f", {ts.uniform_share:.0%} uniform" if ts.uniform_share else ""
    return f"log SNR ~ N({ts.mean:g}, {ts.std:g}){share}"


def sample_timesteps(run: Run, bs: int) -> torch.Tensor:
    """Each image's training timestep: the seed's uniform t, or drawn from ``run.timestep_probs``."""
    if run.timestep_probs is None:
        T = run.scheduler.config.num_train_timesteps
        return torch.randint(0, T, (bs,), device=run.accelerator.device).long()
    return torch.multinomial(run.timestep_probs, bs, replacement=True)


def training_step(run: Run, batch) -> torch.Tensor:
    """The seed's training lines on one batch (one micro-step under gradient accumulation); the loss."""
    config, accelerator, scheduler, model = run.config, run.accelerator, run.scheduler, run.model
    device = accelerator.device
    labels = None
    if run.num_classes is not None:
        batch, labels = batch
        labels = labels.to(device, non_blocking=True)
    batch = batch.to(device, non_blocking=True).float() / 127.5 - 1.0  # uint8 -> [-1, 1]
    if config.data.random_flip:
        batch = random_flip(batch)
    bs = batch.shape[0]
    if run.measured_global_batch is None:  # asserted, not assumed: what the processes really feed per step
        fed = int(accelerator.gather(torch.tensor([bs], device=device)).sum())
        run.measured_global_batch = fed * config.gradient_accumulation_steps

    with accelerator.accumulate(model):
        t = sample_timesteps(run, bs)
        noise = torch.randn_like(batch)
        # Seed, "Derived Variables" and the forward process: the scheduler owns the tables (outside the
        # model and its EMA) and the maths; its float32 tables on this device are cast once and cached.
        x_noisy = scheduler.add_noise(batch, noise, t)
        if labels is None:
            model_output = model(x_noisy, t).sample.float()
        else:  # classifier-free guidance: a share p_uncond of the labels becomes the null class
            drop = torch.rand(bs, device=device) < config.p_uncond
            labels = torch.where(drop, torch.full_like(labels, run.num_classes), labels)
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
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class LossMeter:
    """Running loss sums on the device, read back (a host sync) only every ``logging_steps``; the log line."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._reset()
        self.last_time, self.last_images = time.perf_counter(), run.state.images_seen

    def _reset(self) -> None:
        device = self.run.accelerator.device
        self.sum, self.count, self.nonfinite = (torch.zeros((), device=device) for _ in range(3))

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss
        self.count += 1
        self.nonfinite += (~torch.isfinite(loss)).float()

    def mean(self, step: int) -> float:
        """Mean loss since the last call, over all processes; stop on a non-finite loss."""
        run, config = self.run, self.run.config
        stats = run.accelerator.reduce(torch.stack([self.sum, self.count, self.nonfinite]), reduction="sum")
        stats = stats.tolist()
        self._reset()
        if stats[2] > 0 or not math.isfinite(stats[0]):
            history = run.state.loss_history
            where = f"between steps {history[-1][0] if history else 0} and {step}"
            last_good = run.last_good
            keep = (
                f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"the loss became non-finite (NaN or inf) {where}; training stopped and the weights after it were "
                f"not saved; {keep} (resume with --resume {last_good or 'latest'}). Usual fixes: a lower "
                f"learning_rate (now {config.learning_rate}), max_grad_norm (now {config.max_grad_norm}), "
                f"mixed_precision bf16 or no instead of fp16 (now {run.precision['mixed_precision']})"
            )
        return stats[0] / max(stats[1], 1.0)

    def log(self, step: int, bar) -> None:
        """The loss, lr and images/s to the loss history, the progress bar and the trackers."""
        run = self.run
        mean_loss = self.mean(step)
        now = time.perf_counter()
        images_per_s = (run.state.images_seen - self.last_images) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_images = now, run.state.images_seen
        lr = run.lr_scheduler.get_last_lr()[0]
        run.state.loss_history.append((step, mean_loss))
        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}", lr=f"{lr:.2e}", refresh=False)
        run.accelerator.log(
            {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": images_per_s}, step=step
        )


class Grids:
    """Sample grids from the EMA weights on the training device (main process): during training and at the end.

    The sampling model is built once and refreshed for every grid; a fixed seed (on a CPU generator: the same
    noise on every device) keeps grids comparable.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.net = None
        self.bar = None

    def sample(self, sampler_name: str, steps: int | None) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1]; a class-conditional grid cycles through the classes 0, 1, ..., n-1."""
        run, config = self.run, self.run.config
        pipe = sampling_pipeline(
            run.accelerator.unwrap_model(run.model),
            run.ema,
            run.scheduler,
            run.accelerator.device,
            self.net,
            run.data.class_names,
        )
        self.net = pipe.unet
        n = run.num_classes
        labels = None if n is None else [i % n for i in range(config.num_sample_images)]
        return pipe(
            batch_size=config.num_sample_images,
            generator=torch.Generator("cpu").manual_seed(config.seed),
            sampler=sampler_name,
            num_inference_steps=steps,
            output_type="pt",
            class_labels=labels,
        ).images

    def write(self, step: int) -> None:
        """samples/step-STEP.png and the trackers; a failing grid warns and training goes on."""
        run, config = self.run, self.run.config
        start = time.perf_counter()
        try:
            images = self.sample(config.sample_sampler, config.sample_inference_steps)
        except Exception as exc:  # a grid is a view of the run, never a reason to stop it
            print(
                f"warning: the sample grid at step {step} failed ({type(exc).__name__}: {exc}); training goes on",
                file=sys.stderr,
                flush=True,
            )
            return
        seconds = time.perf_counter() - start
        (run.run_dir / "samples").mkdir(exist_ok=True)
        grid = make_grid(images)
        grid.save(run.run_dir / "samples" / f"step-{step}.png")
        skipped = log_images(run.accelerator, "samples", grid, step)
        run.accelerator.log({"samples/seconds": seconds}, step=step)
        self.bar.write(
            f"step {step}: samples/step-{step}.png, {len(images)} images by {config.sample_sampler} in "
            f"{seconds:.1f} s on {run.accelerator.device}"
            + (f" (not logged to {', '.join(skipped)}: accelerate logs no images there)" if skipped else "")
        )


def stop_interrupted(run: Run, last_saved: int | None) -> None:
    """After Ctrl-C: save the step reached (unless just saved) and raise TrainingInterrupted with the command
    that continues."""
    accelerator, step = run.accelerator, run.state.step
    if step and last_saved != step:
        run.save_checkpoint()
    if run.last_good is None:
        raise TrainingInterrupted("interrupted before the first step; nothing was saved")
    command = "ddpm-hub train"
    if accelerator.num_processes > 1:
        command = f"accelerate launch --num_processes {accelerator.num_processes} -m ddpm_hub.train"
    raise TrainingInterrupted(
        f"interrupted at step {step} of {run.config.max_steps}; saved {run.last_good}. Continue with: "
        f"{command} --output_dir {run.run_dir} --resume latest"
    )


# ------------------------------------------------------------------------------------------------ finish


def finish(run: Run, grids: Grids, digests: list[str]) -> None:
    """The main process's end of a run: the pipeline (EMA weights), samples.png, loss.png, train_info.json and
    the model card (ddpm_hub.hub's, the same that ``ddpm-hub push`` writes)."""
    config, run_dir, state = run.config, run.run_dir, run.state
    pipe = sampling_pipeline(
        run.accelerator.unwrap_model(run.model),
        run.ema,
        run.scheduler,
        run.accelerator.device,
        class_names=run.data.class_names,
    )
    tmp = run_dir / f"{TMP_PREFIX}pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(run_dir / "pipeline", ignore_errors=True)
    os.replace(tmp, run_dir / "pipeline")

    start = time.perf_counter()
    images = grids.sample(config.final_sampler, config.final_inference_steps)
    make_grid(images).save(run_dir / "samples.png")
    final_grid_s = time.perf_counter() - start
    final_loss = state.loss_history[-1][1] if state.loss_history else float("nan")
    plot_loss(
        state.loss_history,
        run_dir / "loss.png",
        f"{config.backbone} on {run.data.source}, final loss {final_loss:.4f}",
    )
    info = train_info(run, pipe.unet, digests, final_grid_s)
    (run_dir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_model_card(run_dir / "pipeline", info, repo_id=config.hub_repo_id)
    tensorboard = any(t.name == "tensorboard" for t in run.accelerator.trackers)
    print(
        f"done: {state.step} steps in {state.wall_time_s:.0f} s, final loss {final_loss:.4f}\n"
        f"  pipeline  {run_dir / 'pipeline'}   (ddpm_hub.load_pipeline({str(run_dir)!r}))\n"
        f"  samples   {run_dir / 'samples.png'}   loss curve {run_dir / 'loss.png'}\n"
        f"  more:     ddpm-hub sample {run_dir} --num-images 16 --out grid.png"
        + (f"\n  logs:     tensorboard --logdir {run_dir / 'logs'}" if tensorboard else ""),
        flush=True,
    )


def train_info(run: Run, net: torch.nn.Module, digests: list[str], final_grid_s: float) -> dict[str, Any]:
    """train_info.json: what was trained, on what, how, how fast; the model card is written from it."""
    config, data, state, scheduler, accelerator = (
        run.config,
        run.data,
        run.state,
        run.scheduler,
        run.accelerator,
    )
    final_loss = state.loss_history[-1][1] if state.loss_history else float("nan")
    device = accelerator.device
    return {
        "dataset": config.data.dataset if data.source.startswith("'") else data.source,
        "image_size": data.image_size,
        "channels": data.channels,
        "num_images": data.num_images,
        "num_train_steps": state.step,
        "batch_size": run.measured_global_batch or run.global_batch,
        "per_process_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "num_train_timesteps": scheduler.config.num_train_timesteps,
        "beta_schedule": scheduler.config.beta_schedule,
        "prediction_type": scheduler.config.prediction_type,
        "timestep_sampling": timestep_sampling_text(config),
        "snr_gamma": config.snr_gamma,
        "backbone": config.backbone,
        "num_parameters": run.num_parameters,
        **({"class_names": data.class_names, "p_uncond": config.p_uncond} if data.class_names else {}),
        **run.precision,  # what ran (fp16 asked for on a CPU runs float32), what was asked for, and by whom
        "ema_decay": config.ema.max_decay if run.ema is not None else None,
        "ema_decay_reached": getattr(run.ema, "cur_decay_value", None),
        "hardware": hardware(accelerator),
        "num_processes": accelerator.num_processes,
        "wall_time_s": round(state.wall_time_s, 2),
        "images_per_s": round(state.images_seen / state.wall_time_s, 2) if state.wall_time_s else None,
        "sample_device": str(device),
        "peak_device_memory_mib": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
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


def push_run(config: TrainConfig, run_dir: Path):
    """Push the finished run to ``config.hub_repo_id`` (``push_to_hub: true``) with ``ddpm-hub push``'s own
    function (:func:`ddpm_hub.hub.push`: the same files, card and commit message); return the commit info."""
    try:
        commit = push(run_dir, config.hub_repo_id, private=config.hub_private, revision=config.hub_revision)
    except HubPushError as exc:
        raise HubPushError(
            f"{exc}. The run is saved in {run_dir}; push it with `ddpm-hub push {run_dir} --repo-id "
            f"{config.hub_repo_id}`"
        ) from exc
    print(f"pushed to {commit.commit_url}", flush=True)
    return commit


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

    An explicit ``no``/``fp16``/``bf16`` in the config wins. ``auto`` (the default) and null take the launcher's
    choice: ``accelerate launch --mixed_precision`` and the accelerate config file reach the processes as
    ACCELERATE_MIXED_PRECISION. Without a launcher, ``auto`` is ``bf16`` where that was measured faster
    (:func:`ddpm_hub.devices.auto_trains_bf16`: a CPU with AVX512-BF16 or AMX), else ``no`` (on CUDA: float32
    with TF32 tensor cores); null is ``no`` (float32).
    """
    if config.mixed_precision not in (None, "auto"):
        return config.mixed_precision, "from the training config"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return (
            launcher.lower(),
            "from the launcher: ACCELERATE_MIXED_PRECISION, set by accelerate launch --mixed_precision or "
            "accelerate config",
        )
    if config.mixed_precision is None:
        return "no", "null in the training config and no launcher sets one"
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    kind = "cpu" if use_cpu else available_devices()[0]
    if auto_trains_bf16(kind):
        return "bf16", "auto: this CPU has AVX512-BF16 or AMX"
    if kind == "cuda":
        return "no", "auto: float32 with TF32 tensor cores on CUDA, as fast as bf16 autocast or faster there"
    return "no", f"auto: no native bf16 on this {kind}, so float32"


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


def training_timestep_probabilities(config: TrainConfig, scheduler: DDPMHubScheduler) -> torch.Tensor | None:
    """``timestep_sampling``'s probability of each timestep (None for ``uniform``); a ``logsnr_normal`` that
    misses the schedule's log SNR range is a config error, not a run on one t."""
    ts = config.timestep_sampling
    if ts.kind == "uniform":
        return None
    try:
        return scheduler.timestep_probabilities(ts.mean, ts.std, ts.uniform_share)
    except ValueError as exc:
        raise ConfigError(
            f"timestep_sampling: {exc}; put timestep_sampling.mean inside it (-1 is the default's)"
        ) from exc


# -------------------------------------------------------------------------------------------------- main


USAGE = f"""usage: python -m ddpm_hub.train [--config FILE] [--KEY VALUE | KEY=VALUE ...]
       accelerate launch -m ddpm_hub.train [...]      ddpm-hub train [...]

Train a DDPM. Without --config: the built-in default (configs/mnist.yaml, dataset {BUILTIN_DATASET}).
Nested keys use dots (--model.base_channels 64, --data.dataset ./my-images); values are YAML
(64, 2e-4, true, [1, 2, 2], null). --resume latest continues the run in output_dir from its own
config.yaml; only max_steps and the logging, sample, checkpoint, push and data.num_workers keys may change.
`model` is the backbone's constructor arguments: --backbone dit (another backbone than the file's)
starts from that backbone's own defaults, --model.KEY VALUE changes one, --model '{{...}}' replaces all.

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
