"""Every core sampler gives digits on the bundled default model, at its default steps and at its minimum.

The bundled model (spaces/default-model, the default config's 1000-step run: v-prediction, log-SNR-normal
training timesteps) is what a user
samples first, so each core sampler is run on it as a user would (default steps) and the images are judged by
the shipped MNIST classifier (ddpm_hub/evaluate.py). The classifier is over-confident on noise (mean confidence
0.96 on uniform noise), so a confidence floor alone passes noise; the images must also have the black ground
and sparse strokes of digits (few mid-grey pixels), which noise, grey-ground and saturated images do not.
Thresholds come from measurement on this model (32 images, 12 for the 512-step chains; seeds 0 and 1):

| images | mean confidence | share of pixels in (0.2, 0.8) |
| --- | --- | --- |
| real digits (MNIST-5k rows 4000..4031) | 0.96 | 0.058 |
| uniform noise | 0.96 | 0.60 |
| sde-dpm-solver++ 20 steps / 6 (its minimum) | 0.78-0.81 / 0.71-0.83 | 0.055-0.057 / 0.073-0.074 |
| dpm-solver++ 20 / 5 | 0.74-0.77 / 0.73-0.74 | 0.062-0.068 / 0.086-0.092 |
| ddim 50 / 8 | 0.74-0.78 / 0.71-0.74 | 0.063-0.067 / 0.077-0.083 |
| ddpm 512 / 12 | 0.83-0.88 / 0.75-0.77 | 0.050-0.055 / 0.063-0.065 |
| ddpm-seed 512 / 12 | 0.83-0.88 / 0.75-0.77 | 0.050-0.055 / 0.063-0.065 |

(The uniform-timestep v-prediction model bundled before: the same ranges within 0.05; the seed's
noise-predicting model before that: the deterministic samplers' grey shares were 0.10-0.15.)
The floor and the ceiling admit every sampler with a margin and refuse noise and grey grounds.
"""

from pathlib import Path

import pytest
import torch

from ddpm_hub import load_pipeline
from ddpm_hub.evaluate import classifier_outputs, load_classifier
from ddpm_hub.plugins import get_samplers
from ddpm_hub.samplers import resolve_steps

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "spaces" / "default-model"
CORE_SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "sde-dpm-solver++")
#: floor of the mean classifier confidence (every core sampler, default or minimum steps: >= 0.707)
MIN_CONFIDENCE = 0.6
#: ceiling of the share of pixels in (0.2, 0.8) (every core sampler: <= 0.092; uniform noise 0.60)
MAX_GREY_SHARE = 0.15
#: ... at 200 steps (measured 0.053-0.066 per sampler; the speckled grounds of the mislanded DDIM step: 0.15-0.17)
MAX_GREY_SHARE_MANY_STEPS = 0.09


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def digit_scores(images: torch.Tensor, classifier) -> tuple[float, float]:
    """(mean classifier confidence, share of mid-grey pixels) of images (B, 1, 28, 28) in [0, 1]."""
    _, probs = classifier_outputs(images, classifier)
    grey = ((images > 0.2) & (images < 0.8)).float().mean().item()
    return probs.max(-1).values.mean().item(), grey


def check_digits(images: torch.Tensor, classifier, what: str) -> None:
    assert images.shape[1:] == (1, 28, 28)
    assert torch.isfinite(images).all(), what
    assert images.min() >= 0 and images.max() <= 1, what
    confidence, grey = digit_scores(images, classifier)
    assert confidence >= MIN_CONFIDENCE, f"{what}: mean classifier confidence {confidence:.3f}"
    assert grey <= MAX_GREY_SHARE, f"{what}: {grey:.1%} of the pixels are mid-grey"


def test_the_checks_refuse_noise_and_pass_real_digits(classifier):
    """The two thresholds separate real digits from the failures they guard against."""
    from ddpm_hub.evaluate import load_images

    real = load_images("mnist5k", range(4000, 4032))
    check_digits(real, classifier, "real digits")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand((32, 1, 28, 28), generator=g)
    grey_ground = (real * 0.6 + 0.3).clamp(0, 1)  # the unclipped ODE's grey grounds, exaggerated
    for images, what in ((noise, "uniform noise"), (grey_ground, "grey ground")):
        with pytest.raises(AssertionError):
            check_digits(images, classifier, what)


@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_core_sampler_at_its_default_steps_gives_digits(pipe, classifier, sampler):
    """As a user runs it: ``pipe(sampler=...)`` with no steps (ddpm: all 512), finite images in [0, 1]."""
    n = 12 if sampler == "ddpm" else 32
    images = pipe(
        batch_size=n, generator=torch.Generator().manual_seed(0), sampler=sampler, output_type="pt"
    ).images
    check_digits(images, classifier, f"{sampler} at its default steps")


@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_core_sampler_at_its_min_steps_gives_digits_and_refuses_fewer(pipe, classifier, sampler):
    """``min_steps`` is the fewest steps that still give digits on this model; fewer (1 or 2 included) are
    refused with the sampler's range rather than turned into noise."""
    low = get_samplers()[sampler].min_steps
    assert low > 2
    images = pipe(
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
        sampler=sampler,
        num_inference_steps=low,
        output_type="pt",
    ).images
    check_digits(images, classifier, f"{sampler} at {low} steps")
    for steps in (1, 2, low - 1):
        with pytest.raises(ValueError, match=rf"takes between {low} and 512 steps"):
            resolve_steps(sampler, steps, 512)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++", "sde-dpm-solver++"])
def test_more_steps_than_the_default_still_give_clean_digits(pipe, classifier, sampler):
    """The Space offers every sampler up to T steps: 200 must be at least as clean as the default. (diffusers'
    DDIM step with trailing spacing at T=512 left noise behind that grew with the step count: speckled
    grounds, grey share 0.15-0.17 and fd 97 at 200 steps; ``ClippedDDIMScheduler`` steps to the listed timestep.)"""
    images = pipe(
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
        sampler=sampler,
        num_inference_steps=200,
        output_type="pt",
    ).images
    check_digits(images, classifier, f"{sampler} at 200 steps")
    _, grey = digit_scores(images, classifier)
    assert grey <= MAX_GREY_SHARE_MANY_STEPS, f"{sampler} at 200 steps: {grey:.1%} of the pixels are mid-grey"
