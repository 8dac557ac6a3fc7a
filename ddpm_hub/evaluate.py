"""Sample quality: an offline Frechet distance for MNIST-like data, and the Inception FID/KID hook.

FID (Heusel et al. 2017) compares generated and real images in the features of an ImageNet Inception
network. Those weights are a download, and for 28x28 digits an ImageNet network is a poor judge anyway,
so for MNIST-like data ddpm-hub measures the same statistics in the features of a small digit classifier
(the "classifier Frechet distance", FD-MNIST, as in the MNIST experiments of the diffusion literature):

- **Classifier.** ``MnistClassifier``, a 4-layer CNN (61k parameters), trained on rows 0..3999 of the
  built-in MNIST-5k (``ddpm_hub/datasets/mnist5k.parquet``, shuffled, 400 digits per class) and shipped
  as ``ddpm_hub/datasets/mnist5k_classifier.safetensors`` (240 kB). ``python -m ddpm_hub.evaluate
  train-classifier OUT`` reproduces it (seeded; the file records its held-out accuracy, 95.3%).
- **Reference.** rows 4000..4999 of MNIST-5k (the held-out split the classifier never saw, 1000 digits).
  A diffusion model trained on the built-in dataset has seen these digits: the distance then measures
  fit to the training distribution, as FID on CIFAR-10's training set does.
- **Metrics.** ``fd`` (Frechet distance between Gaussians fitted to the 64-d penultimate features),
  ``kid`` (the unbiased polynomial-kernel MMD of Binkowski et al. 2018, in the same features scaled by
  the reference's RMS, mean over subsets), ``confidence`` (mean max class probability), ``entropy`` (mean
  predictive entropy, nats) and ``class_histogram`` (fraction per predicted class: mode coverage). The
  classifier is overconfident on pure noise (confidence 0.96 on uniform noise), so confidence and
  entropy only qualify a low ``fd``; ``fd`` is the number to compare.

Scale, for N = 1000 samples: 1000 real digits (rows 0..999) against the reference give fd 5 (finite-sample
bias plus the classifier having trained on them), uniform noise 1090, and real digits plus Gaussian noise
of std 0.1 / 0.2 / 0.4 give 17 / 61 / 367. See benchmarks/README.md for what trained models reach.
The distance depends on the number of samples (it is biased upward for small N): compare numbers at
the same N only.

Inception FID/KID: not bundled (no network here, and no Inception-v3 implementation ships with ddpm-hub);
``inception_features`` and ``ddpm-hub eval --metric inception`` raise a clear error saying how to get them.
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn

from .datasets import BUILTIN_DATASET, BUILTIN_DATASETS, DATASETS_DIR

MNIST5K = BUILTIN_DATASETS[BUILTIN_DATASET]
CLASSIFIER_WEIGHTS = DATASETS_DIR / "mnist5k_classifier.safetensors"
#: rows of MNIST-5k the classifier trains on, and the held-out reference rows
CLASSIFIER_ROWS = range(0, 4000)
REFERENCE_ROWS = range(4000, 5000)


class MnistClassifier(nn.Module):
    """A small digit CNN: 28x28x1 in [0, 1] -> 64-d features -> 10 logits."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)  # 28x28 -> pool -> 14x14
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)  # 14x14 -> pool -> 7x7
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)  # 7x7 -> pool -> 3x3
        self.fc = nn.Linear(64 * 3 * 3, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [0, 1] -> (B, 64) penultimate features."""
        x = (x - 0.5) / 0.5
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------- data


def _image_column(ds) -> str:
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(
        f"the dataset has no image column (columns: {list(ds.features)}); it needs one of type Image"
    )


def load_images(dataset: str | Path = BUILTIN_DATASET, rows: range | None = None) -> torch.Tensor:
    """Images of a dataset as a (N, 1, 28, 28) float tensor in [0, 1] (grayscale, resized to 28x28).

    ``dataset``: ``"mnist5k"`` (the built-in data; default rows: the held-out reference split), a
    ``.parquet`` file, or a folder of images (``datasets``' imagefolder).
    """
    ds, default_rows = _open_dataset(dataset)
    rows = default_rows if rows is None else rows
    if rows is not None:
        ds = ds.select(rows)
    column = _image_column(ds)

    arrays = []
    for image in ds[column]:
        image = image.convert("L")
        if image.size != (28, 28):
            image = image.resize((28, 28), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1).float() / 255.0


def _open_dataset(dataset: str | Path):
    """(the ``datasets.Dataset``, its default reference rows or None) for ``load_images``' ``dataset``."""
    if str(dataset) == BUILTIN_DATASET:
        return datasets.load_dataset("parquet", data_files=str(MNIST5K), split="train"), REFERENCE_ROWS
    else:
        path = Path(dataset).expanduser()
        if path.is_file() and path.suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        elif path.is_dir():
            if not any(p.suffix.lower() in ImageFolder.EXTENSIONS for p in path.rglob("*") if p.is_file()):
                raise FileNotFoundError(
                    f"no images found in {path} (read: .png, .jpg, .jpeg, .webp, .bmp, .gif, .tif and the other "
                    "formats Pillow opens, in the folder and its subfolders): give a folder of images, a .parquet "
                    f"file with an image column, or {BUILTIN_DATASET!r}"
                )
            ds = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        elif path.is_file():
            raise FileNotFoundError(
                f"dataset {str(dataset)!r} is a file but not a .parquet file: give {BUILTIN_DATASET!r} (the built-in "
                "MNIST-5k), a .parquet file with an image column, or a folder of images"
            )
        else:
            raise FileNotFoundError(
                f"dataset {str(dataset)!r} not found: give {BUILTIN_DATASET!r} (the built-in MNIST-5k), a .parquet "
                "file with an image column, or a folder of images"
            )
    return ds, None


def dataset_image_shape(dataset: str | Path = BUILTIN_DATASET) -> tuple[int, int, int]:
    """(channels, H, W) of a dataset's first image as stored (``load_images`` makes every image 1x28x28);
    grayscale modes count as 1 channel, colour ones as 3."""
    ds, _ = _open_dataset(dataset)
    image = ds[0][_image_column(ds)]
    channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    return channels, image.height, image.width


def check_image_shape(image_shape: tuple[int, int, int], dataset: str | Path = BUILTIN_DATASET) -> None:
    """Refuse to score a model's ``image_shape`` (C, H, W) against reference data of another channel count
    (ValueError); warn when only the size differs (both are resized to 28x28 for the classifier)."""
    c, h, w = dataset_image_shape(dataset)
    C, H, W = image_shape
    if c != C:
        raise ValueError(
            f"the model makes {C}x{H}x{W} images but the reference data {str(dataset)!r} holds {c}x{h}x{w} "
            f"images: scores against it would compare different kinds of images. Give a dataset of {C}-channel "
            "images like the model's training data (--dataset FOLDER or FILE.parquet)"
        )
    if (h, w) != (H, W):
        warnings.warn(
            f"the model makes {H}x{W} images and the reference data {str(dataset)!r} holds {h}x{w} images; "
            "both are resized to 28x28 for the classifier",
            stacklevel=2,
        )


def load_labels(rows: range) -> torch.Tensor:
    ds = datasets.load_dataset("parquet", data_files=str(MNIST5K), split="train").select(rows)
    return torch.tensor(ds["label"])


# ----------------------------------------------------------------------------------------- classifier


def train_classifier(epochs: int = 8, seed: int = 0, batch_size: int = 64) -> tuple[MnistClassifier, float]:
    """Train ``MnistClassifier`` on the classifier rows of MNIST-5k; return it and its held-out accuracy.

    Adam 1e-3 with cosine decay, +-2 px random shifts; seeded, so it reproduces (up to float order).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = load_images(BUILTIN_DATASET, CLASSIFIER_ROWS), load_labels(CLASSIFIER_ROWS)
    model = MnistClassifier()
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = F.pad(x[idx], (2, 2, 2, 2))
            dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
            xb = xb[:, :, dy : dy + 28, dx : dx + 28]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        xr, yr = load_images(BUILTIN_DATASET, REFERENCE_ROWS), load_labels(REFERENCE_ROWS)
        accuracy = (model(xr).argmax(1) == yr).float().mean().item()
    return model, accuracy


def save_classifier(
    model: MnistClassifier, path: str | Path, accuracy: float, seed: int, epochs: int
) -> None:
    metadata = {
        "held_out_accuracy": f"{accuracy:.4f}",
        "seed": str(seed),
        "epochs": str(epochs),
        "train_rows": f"{CLASSIFIER_ROWS.start}..{CLASSIFIER_ROWS.stop - 1}",
        "reference_rows": f"{REFERENCE_ROWS.start}..{REFERENCE_ROWS.stop - 1}",
    }
    save_model(model, str(path), metadata=metadata)


def load_classifier(path: str | Path | None = None) -> MnistClassifier:
    """The shipped MNIST-5k classifier (or the safetensors file at ``path``), in eval mode."""
    path = Path(path) if path is not None else CLASSIFIER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights {path} not found; rebuild them with `python -m ddpm_hub.evaluate train-classifier {path}`"
        )
    model = MnistClassifier()
    load_model(model, str(path))
    return model.eval()


# -------------------------------------------------------------------------------------------- metrics


def _to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, 28, 28) in [0, 1] (channel mean; area downscale, bilinear upscale)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (batch, channels, H, W) in [0, 1], got shape {tuple(images.shape)}")
    images = images.float()
    if images.shape[1] != 1:
        images = images.mean(1, keepdim=True)
    if images.shape[-2] > 28 and images.shape[-1] > 28:
        images = F.interpolate(images, size=(28, 28), mode="area")  # box filter, as PIL's reduce
    elif images.shape[-2:] != (28, 28):
        images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return images.clamp(0, 1)


@torch.inference_mode()
def classifier_outputs(
    images: torch.Tensor, classifier: MnistClassifier | None = None, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 64) float64, class probabilities (N, 10)) of images in [0, 1]."""
    classifier = classifier or load_classifier()
    images = _to_classifier_input(images)
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(images[i : i + batch_size])
        feats.append(f.double())
        probs.append(classifier.head(f).softmax(-1))
    return torch.cat(feats), torch.cat(probs)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)); the trace of the matrix square root is the sum
    of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD, so ``eigh`` is exact
    and stable where scipy's ``sqrtm`` of the non-symmetric product can go complex).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"need two feature sets (N, D), (M, D) with N, M >= 2; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    sqrt_a = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * middle
    return max(fd.item(), 0.0)


def kernel_distance(
    a: torch.Tensor, b: torch.Tensor, subsets: int = 20, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """KID-style unbiased MMD^2 with the kernel (x.y / D + 1)^3; (mean, std) over random subsets."""
    a, b = a.double(), b.double()
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("kernel_distance needs at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append((off - 2 * kxy.mean()).item())
    t = torch.tensor(values)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


@dataclass
class Reference:
    """Classifier features of the real images that generated samples are compared with."""

    features: torch.Tensor
    dataset: str
    num_images: int

    @classmethod
    def from_dataset(
        cls,
        dataset: str | Path = BUILTIN_DATASET,
        classifier: MnistClassifier | None = None,
        max_images: int | None = None,
    ) -> Reference:
        images = load_images(dataset)
        if max_images is not None:
            images = images[:max_images]
        return cls(classifier_outputs(images, classifier)[0], str(dataset), len(images))


#: reference features of the shipped classifier, by dataset; a custom classifier's are computed afresh,
#: since features of one classifier mean nothing to another
_REFERENCE_CACHE: dict[str, Reference] = {}


@dataclass
class QualityReport:
    """Sample quality of N images against a reference (see the module docstring for each metric)."""

    fd: float
    kid: float
    kid_std: float
    confidence: float
    entropy: float
    class_histogram: list[float]
    num_samples: int
    reference: str
    num_reference: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


def evaluate_images(
    images: torch.Tensor,
    reference: Reference | str | Path = BUILTIN_DATASET,
    classifier: MnistClassifier | None = None,
) -> QualityReport:
    """Classifier Frechet distance, KID, confidence and entropy of ``images`` ((N, C, H, W) in [0, 1])."""
    if not isinstance(reference, Reference):
        if classifier is not None:  # a custom classifier: its own features of the reference
            reference = Reference.from_dataset(reference, classifier)
        else:
            key = str(reference)
            if key not in _REFERENCE_CACHE:
                _REFERENCE_CACHE[key] = Reference.from_dataset(reference)
            reference = _REFERENCE_CACHE[key]
    classifier = classifier or load_classifier()
    if len(images) < 2:
        raise ValueError(f"need at least 2 images to fit a Gaussian to, got {len(images)}")
    feats, probs = classifier_outputs(images, classifier)
    # the kernel sees features in units of the reference's RMS, so that x.y / D is O(1) as for Inception's
    scale = reference.features.square().mean().sqrt()
    kid, kid_std = kernel_distance(feats / scale, reference.features / scale)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    hist = torch.bincount(probs.argmax(-1), minlength=10).double() / len(probs)
    return QualityReport(
        fd=frechet_distance(feats, reference.features),
        kid=kid,
        kid_std=kid_std,
        confidence=probs.max(-1).values.mean().item(),
        entropy=entropy.mean().item(),
        class_histogram=[round(v, 4) for v in hist.tolist()],
        num_samples=len(images),
        reference=reference.dataset,
        num_reference=reference.num_images,
    )


def generate(
    pipe,
    num_samples: int,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    class_labels: list[int] | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """``num_samples`` images (N, C, H, W) in [0, 1] from a pipeline, in batches, reproducibly.

    ``class_labels``: a class id per image (class-conditional pipelines), with ``guidance_scale``.
    """
    if class_labels is not None and len(class_labels) != num_samples:
        raise ValueError(f"{len(class_labels)} class_labels for {num_samples} samples")
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - i)
        conditioning = {}
        if class_labels is not None:
            conditioning = {"class_labels": class_labels[i : i + n], "guidance_scale": guidance_scale}
        out.append(
            pipe(
                batch_size=n,
                generator=g,
                num_inference_steps=steps,
                sampler=sampler,
                output_type="pt",
                **conditioning,
            ).images.cpu()
        )
    return torch.cat(out)


def balanced_labels(num_classes: int, num_samples: int) -> list[int]:
    """Class ids 0, 1, ..., n-1, 0, 1, ... for ``num_samples`` images: every class equally often."""
    return [i % num_classes for i in range(num_samples)]


def digit_of_each_class(class_names: list[str]) -> list[int]:
    """The digit (0-9) that the classifier should see for each class of a model, from its class names."""
    digits = []
    for name in class_names:
        if not (str(name).isdigit() and 0 <= int(name) <= 9):
            raise ValueError(
                f"class accuracy uses the shipped MNIST classifier, so the model's classes must be the digits "
                f"0-9; this model's classes are {class_names}"
            )
        digits.append(int(name))
    return digits


def class_accuracy(
    images: torch.Tensor,
    class_labels: list[int],
    class_names: list[str],
    classifier: MnistClassifier | None = None,
) -> dict[str, Any]:
    """The share of ``images`` that the shipped classifier assigns to the class each was generated for.

    Returns ``class_accuracy`` (over all images) and ``class_accuracy_per_class`` (name -> share).
    """
    if len(images) != len(class_labels):
        raise ValueError(f"{len(images)} images for {len(class_labels)} class_labels")
    digits = torch.tensor(digit_of_each_class(class_names))[torch.as_tensor(class_labels)]
    predicted = classifier_outputs(images, classifier)[1].argmax(-1)
    correct = (predicted == digits).double()
    labels = torch.as_tensor(class_labels)
    per_class = {
        class_names[c]: round(correct[labels == c].mean().item(), 4) for c in sorted(set(class_labels))
    }
    return {"class_accuracy": correct.mean().item(), "class_accuracy_per_class": per_class}


def evaluate_pipeline(
    pipe,
    num_samples: int = 1000,
    dataset: str | Path = BUILTIN_DATASET,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> QualityReport:
    """Generate ``num_samples`` images with ``pipe`` and score them against ``dataset``."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    check_image_shape(pipe.image_shape, dataset)
    images = generate(pipe, num_samples, sampler, steps, seed, batch_size)
    report = evaluate_images(images, dataset)
    report.extra.update(sampler=sampler or type(pipe.scheduler).__name__, steps=steps, seed=seed)
    return report


def inception_features(images: torch.Tensor) -> torch.Tensor:
    """Inception-v3 pool features for FID/KID: not available in this build; raises with what to do instead."""
    raise RuntimeError(
        "FID/KID with Inception features is not available: ddpm-hub bundles no Inception-v3 network and never "
        "downloads weights. For MNIST-like data use the offline classifier metrics (`ddpm-hub eval MODEL "
        "--metric mnist`, the default). For standard FID/KID, write samples with `ddpm-hub sample MODEL "
        "--num-images N` and score them with pytorch-fid, torch-fidelity or clean-fid on a machine where their "
        "Inception weights are installed"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_hub.evaluate train-classifier OUT``: rebuild the shipped classifier weights."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_hub.evaluate", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-classifier", help="train the MNIST-5k classifier and save it as safetensors")
    p.add_argument("out", type=Path, nargs="?", default=CLASSIFIER_WEIGHTS)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, accuracy = train_classifier(epochs=args.epochs, seed=args.seed)
    save_classifier(model, args.out, accuracy, args.seed, args.epochs)
    print(f"wrote {args.out} (held-out accuracy {accuracy:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
