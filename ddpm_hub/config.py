"""The typed training configuration: YAML files under ``configs/`` plus command-line overrides.

A config is a :class:`TrainConfig` (dataclasses all the way down, except ``model`` and ``scheduler``, which
are the constructor kwargs of the backbone and of :class:`~ddpm_hub.DDPMHubScheduler`). It is read from a
YAML file and then overridden key by key from the command line::

    ddpm-hub train --config configs/cifar10.yaml --max_steps 1000 --model.base_channels 64 data.random_flip=false

Values are parsed as YAML scalars (``64``, ``2e-4``, ``true``, ``[1, 2, 2]``, ``null``) and checked against the
field's type; an unknown key or a bad value raises :class:`ConfigError` naming the key and what is allowed.
Booleans are YAML 1.2's (``true``/``false``), so ``--mixed_precision no`` stays the string ``no`` (YAML 1.1
would read it as ``false``); a boolean key also takes ``yes``/``no``/``on``/``off``.

``model`` belongs to ``backbone``: it is that backbone's constructor arguments (the default is the built-in
UNet's MNIST model). A layer (the YAML file, then the command line) that changes ``backbone`` without giving
``model`` as a whole drops the mapping of the previous backbone, so ``--backbone dit`` starts from DiT's own
defaults; ``--model.KEY VALUE`` then changes one key of it and ``--model '{...}'`` replaces the mapping.

With ``--resume`` the base is the run's own ``config.yaml``, not the defaults: the command line (and a
``--config`` file) may change only the keys in :data:`RESUME_SAFE_KEYS` (how long to train, what to log,
sample, checkpoint and push along the way, data loading workers). Any other key that differs from the saved
run (model, backbone, scheduler and T, dataset, image size, channels, batch, optimizer, EMA, seed, mixed
precision ...) would change the experiment or not fit the checkpoint, so resuming stops with one line per
such key, old value and new.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from .datasets import BUILTIN_DATASET
from .hub import check_push_settings
from .schedules import DEFAULT_NUM_TRAIN_TIMESTEPS

#: what a model trained with the default config predicts: v (Salimans & Ho 2022), not the seed's noise. On the
#: default run it gives every sampler a lower Frechet distance, and the deterministic ones (ddim, dpm-solver++)
#: about half of the noise-predicting model's (benchmarks/README.md, "Time to quality"); the seed's recipe is
#: configs/mnist-seed.yaml (prediction_type: epsilon)
DEFAULT_PREDICTION_TYPE = "v_prediction"

#: the model of the built-in default (configs/mnist.yaml): 28 px digits, 0.69M parameters, attention at 7x7
MNIST_MODEL = {
    "base_channels": 16,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": 1,
    "attention_resolutions": [7],
    "dropout": 0.0,
    "norm_num_groups": 8,
}


class ConfigError(ValueError):
    """A config key is unknown or its value is not allowed; the message says which and what is."""


class _YAML12Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans: only true/false, so that ``no``, ``off``, ``yes``, ``on`` stay
    strings (``mixed_precision: no``); ``_coerce`` turns them into booleans where a key is boolean."""


_YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def yaml_load(text: str) -> Any:
    """YAML as ddpm-hub configs read it (``yaml.safe_load`` with YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_YAML12Loader)


#: the keys that ``--resume`` may change: where the run is, how long it trains, and what it logs, samples,
#: checkpoints and pushes on the way. Every other key is the experiment or the checkpoint's shape and comes
#: from the run's config.yaml. (A changed max_steps also moves the end of a cosine or linear lr decay.)
RESUME_SAFE_KEYS = (
    "output_dir",
    "resume",
    "overwrite_output_dir",
    "max_steps",
    "logging_steps",
    "log_with",
    "sample_steps",
    "num_sample_images",
    "sample_sampler",
    "sample_inference_steps",
    "final_sampler",
    "final_inference_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "push_to_hub",
    "hub_repo_id",
    "hub_private",
    "hub_revision",
    "data.num_workers",
    "data.predecode_max_mb",
)


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared (see ``ddpm_hub.data``)."""

    #: ``mnist5k`` (built in), a Hub dataset name, a local image folder, or parquet file(s) (path or glob)
    dataset: str = BUILTIN_DATASET
    #: the Hub dataset's configuration name (the second argument of ``datasets.load_dataset``)
    dataset_config: str | None = None
    split: str = "train"
    #: the image column; default: the only Image column, else ``image`` or ``img``
    image_column: str | None = None
    #: class labels for a class-conditional model: a column name, or auto (label, labels or class; an image
    #: folder's class subfolders); null: unconditional
    label_column: str | None = None
    #: square training size; null: the size of the first image (after center crop)
    image_size: int | None = 28
    #: 1 (grayscale), 3 (RGB) or null (auto: 3 if any of the first images has color)
    channels: int | None = None
    #: resize the short side to image_size then center crop; false: resize to a square (aspect not kept)
    center_crop: bool = True
    random_flip: bool = False
    #: what to do with an image that cannot be decoded: stop naming it, or skip it with a warning
    on_corrupt: Literal["error", "skip"] = "error"
    #: the background that transparent (RGBA, LA, palette) images are composited onto, 0..255
    alpha_background: int = 255
    #: use only the first N images (handy for quick runs)
    max_samples: int | None = None
    #: decode the whole dataset once into a uint8 tensor when it takes at most this many MB
    predecode_max_mb: int = 4096
    #: DataLoader workers for datasets too large to pre-decode
    num_workers: int = 4


@dataclass
class EMAConfig:
    """An exponential moving average of the weights (diffusers' ``EMAModel``); the pipeline gets these.

    The decay warms up as ``1 - (1 + step / inv_gamma) ** -power`` and is capped at ``max_decay``, so the first,
    useless weights are forgotten fast in a short run: with power 3/4 the decay is 0.99 at step 460 and 0.999
    at step 10,000; with power 2/3 (long runs) 0.999 at step 31,600.
    """

    enabled: bool = True
    max_decay: float = 0.999
    min_decay: float = 0.0
    inv_gamma: float = 1.0
    power: float = 0.75
    #: start averaging after this many optimizer steps (before: the EMA copies the weights)
    update_after_step: int = 0


@dataclass
class TimestepSamplingConfig:
    """Which noise levels a training step draws (each image its own timestep t).

    ``uniform`` is the seed's ``t ~ U{0..T-1}``. ``logsnr_normal`` draws t so that log SNR(t) =
    log(alpha_bar_t / (1 - alpha_bar_t)) is normal with ``mean`` and ``std`` (Esser et al. 2024's logit-normal
    sampling, Karras et al. 2022's log-normal sigma, in the scheduler's own SNR), mixed with a ``uniform_share``
    of uniform draws so that no timestep goes untrained; with the linear schedule a uniform t spends over a
    third of the steps at log SNR < -4 (sqrt(alpha_bar) < 0.14), where the image is all but gone. The default,
    N(-1, 2) with 10% uniform, was measured on the default run (benchmarks/README.md, "Time to quality").
    """

    kind: Literal["uniform", "logsnr_normal"] = "logsnr_normal"
    mean: float = -1.0
    std: float = 2.0
    uniform_share: float = 0.1


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the built-in default run, configs/mnist.yaml.

    ``batch_size`` is per process; the global batch is ``batch_size * num_processes *
    gradient_accumulation_steps``.
    """

    output_dir: str = "runs/mnist"
    #: latest: continue the run in output_dir from its latest checkpoint and its config.yaml (only the keys in
    #: RESUME_SAFE_KEYS may then change); or a checkpoint folder / run folder to continue
    resume: str | None = None
    #: allow training into an output_dir that already holds a run (without resuming it)
    overwrite_output_dir: bool = False
    seed: int = 0

    data: DataConfig = field(default_factory=DataConfig)
    #: a registered backbone name: unet, diffusers-unet2d, or one a plugin adds
    backbone: str = "unet"
    #: the backbone's constructor kwargs; sample_size and in_channels default to the data's. Changing backbone
    #: (in the file or on the command line) without giving the whole mapping starts from the new backbone's own
    #: defaults: --model.KEY VALUE changes one key, --model '{...}' replaces the mapping
    model: dict[str, Any] = field(default_factory=lambda: dict(MNIST_MODEL))
    #: DDPMHubScheduler kwargs (num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type, ...)
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {
            "num_train_timesteps": DEFAULT_NUM_TRAIN_TIMESTEPS,
            "beta_schedule": "linear",
            "prediction_type": DEFAULT_PREDICTION_TYPE,
        }
    )

    max_steps: int = 1000
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    #: decoupled weight decay (AdamW); 0 is the seed's plain Adam
    weight_decay: float = 0.0
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = 100
    #: clip the global gradient norm to this; null: no clipping
    max_grad_norm: float | None = 1.0
    #: no, fp16 or bf16 win over the launcher (fp16 needs a GPU). auto (the default): the launcher's choice
    #: when launched by accelerate (accelerate launch --mixed_precision / accelerate config, seen as
    #: ACCELERATE_MIXED_PRECISION; its own default is no), else bf16 on a CPU that computes it natively
    #: (AVX512-BF16 or AMX), else no (on CUDA: float32 with TF32, measured as fast as bf16 or faster).
    #: null: the launcher's choice, else no (the defaults before auto)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] | None = "auto"
    #: class-conditional runs: the share of labels replaced by the null class, for classifier-free guidance
    p_uncond: float = 0.1
    #: min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5.0; null: plain MSE, the seed's loss
    snr_gamma: float | None = None
    #: the distribution of training timesteps: logsnr_normal (the default) or uniform (the seed's)
    timestep_sampling: TimestepSamplingConfig = field(default_factory=TimestepSamplingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    #: fetch the loss from the device (a host sync) every N steps, for the progress bar and TensorBoard
    logging_steps: int = 10
    #: experiment tracker(s) through accelerate: tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml,
    #: dvclive, swanlab, all (every installed one), a list of them, or none
    log_with: str | list[str] | None = "tensorboard"
    #: write samples/step-N.png (and to TensorBoard) every N steps; 0: never
    sample_steps: int = 250
    num_sample_images: int = 16
    #: the sampler and steps of the grids made during training (null steps: the sampler's default)
    sample_sampler: str = "sde-dpm-solver++"
    sample_inference_steps: int | None = None
    #: the sampler and steps of the final samples.png (ddpm with null steps: the seed's full reverse chain)
    final_sampler: str = "ddpm"
    final_inference_steps: int | None = None
    #: accelerator.save_state into checkpoints/checkpoint-N every N steps; 0: only at the end
    checkpointing_steps: int = 250
    #: keep at most this many checkpoints (the oldest are deleted); null: keep all
    checkpoints_total_limit: int | None = 2

    #: push the final pipeline, model card, samples.png and loss.png to the Hub repo hub_repo_id at the end
    push_to_hub: bool = False
    #: the Hub model repo, NAMESPACE/NAME (created if missing); also names the repo in the model card
    hub_repo_id: str | None = None
    #: create the Hub repo private (when it does not exist yet)
    hub_private: bool = False
    #: the branch to push to (created from main if missing); null: main
    hub_revision: str | None = None

    def validate(self) -> None:
        """Check values whose type alone does not make them valid."""
        for key, value in _float_values(self):  # nan passes every comparison below
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in 0..2**32-1 (what numpy and torch accept), got {self.seed}")
        positive = {
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "logging_steps": self.logging_steps,
            "num_sample_images": self.num_sample_images,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        for key in ("sample_steps", "checkpointing_steps", "lr_warmup_steps", "ema.update_after_step"):
            value = _get(self, key)
            if value < 0:
                raise ConfigError(f"{key} must be 0 or more, got {value}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(
                f"max_grad_norm must be positive or null (no clipping), got {self.max_grad_norm}"
            )
        if not 0 <= self.p_uncond < 1:
            raise ConfigError(
                f"p_uncond must be in [0, 1) (0.1 is usual; 0 trains no null class, so no guidance), got {self.p_uncond}"
            )
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"snr_gamma must be positive or null (plain MSE), got {self.snr_gamma}")
        ts = self.timestep_sampling
        if ts.std <= 0:
            raise ConfigError(
                f"timestep_sampling.std must be positive (in log SNR units, e.g. 2.0), got {ts.std}"
            )
        if not 0 <= ts.uniform_share <= 1:
            raise ConfigError(
                f"timestep_sampling.uniform_share must be in [0, 1] (the share of uniform draws), got {ts.uniform_share}"
            )
        if not 0 <= self.ema.max_decay < 1 or not 0 <= self.ema.min_decay <= self.ema.max_decay:
            raise ConfigError(
                f"ema.max_decay must be in [0, 1) and ema.min_decay in [0, max_decay]; got "
                f"{self.ema.max_decay} and {self.ema.min_decay}"
            )
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError(
                f"checkpoints_total_limit must be at least 1 or null, got {self.checkpoints_total_limit}"
            )
        d = self.data
        if d.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1, 3 or null (auto), got {d.channels}")
        if d.image_size is not None and d.image_size < 1:
            raise ConfigError(
                f"data.image_size must be positive or null (the images' own size), got {d.image_size}"
            )
        if not 0 <= d.alpha_background <= 255:
            raise ConfigError(f"data.alpha_background must be in 0..255, got {d.alpha_background}")
        if d.max_samples is not None and d.max_samples < 1:
            raise ConfigError(f"data.max_samples must be positive or null, got {d.max_samples}")
        if self.push_to_hub or self.hub_repo_id is not None:
            try:  # before training, not after hours of it
                check_push_settings(self.hub_repo_id, push=self.push_to_hub)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        check_trackers(self.log_with)
        for key in ("model", "scheduler"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(
                    f"{key} must be a mapping of constructor arguments, got {getattr(self, key)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)


#: the pip package of each tracker accelerate supports, where its name differs from the tracker's
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def tracker_names(log_with: str | list[str] | None) -> list[str]:
    """``log_with`` as a list of tracker names (``none``/null/``[]``: no tracker)."""
    if log_with is None:
        return []
    names = [log_with] if isinstance(log_with, str) else list(log_with)
    return [n for n in names if n != "none"]


def check_trackers(log_with: str | list[str] | None) -> None:
    """Raise ConfigError for a tracker accelerate does not know, or whose package is not installed (one line,
    with the pip command), before anything is written: accelerate itself would silently log nothing."""
    known = sorted(LOGGER_TYPE_TO_CLASS)
    available = {str(t) for t in get_available_trackers()}
    for name in tracker_names(log_with):
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(
                f"bad value for log_with: {name!r} is not a tracker accelerate supports; choose from "
                f"{', '.join(known)}, all, or none"
            )
        if name not in available:
            package = TRACKER_PACKAGES.get(name, name)
            raise ConfigError(
                f"log_with {name}: the {name} package is not installed; pip install {package} "
                "(or choose another tracker, or --log_with none)"
            )


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so that yaml.safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list of " + _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ") + "s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or ConfigError naming ``key`` and what it allows."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"bad value for {key}: {value!r}; allowed: {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad
    if origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_coerce(key, v, item) for v in value]
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:  # YAML 1.1's yes/no/on/off
            return _BOOL_WORDS[value.lower()]
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed_keys(cls: type, prefix: str = "") -> list[str]:
    return [prefix + f.name for f in dataclasses.fields(cls)]


def _set(config: Any, dotted: str, value: Any, full_key: str | None = None) -> None:
    """Set ``dotted`` (``max_steps``, ``data.image_size``, ``model.base_channels``) on a config dataclass."""
    full_key = full_key or dotted
    head, _, rest = dotted.partition(".")
    cls = type(config)
    names = {f.name for f in dataclasses.fields(cls)}
    if head not in names:
        prefix = full_key[: len(full_key) - len(dotted)]
        raise ConfigError(
            f"unknown config key {full_key!r}; allowed keys here: {', '.join(_allowed_keys(cls, prefix))}"
        )
    tp = _hints(cls)[head]
    current = getattr(config, head)
    if dataclasses.is_dataclass(current):
        if rest:
            _set(current, rest, value, full_key)
            return
        if not isinstance(value, dict):
            raise ConfigError(
                f"bad value for {full_key}: {value!r}; allowed: a mapping of {_allowed_keys(type(current))}"
            )
        for k, v in value.items():
            _set(current, str(k), v, f"{full_key}.{k}")
        return
    if rest:
        if typing.get_origin(tp) is dict:  # model.base_channels: a constructor kwarg, checked when built
            current[rest] = value
            return
        raise ConfigError(f"unknown config key {full_key!r}: {head} is {_type_name(tp)}, it has no sub-keys")
    setattr(config, head, _coerce(full_key, value, tp))


def apply(config: TrainConfig, values: dict[str, Any], prefix: str = "") -> TrainConfig:
    """Apply a (nested) mapping of values, as read from YAML, to ``config``."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config file must hold a mapping of keys to values, got {type(values).__name__}")
    _apply_layer(config, [(str(key), value) for key, value in values.items()], prefix)
    return config


def _apply_layer(config: TrainConfig, items: Sequence[tuple[str, Any]], prefix: str = "") -> None:
    """Set ``items`` (``(dotted key, value)``) on ``config``; when they change ``backbone`` but do not give
    ``model`` as a whole, the previous backbone's ``model`` is dropped and only the ``model.KEY`` items stay."""
    backbone = config.backbone
    for key, value in items:
        _set(config, key, value, prefix + key)
    if prefix or config.backbone == backbone or any(key == "model" for key, _ in items):
        return
    own = {key.split(".", 1)[1] for key, _ in items if key.startswith("model.")}
    config.model = {k: v for k, v in config.model.items() if k in own}


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it: ``64`` int, ``2e-4`` float, ``true``, ``[1, 2]``, ``null``.

    YAML 1.2 booleans: ``no``/``off``/``yes``/``on`` stay strings; boolean keys accept them (see ``_coerce``).
    """
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split ``--config FILE`` from ``--key value`` / ``--key=value`` / ``key=value`` / ``--flag`` overrides."""
    config_path: str | None = None
    overrides: list[tuple[str, Any]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    text = args[i + 1]
                    i += 1
                else:
                    text = "true"  # a bare --flag
        elif "=" in arg:
            key, _, text = arg.partition("=")
        else:
            raise ConfigError(f"cannot read the argument {arg!r}: use --key value, --key=value or key=value")
        key = key.replace("-", "_")  # --max-steps is --max_steps
        if key == "config":
            config_path = text
        else:
            overrides.append((key, parse_value(text)))
        i += 1
    return config_path, overrides


def load_config(path: str | Path | None = None, overrides: Sequence[tuple[str, Any]] = ()) -> TrainConfig:
    """The config in ``path`` with ``overrides`` applied, validated.

    Without ``path``: the defaults of :class:`TrainConfig`, which are ``configs/mnist.yaml`` (a test keeps the
    two equal), so that an installed package needs no file to run its built-in default.
    """
    config = TrainConfig()
    if path is not None:
        apply(config, read_yaml(path))
    _apply_layer(config, list(overrides))
    config.validate()
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or ConfigError naming the file and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file such as configs/mnist.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


def run_config_file(config: TrainConfig) -> Path | None:
    """The saved config.yaml of the run that ``config.resume`` continues, if it has one.

    ``resume: latest`` continues ``output_dir``; a checkpoint folder (RUN/checkpoints/checkpoint-N) or a run
    folder continues that run.
    """
    if config.resume is None:
        return None
    if config.resume == "latest":
        run = Path(config.output_dir)
    else:
        run = Path(config.resume)
        if re.fullmatch(r"checkpoint-\d+", run.name):
            run = run.parent.parent
    path = run.expanduser() / "config.yaml"
    return path if path.is_file() else None


def saved_run_config(path: Path) -> TrainConfig:
    """A run's saved config.yaml as a TrainConfig (not validated: it is what the run was)."""
    config = TrainConfig()
    try:
        values = read_yaml(path)
        if "timestep_sampling" not in values:  # saved before the key existed: those runs drew a uniform t
            config.timestep_sampling = TimestepSamplingConfig(kind="uniform")
        apply(config, values)
    except ConfigError as exc:
        raise ConfigError(f"cannot read the run's saved config {path}: {exc}") from exc
    return config


def flat_items(config: TrainConfig) -> dict[str, Any]:
    """Every key of ``config`` as ``dotted.key: value``, the model and scheduler kwargs included."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix.rstrip(".")] = _plain(value)

    walk(config.to_dict(), "")
    return out


def keep_run_precision(saved: TrainConfig, new: TrainConfig) -> TrainConfig:
    """``new`` with the saved run's precision where ``new`` leaves it to be chosen (``auto`` or null): a run's
    config.yaml holds the precision it resolved, and a resumed run continues in it on any machine."""
    if new.mixed_precision in (None, "auto") and saved.mixed_precision not in (None, "auto"):
        return dataclasses.replace(new, mixed_precision=saved.mixed_precision)
    return new


def resume_changes(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """``key: old -> new`` for every key that differs between a saved run and a resume of it and that
    resume may not change (see :data:`RESUME_SAFE_KEYS`). Callers first apply :func:`keep_run_precision`."""
    unset = "(not set)"
    old_items, new_items = flat_items(saved), flat_items(new)
    keys = list(old_items) + [k for k in new_items if k not in old_items]
    return [
        f"{key}: {old_items.get(key, unset)!r} -> {new_items.get(key, unset)!r}"
        for key in keys
        if key not in RESUME_SAFE_KEYS and old_items.get(key, unset) != new_items.get(key, unset)
    ]


def check_resume(saved: TrainConfig, new: TrainConfig, source: str | Path) -> None:
    """ConfigError listing (one line per key, old -> new) what ``new`` changes that resume may not change."""
    changes = resume_changes(saved, new)
    if changes:
        raise ConfigError(
            f"cannot resume with a changed experiment: {len(changes)} key(s) differ from the run's saved config "
            f"{source} (old -> new):\n  "
            + "\n  ".join(changes)
            + "\ndrop them to continue the run as it was, or train a new run with another --output_dir. "
            f"Resume may change only: {', '.join(k for k in RESUME_SAFE_KEYS if k not in ('resume',))}"
        )


def config_from_argv(argv: Sequence[str]) -> TrainConfig:
    """``--config FILE`` and overrides, as ``python -m ddpm_hub.train`` and ``ddpm-hub train`` take them.

    With ``--resume``, the run's saved config.yaml is the base and the file and overrides apply on top of it;
    a change to a key outside :data:`RESUME_SAFE_KEYS` stops (see :func:`check_resume`).
    """
    path, overrides = parse_overrides(argv)
    config = load_config(path, overrides)
    saved_file = run_config_file(config)
    if saved_file is None:
        return config
    saved = saved_run_config(saved_file)
    resumed = copy.deepcopy(saved)
    if path is not None:
        apply(resumed, read_yaml(path))
    _apply_layer(resumed, list(overrides))
    for key in ("output_dir", "resume", "overwrite_output_dir"):
        setattr(resumed, key, getattr(config, key))
    resumed = keep_run_precision(saved, resumed)  # --config configs/mnist.yaml says auto
    check_resume(saved, resumed, saved_file)
    resumed.validate()
    return resumed


def describe() -> str:
    """Every config key with its type and default, for ``--help``."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                tp = _type_name(_hints(type(obj))[f.name])
                lines.append(f"  --{prefix + f.name:<34} {tp} (default: {value!r})")

    walk(TrainConfig(), "")
    return "\n".join(lines)


def _float_values(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every float field of the config dataclass ``obj`` and its nested sections."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += _float_values(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            found.append((f"{prefix}{f.name}", value))
    return found
