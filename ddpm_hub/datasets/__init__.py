"""The built-in data, shipped inside the package so that the default run needs no network.

``mnist5k.parquet``: 5,000 MNIST digits (28x28 grayscale, 500 per class), the default training dataset,
built by ``make_mnist5k.py``. ``mnist5k_classifier.safetensors``: the digit classifier of
``ddpm_hub.evaluate``. This module is the one place that names them.
"""

from pathlib import Path

DATASETS_DIR = Path(__file__).parent
#: the default dataset (``data.dataset`` of the training config, the reference of ``ddpm-hub eval``)
BUILTIN_DATASET = "mnist5k"
#: built-in dataset name -> its parquet file
BUILTIN_DATASETS = {BUILTIN_DATASET: DATASETS_DIR / "mnist5k.parquet"}
#: built-in dataset name -> the Hub dataset it was made from (a model card's ``datasets:`` metadata)
BUILTIN_DATASET_SOURCES = {BUILTIN_DATASET: "ylecun/mnist"}
