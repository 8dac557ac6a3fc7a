"""Training images through Hugging Face ``datasets``, and the transforms (no torchvision).

Sources (``DataConfig.dataset``):

* ``mnist5k``: the built-in dataset, 5,000 MNIST digits (28x28, 500 per class) in ``ddpm_hub/datasets/``;
* a local folder of images (``datasets``' ``imagefolder`` builder; class subfolders are fine);
* parquet file(s): a path, a folder of ``*.parquet`` or a glob;
* a Hub dataset name (``huggan/smithsonian_butterflies_subset``), with ``dataset_config`` and ``split``;
* in Python, a ``datasets.Dataset`` passed to :func:`load_images`.

Images keep their channels: grayscale stays 1 channel, color is RGB; RGBA, LA and palette images with
transparency are composited onto ``alpha_background`` (white by default) rather than having their alpha
dropped, 16-bit and float grayscale are rescaled to 8 bits. Each image is resized (short side to
``image_size``, high-quality Lanczos) and center-cropped, or resized to a square when ``center_crop`` is off.
Random horizontal flips are applied per batch in the training loop (:func:`random_flip`), so they come from
the (checkpointed) torch RNG.

Class labels (class-conditional training, ``data.label_column``): ``auto`` takes the column ``label``,
``labels`` or ``class`` (an image folder with one subfolder per class gets a ``label`` column from
``datasets``' imagefolder builder, named after the subfolders); or name the column. The number of classes and
their names come from the column's ``ClassLabel`` feature when it has one, else from the values (integers
0..max, named "0", "1", ...). ``null`` (the default) trains an unconditional model.

A dataset whose decoded pixels fit in ``predecode_max_mb`` is decoded once into one uint8 tensor
(N, C, H, W): a batch is then an index into it, and loading is never the bottleneck. Larger datasets are
decoded on the fly by DataLoader workers.
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DataConfig
from .datasets import BUILTIN_DATASETS

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img")
#: the columns ``label_column: auto`` looks for, in this order
LABEL_COLUMN_NAMES = ("label", "labels", "class")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}
#: how many images ``channels: null`` looks at to decide between grayscale and RGB
CHANNEL_PROBE = 64


class DataError(ValueError):
    """The dataset cannot be used as configured; the message says why and how to fix it."""


def load_dataset(config: DataConfig):
    """The ``datasets.Dataset`` that ``config.dataset`` names (see the module docstring for the sources)."""
    name = config.dataset
    if name in BUILTIN_DATASETS:
        return datasets.load_dataset("parquet", data_files=str(BUILTIN_DATASETS[name]), split="train")
    path = Path(name).expanduser()
    if path.is_dir():
        parquet = sorted(str(p) for p in path.rglob("*.parquet"))
        if parquet:
            return datasets.load_dataset("parquet", data_files=parquet, split="train")

        if not any(p.suffix.lower() in ImageFolder.EXTENSIONS for p in path.rglob("*") if p.is_file()):
            raise DataError(
                f"no images found in {path} (read: .png, .jpg, .jpeg, .webp, .bmp, .gif, .tif and the other "
                f"formats Pillow opens, in the folder and its subfolders; or *.parquet files)"
            )
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=config.split)
        except (ValueError, FileNotFoundError) as exc:  # no image files, or no such split
            raise DataError(f"cannot read images from the folder {path}: {exc}") from exc
    if name.endswith(".parquet") or glob.has_magic(name):
        files = sorted(glob.glob(os.path.expanduser(name)))
        if not files:
            raise DataError(f"no parquet files match {name!r}")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if path.is_file():
        raise DataError(
            f"{path} is a file but not a parquet file; give a folder of images, parquet file(s) or a Hub name"
        )
    try:
        return datasets.load_dataset(name, config.dataset_config, split=config.split)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (the Hub is offline here: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if offline else ""
        raise DataError(
            f"cannot load the dataset {name!r}{hint}: it is not built in ({', '.join(BUILTIN_DATASETS)}), not a local "
            f"folder or parquet file, and loading it from the Hub failed: {type(exc).__name__}: {exc}"
        ) from exc


def find_image_column(dataset, column: str | None) -> str:
    """The image column: ``column`` if given, else the only Image column, else ``image`` or ``img``."""
    features = dataset.features
    image_columns = [k for k, v in features.items() if isinstance(v, datasets.Image)]
    if column is not None:
        if column not in features:
            raise DataError(
                f"the dataset has no column {column!r}; its columns are {list(features)} "
                f"(image columns: {image_columns or 'none'}). Set data.image_column to one of them"
            )
        if column not in image_columns:
            raise DataError(
                f"the column {column!r} holds {features[column]}, not images; image columns: {image_columns or 'none'}"
            )
        return column
    if len(image_columns) == 1:
        return image_columns[0]
    for name in IMAGE_COLUMN_NAMES:
        if name in image_columns:
            return name
    if not image_columns:
        raise DataError(f"the dataset has no image column; its columns are {list(features)} ({features})")
    raise DataError(
        f"the dataset has several image columns {image_columns}; choose one with data.image_column"
    )


def find_label_column(dataset, column: str) -> str:
    """The label column: ``column``, or for ``auto`` the first of ``label``, ``labels``, ``class``."""
    features = dataset.features
    if column != "auto":
        if column not in features:
            raise DataError(
                f"the dataset has no label column {column!r}; its columns are {list(features)}. Set "
                "data.label_column to one of them, to auto, or to null for an unconditional model"
            )
        return column
    for name in LABEL_COLUMN_NAMES:
        if name in features:
            return name
    raise DataError(
        f"data.label_column is auto but the dataset has none of the columns {list(LABEL_COLUMN_NAMES)}; its "
        f"columns are {list(features)}. Name the label column with data.label_column, or set it to null to "
        "train an unconditional model (an image folder gets labels from one subfolder per class)"
    )


def read_labels(dataset, column: str, source: str) -> tuple[torch.Tensor, list[str]]:
    """(labels (N,) int64, class names) of ``column``: names from its ClassLabel feature, else "0".."max"."""
    feature = dataset.features[column]
    values = list(dataset[column])
    bad = next(
        (
            (i, v)
            for i, v in enumerate(values)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
        ),
        None,
    )
    if bad is not None:
        i, v = bad
        raise DataError(
            f"the label column {column!r} of {source} must hold non-negative integer class ids; row {i} holds "
            f"{v!r} ({feature}). Encode string labels as class ids first (datasets: "
            f"dataset.class_encode_column({column!r})), or set data.label_column to another column"
        )
    labels = torch.tensor(values, dtype=torch.long)
    if isinstance(feature, datasets.ClassLabel):
        names = [str(n) for n in feature.names]
        if len(labels) and int(labels.max()) >= len(names):
            raise DataError(
                f"the label column {column!r} of {source} holds class id {int(labels.max())} but its ClassLabel "
                f"has only {len(names)} names"
            )
    else:
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if len(names) < 2:
        raise DataError(
            f"the label column {column!r} of {source} has {len(names)} class(es); class-conditional training "
            "needs at least 2 (set data.label_column: null for an unconditional model)"
        )
    return labels, names


def to_mode(image: Image.Image, channels: int, background: int = 255) -> Image.Image:
    """Convert any PIL image to "L" (channels=1) or "RGB" (channels=3), deliberately.

    Transparency (RGBA, LA, palette with a transparent color) is composited onto a ``background`` gray
    level, not dropped; 16-bit and 32-bit grayscale are rescaled to 0..255 rather than clipped.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        if mode == "F" and array.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (background, background, background, 255))
        image = Image.alpha_composite(base, rgba).convert("RGB")
        mode = "RGB"
    target = "L" if channels == 1 else "RGB"
    return image if mode == target else image.convert(target)


def resize(image: Image.Image, size: int, center_crop: bool = True) -> Image.Image:
    """Short side to ``size`` then a center crop (or, without crop, straight to size x size)."""
    if image.size == (size, size):
        return image
    if not center_crop:
        return image.resize((size, size), Image.Resampling.LANCZOS)
    return ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each (C, H, W) image of a (B, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _describe(row: dict[str, Any] | None, index: int, source: str) -> str:
    path = (row or {}).get("path")
    return f"row {index} of {source}" + (f" (file {path})" if path else "")


def _open(row: Any) -> Image.Image:
    """A PIL image from a raw ``Image(decode=False)`` cell ({"bytes", "path"})."""
    if isinstance(row, Image.Image):
        return row
    if row is None:
        raise UnidentifiedImageError("the cell is empty (None)")
    data, path = row.get("bytes"), row.get("path")
    image = Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
    image.load()
    return image


@dataclass
class ImageData:
    """The prepared training images.

    ``images`` is the (N, C, H, W) uint8 tensor when pre-decoded; otherwise ``dataset`` (raw cells) is
    decoded per batch by :meth:`loader`.
    """

    source: str
    channels: int
    image_size: int
    num_images: int
    images: torch.Tensor | None = None
    dataset: Any = None
    column: str | None = None
    config: DataConfig | None = None
    skipped: int = 0
    #: class-conditional data: (N,) int64 class ids and the class names (index = id); else None
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int | None:
        """The number of classes of labelled data; None for unlabelled data."""
        return None if self.class_names is None else len(self.class_names)

    def decode(self, index: int) -> torch.Tensor:
        """Image ``index`` as a (C, H, W) uint8 tensor (on-the-fly path)."""
        row = self.dataset[index][self.column]
        image = _open(row)
        return _to_tensor(
            resize(
                to_mode(image, self.channels, self.config.alpha_background),
                self.image_size,
                self.config.center_crop,
            )
        )

    def batches(self, sampler: ShardedBatchSampler, num_workers: int = 0) -> Iterator[Any]:
        """(B, C, H, W) uint8 batches in the order ``sampler`` gives (which knows the data position); with
        labels, (images, (B,) int64 labels) pairs."""
        if self.images is not None:
            for indices in sampler:
                index = torch.as_tensor(indices)
                yield self.images[index] if self.labels is None else (self.images[index], self.labels[index])
            return
        loader = torch.utils.data.DataLoader(
            _LazyImages(self),
            batch_sampler=sampler,
            num_workers=num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            collate_fn=_collate,
        )
        for batch in loader:
            if isinstance(
                batch, _DecodeFailure
            ):  # raised here, not in a worker: one line, no worker traceback
                raise DataError(batch.message)
            yield batch


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.uint8)  # a writable copy
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass
class _DecodeFailure:
    """What a DataLoader worker returns for an image it cannot decode (the main process raises it)."""

    message: str


def _collate(items: list) -> Any:
    for item in items:
        if isinstance(item, _DecodeFailure):
            return item
    if isinstance(items[0], tuple):  # labelled data: (images, labels)
        return torch.stack([image for image, _ in items]), torch.stack([label for _, label in items])
    return torch.stack(items)


class _LazyImages(torch.utils.data.Dataset):
    """Decode on the fly; with on_corrupt=skip a bad image is replaced by the next good one (warned)."""

    def __init__(self, data: ImageData):
        self.data = data

    def __len__(self) -> int:
        return self.data.num_images

    def __getitem__(self, index: int) -> Any:
        try:
            return self._decode(index)
        except DataError as exc:
            return _DecodeFailure(str(exc))

    def _decode(self, index: int) -> Any:
        """The image (C, H, W), or (image, label) for labelled data."""
        for offset in range(self.data.num_images):
            i = (index + offset) % self.data.num_images
            try:
                image = self.data.decode(i)
                return image if self.data.labels is None else (image, self.data.labels[i])
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                where = _describe(self.data.dataset[i][self.data.column], i, self.data.source)
                if self.data.config.on_corrupt == "error":
                    raise DataError(_corrupt_message(where, exc)) from exc
                logger.warning("skipping a corrupt image, %s: %s", where, exc)
        raise DataError(f"no image of {self.data.source} could be decoded")


def _corrupt_message(where: str, exc: BaseException) -> str:
    return (
        f"cannot decode the image at {where}: {type(exc).__name__}: {exc}. Fix or remove it, or set "
        "data.on_corrupt=skip to leave such images out with a warning"
    )


def load_images(config: DataConfig, dataset=None) -> ImageData:
    """Load, check and (when small enough) pre-decode the training images.

    ``dataset``: a ``datasets.Dataset`` to use instead of ``config.dataset`` (the Python API).
    """
    source = "the given Dataset" if dataset is not None else repr(config.dataset)
    if dataset is None:
        dataset = load_dataset(config)
    if isinstance(dataset, datasets.DatasetDict):
        if config.split not in dataset:
            raise DataError(f"{source} has no split {config.split!r}; its splits are {list(dataset)}")
        dataset = dataset[config.split]
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    column = find_image_column(dataset, config.image_column)
    label_column = None if config.label_column is None else find_label_column(dataset, config.label_column)
    if config.max_samples is not None and len(dataset) > config.max_samples:
        dataset = dataset.select(range(config.max_samples))
    labels = class_names = None
    if label_column is not None and len(dataset):
        labels, class_names = read_labels(dataset, label_column, source)
    dataset = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    if len(dataset) == 0:
        raise DataError(f"{source} is empty (split {config.split!r} has no rows); nothing to train on")

    # Channels and size from the first decodable images.
    probe_modes: list[str] = []
    first: Image.Image | None = None
    for i in range(min(CHANNEL_PROBE, len(dataset))):
        try:
            image = _open(dataset[i][column])
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            continue  # reported (or skipped) by the full pass below
        first = first or image
        probe_modes.append(image.mode)
    channels = config.channels
    color = [m for m in probe_modes if m not in GRAY_MODES and not (m == "P" and _palette_is_gray(first))]
    if channels == 1 and color:
        logger.warning(
            "data.channels=1 on color data: %s holds color images (%d of the first %d), which are converted to "
            "grayscale (Pillow's luma, L = 0.299 R + 0.587 G + 0.114 B) and trained as 1 channel, so the model "
            "and its samples are grayscale; drop data.channels (auto) or set 3 to keep color",
            source,
            len(color),
            len(probe_modes),
        )
    if channels is None:
        gray = all(m in GRAY_MODES or (m == "P" and _palette_is_gray(first)) for m in probe_modes)
        channels = 1 if probe_modes and gray else 3
    if config.image_size is not None:
        size = config.image_size
    elif first is not None:
        size = min(first.size) if config.center_crop else first.size[0]
    else:
        size = 0  # all probed images corrupt: the pass below reports them

    data = ImageData(
        source=source,
        channels=channels,
        image_size=size,
        num_images=len(dataset),
        dataset=dataset,
        column=column,
        config=config,
        labels=labels,
        class_names=class_names,
    )
    bytes_needed = len(dataset) * channels * size * size
    if bytes_needed <= config.predecode_max_mb * 2**20:
        _predecode(data)
    return data


def _palette_is_gray(image: Image.Image | None) -> bool:
    if image is None or image.mode != "P":
        return False
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _predecode(data: ImageData) -> None:
    """Decode every image once into data.images (N, C, H, W) uint8, skipping or reporting corrupt ones."""
    config, dataset, column = data.config, data.dataset, data.column
    images = torch.empty(
        (data.num_images, data.channels, data.image_size, data.image_size), dtype=torch.uint8
    )
    keep = 0
    kept: list[int] = []
    color_in_gray = 0
    rows = (row for chunk in dataset.iter(batch_size=1000) for row in chunk[column])
    for i, row in enumerate(rows):
        try:
            image = _open(row)
            if data.channels == 1 and image.mode not in GRAY_MODES and image.mode != "P":
                color_in_gray += 1
            image = resize(
                to_mode(image, data.channels, config.alpha_background), data.image_size, config.center_crop
            )
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            where = _describe(row, i, data.source)
            if config.on_corrupt == "error":
                raise DataError(_corrupt_message(where, exc)) from exc
            logger.warning("skipping a corrupt image, %s: %s", where, exc)
            data.skipped += 1
            continue
        images[keep] = _to_tensor(image)
        kept.append(i)
        keep += 1
    if keep == 0:
        raise DataError(f"none of the {data.num_images} images of {data.source} could be decoded")
    if color_in_gray and config.channels is None:  # channels=1 given: warned in load_images
        logger.warning(
            "%d color images were converted to grayscale: the first %d images of %s are grayscale, so the "
            "dataset is trained as 1 channel; set data.channels=3 to keep color",
            color_in_gray,
            CHANNEL_PROBE,
            data.source,
        )
    data.images = images[:keep].clone() if keep < data.num_images else images
    if data.labels is not None and keep < data.num_images:
        data.labels = data.labels[torch.tensor(kept)]
    data.num_images = keep


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable batches for data-parallel training.

    Every epoch is a permutation of the N images drawn from ``seed + epoch`` (the same on every process);
    it is cut into global batches of ``batch_size * num_processes`` (the remainder dropped) and process
    ``rank`` takes its slice of each. ``start`` skips that many batches (the data position of a resumed
    run); iteration never ends (the loop stops at max_steps).
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        rank: int = 0,
        num_processes: int = 1,
        seed: int = 0,
        start: int = 0,
    ):
        global_batch = batch_size * num_processes
        if num_images < global_batch:
            raise DataError(
                f"the dataset has {num_images} images, fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {num_processes} processes); lower batch_size or add images"
            )
        self.num_images, self.batch_size, self.rank = num_images, batch_size, rank
        self.num_processes, self.seed, self.start = num_processes, seed, start
        self.batches_per_epoch = num_images // global_batch

    def __len__(self) -> int:  # per epoch; iteration itself is endless
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            epoch, index = divmod(position, self.batches_per_epoch)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_images, generator=generator)
            global_batch = self.batch_size * self.num_processes
            for b in range(index, self.batches_per_epoch):
                lo = b * global_batch + self.rank * self.batch_size
                yield order[lo : lo + self.batch_size].tolist()
                position += 1
