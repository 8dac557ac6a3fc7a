"""Training data through datasets: every source, channels kept, transforms, bad data with its message."""

import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_hub.config import DataConfig
from ddpm_hub.data import BUILTIN_DATASETS, DataError, ShardedBatchSampler, load_images, random_flip, to_mode


def _folder(tmp_path, mode, n=6, size=(12, 10)):
    folder = tmp_path / f"images-{mode}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = size[::-1] + ((len(mode),) if len(mode) > 1 else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return folder


def test_builtin_mnist5k_is_predecoded_to_uint8():
    data = load_images(DataConfig(dataset="mnist5k"))
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.channels == 1 and data.image_size == 28
    assert 20 < data.images.float().mean() < 50  # white digits on black


def test_imagefolder_rgb_resized_and_center_cropped(tmp_path):
    folder = _folder(tmp_path, "RGB")
    data = load_images(DataConfig(dataset=str(folder), image_size=8))
    assert data.images.shape == (6, 3, 8, 8) and data.channels == 3


def test_imagefolder_grayscale_stays_one_channel(tmp_path):
    folder = _folder(tmp_path, "L")
    data = load_images(DataConfig(dataset=str(folder), image_size=None))
    assert data.images.shape == (6, 1, 10, 10)  # default size: the short side, center-cropped
    assert (
        load_images(DataConfig(dataset=str(folder), image_size=None, center_crop=False)).images.shape[-1]
        == 12
    )


def test_parquet_files_and_a_dataset_object_with_a_named_column(tmp_path):
    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(5)]
    ds = datasets.Dataset.from_dict(
        {"picture": images, "label": list(range(5))},
        features=datasets.Features({"picture": datasets.Image(), "label": datasets.Value("int64")}),
    )
    data = load_images(DataConfig(image_size=None), dataset=ds)  # the only Image column, whatever its name
    assert data.images.shape == (5, 3, 8, 8) and int(data.images[3, 0, 0, 0]) == 120
    ds.to_parquet(str(tmp_path / "train.parquet"))
    from_file = load_images(DataConfig(dataset=str(tmp_path / "train.parquet"), image_size=None))
    assert torch.equal(from_file.images, data.images)
    from_glob = load_images(DataConfig(dataset=str(tmp_path / "*.parquet"), image_size=4, max_samples=3))
    assert from_glob.images.shape == (3, 3, 4, 4)


def test_wrong_image_column_names_the_columns():
    ds = datasets.load_dataset("parquet", data_files=str(BUILTIN_DATASETS["mnist5k"]), split="train")
    with pytest.raises(
        DataError,
        match=r"no column 'pixels'; its columns are \['image', 'label'\] \(image columns: \['image'\]\)",
    ):
        load_images(DataConfig(image_column="pixels"), dataset=ds)
    with pytest.raises(
        DataError, match="the column 'label' holds ClassLabel.*not images; image columns: \\['image'\\]"
    ):
        load_images(DataConfig(image_column="label"), dataset=ds)


def test_empty_dataset_is_an_error():
    ds = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(DataError, match="is empty .*nothing to train on"):
        load_images(DataConfig(), dataset=ds)


def test_corrupt_file_is_named_or_skipped_with_a_warning(tmp_path, caplog):
    folder = _folder(tmp_path, "RGB")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(
        DataError, match=r"cannot decode the image at row \d+ of .* \(file .*broken\.png\).*on_corrupt=skip"
    ):
        load_images(DataConfig(dataset=str(folder), image_size=8))
    with caplog.at_level(logging.WARNING, logger="ddpm_hub.data"):
        data = load_images(DataConfig(dataset=str(folder), image_size=8, on_corrupt="skip"))
    assert data.images.shape[0] == 6 and data.skipped == 1
    assert "broken.png" in caplog.text


def test_not_a_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot load the dataset 'no/such-dataset'.*offline"):
        load_images(DataConfig(dataset="no/such-dataset"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="is a file but not a parquet file"):
        load_images(DataConfig(dataset=str(tmp_path / "x.txt")))


def test_transparency_and_palette_and_16_bit_are_converted_deliberately():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red
    assert to_mode(rgba, 3).getpixel((0, 0)) == (255, 255, 255)  # composited onto white, not red
    assert to_mode(rgba, 3, background=0).getpixel((0, 0)) == (0, 0, 0)
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert to_mode(palette, 3).getpixel((0, 0)) == (10, 200, 30)
    deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert to_mode(deep, 1).getpixel((0, 0)) == 255  # rescaled, not clipped
    assert to_mode(Image.new("LA", (1, 1), (0, 0)), 1).getpixel((0, 0)) == 255


def test_random_flip_flips_about_half_and_only_left_right():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 20 < int(mirrored.sum()) < 80


def test_sharded_sampler_splits_ranks_and_resumes_at_a_position():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    ranks = [take(ShardedBatchSampler(20, 3, rank=r, num_processes=2, seed=1), 6) for r in range(2)]
    for a, b in zip(*ranks, strict=True):
        assert not set(a) & set(b) and len(a) == len(b) == 3  # disjoint halves of each global batch
    epoch0 = sum(ranks[0][:3] + ranks[1][:3], [])
    assert len(set(epoch0)) == 18  # 3 global batches of 6 in an epoch of 20, no repeats
    resumed = take(ShardedBatchSampler(20, 3, rank=1, num_processes=2, seed=1, start=4), 2)
    assert resumed == ranks[1][4:6]
    with pytest.raises(DataError, match="fewer than one global batch of 8"):
        ShardedBatchSampler(5, 4, num_processes=2)
