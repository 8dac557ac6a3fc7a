"""The offline sample-quality evaluator (ddpm_hub.evaluate) and `ddpm-hub eval`."""

import json
import subprocess
import sys

import pytest
import torch

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet
from ddpm_hub import evaluate as ev


@pytest.fixture(scope="module")
def real_digits():
    """500 real digits the reference split does not contain (rows 0..499, the classifier's training rows)."""
    return ev.load_images("mnist5k", range(0, 500))


@pytest.fixture(scope="module")
def reference():
    return ev.Reference.from_dataset("mnist5k")


def test_shipped_classifier_recognises_held_out_digits(reference):
    images, labels = ev.load_images("mnist5k", ev.REFERENCE_ROWS), ev.load_labels(ev.REFERENCE_ROWS)
    with torch.inference_mode():
        accuracy = (ev.load_classifier()(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.93
    assert reference.num_images == len(ev.REFERENCE_ROWS) == 1000
    assert reference.features.shape == (1000, ev.MnistClassifier.feature_dim)


def test_a_custom_classifier_is_compared_with_its_own_reference_features(monkeypatch):
    """Reference features are the classifier's: cached for the shipped one, never mixed with a custom one's."""
    monkeypatch.setattr(ev, "_REFERENCE_CACHE", {})
    held_out = ev.load_images("mnist5k")  # the reference split itself: fd ~ 0 in any classifier's features
    torch.manual_seed(0)
    custom = ev.MnistClassifier().eval()
    shipped = ev.evaluate_images(held_out).fd  # fills the cache with the shipped classifier's features
    assert ev.evaluate_images(held_out, classifier=custom).fd < 1e-3
    assert ev.evaluate_images(held_out).fd == pytest.approx(shipped, abs=1e-9) and shipped < 1e-3

    # a reference given as a file: the custom classifier's features do not replace the shipped one's
    path = str(ev.MNIST5K)
    digits = ev.load_images("mnist5k", range(0, 200))
    expected = ev.evaluate_images(digits, ev.Reference.from_dataset(path)).fd
    ev.evaluate_images(digits, path, classifier=custom)
    assert ev.evaluate_images(digits, path).fd == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2 + torch.tensor(
        [1.0, 0, 0, 0], dtype=torch.float64
    )
    # N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2 * 2I) = 1 + 4
    assert ev.frechet_distance(a, b) == pytest.approx(5.0, rel=0.05)
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        ev.frechet_distance(a, b[:, :3])


def test_real_digits_score_near_zero_and_noise_scores_far(real_digits, reference):
    real = ev.evaluate_images(real_digits, reference)
    noise = ev.evaluate_images(
        torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)), reference
    )
    assert real.fd < 15 < 300 < noise.fd
    assert abs(real.kid) < 0.05 < noise.kid
    assert real.entropy < noise.entropy or real.fd < noise.fd / 20
    assert sum(real.class_histogram) == pytest.approx(1.0)
    assert min(real.class_histogram) > 0.05  # every digit class is present in real data


def test_distance_grows_with_added_noise(real_digits, reference):
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(real_digits.shape, generator=g)
    fds = [
        ev.evaluate_images((real_digits + s * eps).clamp(0, 1), reference).fd for s in (0.0, 0.1, 0.2, 0.4)
    ]
    assert fds == sorted(fds), fds
    assert fds[-1] > 5 * fds[0]


def test_rgb_and_larger_images_are_converted(real_digits, reference):
    """3 equal channels at 2x size (nearest) are the same digits: the channel mean and the antialiased
    resize give back the 28x28 grayscale images."""
    gray = real_digits[:200]
    rgb = torch.nn.functional.interpolate(gray, scale_factor=2, mode="nearest").repeat(1, 3, 1, 1)
    assert ev.evaluate_images(rgb, reference).fd == pytest.approx(
        ev.evaluate_images(gray, reference).fd, rel=1e-3
    )


def test_inception_metrics_fail_with_instructions():
    with pytest.raises(RuntimeError, match="--metric mnist"):
        ev.inception_features(torch.zeros(2, 3, 299, 299))


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet(
        sample_size=28,
        in_channels=1,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        norm_num_groups=8,
    )
    path = tmp_path_factory.mktemp("pipe") / "pipeline"
    DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler()).save_pretrained(path)
    return path


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ddpm_hub.cli", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_eval_reports_json(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "report.json"
    r = _cli(tiny_pipeline_dir, "--num-samples", 8, "--sampler", "ddim", "--steps", 8, "--out", out)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert json.loads(r.stdout) == report
    assert report["num_samples"] == 8 and report["sampler"] == "ddim" and report["steps"] == 8
    assert report["reference"] == "mnist5k" and report["num_reference"] == 1000
    assert report["fd"] > 100  # an untrained model makes no digits


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-samples", "1"], "--num-samples must be at least 2"),
        (["--steps", "0"], "--steps: the ddpm sampler takes between 12 and 512 steps for this model"),
        (["--metric", "inception"], "no Inception-v3 network"),
        (["--dataset", "no/such/data.parquet"], "dataset 'no/such/data.parquet' not found"),
    ],
)
def test_cli_eval_rejects_bad_input(tiny_pipeline_dir, args, message):
    r = _cli(tiny_pipeline_dir, *args)
    assert r.returncode != 0
    assert message in r.stderr


def test_cli_eval_missing_model(tmp_path):
    r = _cli(tmp_path / "nothing", "--num-samples", 2)
    assert r.returncode != 0
    assert "no pipeline folder" in r.stderr


def test_bench_quality_pools_the_seeds_that_separate_runs_saved(tmp_path):
    """benchmarks/bench_quality.py --features-dir: one Gaussian fitted to every saved seed's features of a
    sampler (seeds run by separate commands included), keyed by the sampler's name even when it holds '-'/'+'."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_quality

    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 8, generator=g, dtype=torch.float64)
    b = torch.randn(60, 8, generator=g, dtype=torch.float64) * 2 + 1
    reference = ev.Reference(torch.randn(80, 8, generator=g, dtype=torch.float64), "test", 80)
    torch.save(a, tmp_path / "ddim-50-seed0.pt")
    torch.save(b, tmp_path / "ddim-50-seed3.pt")
    torch.save(b, tmp_path / "sde-dpm-solver++-20-seed3.pt")
    pooled = bench_quality.pooled_fd(tmp_path, reference)
    assert set(pooled) == {"ddim-50", "sde-dpm-solver++-20"}
    assert pooled["ddim-50"]["seeds"] == [0, 3] and pooled["ddim-50"]["num_images"] == 110
    both = ev.frechet_distance(torch.cat([a, b]), reference.features)
    assert pooled["ddim-50"]["fd_pooled"] == pytest.approx(both)
    mean_of_seeds = (
        ev.frechet_distance(a, reference.features) + ev.frechet_distance(b, reference.features)
    ) / 2
    assert abs(both - mean_of_seeds) > 0.1  # pooling is not averaging the per-seed fds
    assert pooled["sde-dpm-solver++-20"]["seeds"] == [3]
    ratios = bench_quality.pooled_fd(tmp_path, reference, relative_to="ddim-50", bootstrap=20)
    assert ratios["ddim-50"]["ratio"] == pytest.approx(1.0)
    # the ratio over the seeds both have (seed 3 only: b against b)
    assert ratios["sde-dpm-solver++-20"]["ratio"] == pytest.approx(1.0)
    low, high = ratios["sde-dpm-solver++-20"]["ratio_5_95"]
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert pooled["sde-dpm-solver++-20"]["fd_pooled"] == pytest.approx(
        ev.frechet_distance(b, reference.features)
    )
