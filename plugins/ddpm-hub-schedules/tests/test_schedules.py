"""The cosine and sigmoid schedules against their published formulas, diffusers, and ddpm-hub's samplers."""

import math

import pytest
import torch
from ddpm_hub_schedules import cosine, cosine_alpha_bar, sigmoid
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

from ddpm_hub import DDPMHubScheduler, make_sampler, plugins
from ddpm_hub.schedules import check_betas

ANY_T = [1, 2, 7, 100, 512, 1000, 4000]


def nichol_dhariwal_betas(T, s=0.008):
    """Improved DDPM, eq. 17 and the clipping after it, in plain Python floats."""

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    alpha_bar = [f(t) / f(0) for t in range(T + 1)]
    return [min(1 - alpha_bar[t] / alpha_bar[t - 1], 0.999) for t in range(1, T + 1)]


def chen_betas(T, start=-3.0, end=3.0, tau=1.0):
    """Chen 2023, Algorithm 1 (sigmoid_schedule, clip_min=1e-9), discretised at t = i/T, in plain Python floats."""

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def gamma(t):
        v_start, v_end = sig(start / tau), sig(end / tau)
        out = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
        return min(max(out, 1e-9), 1.0)

    return [min(1 - gamma(i / T) / gamma((i - 1) / T), 0.999) for i in range(1, T + 1)]


@pytest.mark.parametrize("T", ANY_T)
def test_cosine_matches_the_published_formula_for_any_T(T):
    betas = cosine(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    torch.testing.assert_close(
        betas, torch.tensor(nichol_dhariwal_betas(T), dtype=torch.float64), rtol=1e-12, atol=1e-15
    )
    check_betas(betas, "cosine")
    assert betas[-1] == 0.999  # alpha_bar(1) = 0, so the last beta is the clip
    assert (betas <= 0.999).all()


@pytest.mark.parametrize("T", [2, 7, 512, 1000])
def test_cosine_equals_diffusers_squaredcos_cap_v2(T):
    ours = cosine(T)
    torch.testing.assert_close(
        ours.float(), betas_for_alpha_bar(T, alpha_transform_type="cosine"), rtol=2e-6, atol=1e-7
    )
    diffusers_ddpm = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.float(), diffusers_ddpm.betas, rtol=2e-6, atol=1e-7)


def test_cosine_is_the_same_curve_for_any_T():
    """alpha_bar at the same fraction t/T agrees between T=128 and T=1024 (telescoping product of 1 - beta)."""
    ab_128 = torch.cumprod(1 - cosine(128), 0)
    ab_1024 = torch.cumprod(1 - cosine(1024), 0)
    # index i-1 holds alpha_bar(i / T); stop before the clipped last step
    torch.testing.assert_close(ab_1024[8 * torch.arange(1, 128) - 1], ab_128[:-1], rtol=1e-10, atol=1e-12)
    t = torch.arange(1, 128, dtype=torch.float64) / 128
    torch.testing.assert_close(ab_128[:-1], cosine_alpha_bar(t), rtol=1e-10, atol=1e-12)


def test_cosine_s_offset_keeps_the_first_beta_small_but_not_tiny():
    # Nichol & Dhariwal chose s so that sqrt(beta_0) is slightly smaller than the pixel bin size 1/127.5
    assert math.sqrt(cosine(4000)[0]) < 1 / 127.5
    assert cosine(1000)[0] > 1e-5


@pytest.mark.parametrize("T", ANY_T)
def test_sigmoid_matches_chen_2023_algorithm_1_for_any_T(T):
    betas = sigmoid(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    torch.testing.assert_close(betas, torch.tensor(chen_betas(T), dtype=torch.float64), rtol=1e-9, atol=1e-12)
    check_betas(betas, "sigmoid")
    assert betas[-1] == 0.999


def test_sigmoid_tau_and_bad_parameters():
    steeper = sigmoid(512, tau=0.7)
    torch.testing.assert_close(
        steeper, torch.tensor(chen_betas(512, tau=0.7), dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    assert not torch.allclose(steeper, sigmoid(512))
    with pytest.raises(ValueError, match="end > start"):
        sigmoid(512, start=3, end=-3)


def test_schedules_ignore_beta_range_as_the_hook_contract_says():
    torch.testing.assert_close(cosine(64, beta_start=0.1, beta_end=0.2), cosine(64))
    torch.testing.assert_close(sigmoid(64, beta_start=0.1, beta_end=0.2), sigmoid(64))


def test_registered_through_the_entry_point():
    schedules = plugins.get_schedules()
    for name, fn in (("cosine", cosine), ("sigmoid", sigmoid)):
        assert schedules[name].obj is fn
        assert schedules[name].distribution == "ddpm-hub-schedules"
        assert schedules[name].version == "0.1.0"


@pytest.mark.parametrize("name,fn", [("cosine", cosine), ("sigmoid", sigmoid)])
def test_scheduler_and_samplers_use_the_plugin_betas(name, fn):
    scheduler = DDPMHubScheduler(num_train_timesteps=100, beta_schedule=name)
    torch.testing.assert_close(scheduler.betas, fn(100))
    for sampler in ("ddim", "dpm-solver++"):
        built = make_sampler(sampler, scheduler)
        # float32 inside diffusers' schedulers
        torch.testing.assert_close(
            built.alphas_cumprod.double(), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-6
        )


def test_sigmoid_is_not_diffusers_geodiff_sigmoid():
    """diffusers' "sigmoid" is another schedule; a DDIM sampler from our config must not fall back to it."""
    scheduler = DDPMHubScheduler(num_train_timesteps=100, beta_schedule="sigmoid")
    geodiff = DDPMScheduler(num_train_timesteps=100, beta_schedule="sigmoid")
    assert not torch.allclose(geodiff.betas.double(), scheduler.betas, atol=1e-3)
    ddim = make_sampler("ddim", scheduler)
    assert isinstance(ddim, DDIMScheduler)
    torch.testing.assert_close(ddim.betas.double(), scheduler.betas, rtol=1e-6, atol=1e-7)


def test_cosine_forward_process_matches_diffusers():
    ours = DDPMHubScheduler(num_train_timesteps=1000, beta_schedule="cosine")
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5
    )
