"""DDPMHubScheduler pinned against a float64 transcription of the seed and against diffusers' DDPMScheduler."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm_hub import DDPMHubScheduler, linear

T = 512


def seed_tables(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The seed's 'Derived Variables' and 'Precomputations', line by line, in float64."""
    beta = betas.double()
    alpha = 1.0 - beta
    alpha_bar = torch.cumprod(alpha, dim=0)
    sqrt_alpha_bar = torch.sqrt(alpha_bar)
    sqrt_one_minus_alpha_bar = torch.sqrt(1.0 - alpha_bar)
    alpha_bar_t_minus_1 = F.pad(alpha_bar[:-1], (1, 0), value=1.0)
    posterior_variance = beta * (1.0 - alpha_bar_t_minus_1) / (1.0 - alpha_bar)
    sqrt_one_over_alpha = torch.sqrt(1.0 / alpha)
    return dict(
        beta=beta,
        alpha=alpha,
        alpha_bar=alpha_bar,
        sqrt_alpha_bar=sqrt_alpha_bar,
        sqrt_one_minus_alpha_bar=sqrt_one_minus_alpha_bar,
        posterior_variance=posterior_variance,
        sqrt_one_over_alpha=sqrt_one_over_alpha,
    )


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for the UNet: depends on both the sample and the timestep."""
    t = torch.as_tensor(t, dtype=x.dtype)
    return torch.tanh(x) * (0.5 + 0.5 * t / T)


def diffusers_reference(s: DDPMHubScheduler) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=T,
        beta_start=s.config.beta_start,
        beta_end=s.config.beta_end,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=False,
    )


def test_default_schedule_is_t_scaled_linear_and_reaches_noise():
    s = DDPMHubScheduler()
    assert s.config.num_train_timesteps == 512
    assert s.betas.dtype == torch.float64
    assert s.config.beta_start == pytest.approx(1e-4 * 1000 / 512)
    assert s.config.beta_end == pytest.approx(0.02 * 1000 / 512)
    # DESIGN: sqrt(alpha_bar_T) stays below 0.01, as it does at T=1000 with Ho et al.'s range
    assert s.alphas_cumprod[-1].sqrt() < 0.01
    # ...and the unscaled range at T=512 would leave 7.5% of the image
    unscaled = DDPMHubScheduler(beta_start=1e-4, beta_end=0.02)
    assert unscaled.alphas_cumprod[-1].sqrt() == pytest.approx(0.075, abs=0.002)


def test_unscaled_range_gives_the_seeds_literal_betas():
    s = DDPMHubScheduler(beta_start=1e-4, beta_end=0.02)
    expected = torch.linspace(1e-4, 0.02, 512, dtype=torch.float64)
    torch.testing.assert_close(s.betas, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(linear(512, beta_start=1e-4, beta_end=0.02), expected, rtol=0, atol=1e-15)


def test_tables_match_the_seed_in_float64():
    s = DDPMHubScheduler()
    ref = seed_tables(torch.linspace(s.config.beta_start, s.config.beta_end, T, dtype=torch.float64))
    for ours, name in [
        (s.beta, "beta"),
        (s.alpha, "alpha"),
        (s.alpha_bar, "alpha_bar"),
        (s.sqrt_alphas_cumprod, "sqrt_alpha_bar"),
        (s.sqrt_one_minus_alphas_cumprod, "sqrt_one_minus_alpha_bar"),
        (s.posterior_variance, "posterior_variance"),
        (s.sqrt_one_over_alpha, "sqrt_one_over_alpha"),
    ]:
        torch.testing.assert_close(ours, ref[name], rtol=0, atol=1e-10, msg=name)


def test_add_noise_matches_the_seed_in_float64():
    s = DDPMHubScheduler()
    ref = seed_tables(s.betas)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 100, 300, 511])
    bs = x0.shape[0]
    expected = (
        ref["sqrt_alpha_bar"][t].view(bs, 1, 1, 1) * x0
        + ref["sqrt_one_minus_alpha_bar"][t].view(bs, 1, 1, 1) * noise
    )
    torch.testing.assert_close(s.add_noise(x0, noise, t), expected, rtol=0, atol=1e-10)


def test_whole_reverse_chain_matches_the_seed_in_float64():
    """The seed's reverse loop, transcribed, against scheduler.step with the same noise draws."""
    s = DDPMHubScheduler()
    ref = seed_tables(s.betas)
    shape, bs = (2, 1, 6, 6), 2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for ts in range(0, T)[::-1]:
        t = torch.full((bs,), ts).long()
        eps = fake_model(x, ts)
        noise = torch.randn(shape, generator=g, dtype=torch.float64) if ts > 0 else 0
        x = (
            ref["sqrt_one_over_alpha"][t].view(bs, 1, 1, 1)
            * (
                x
                - ref["beta"][t].view(bs, 1, 1, 1)
                / ref["sqrt_one_minus_alpha_bar"][t].view(bs, 1, 1, 1)
                * eps
            )
            + torch.sqrt(ref["posterior_variance"][t].view(bs, 1, 1, 1)) * noise
        )
    seed_image = torch.clamp(x, -1, 1)

    g = torch.Generator().manual_seed(1)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    s.set_timesteps()
    for t in s.timesteps:
        y = s.step(fake_model(y, t), t, y, generator=g).prev_sample
    torch.testing.assert_close(torch.clamp(y, -1, 1), seed_image, rtol=0, atol=1e-10)


def test_tables_and_add_noise_match_diffusers():
    s, d = DDPMHubScheduler(), None
    d = diffusers_reference(s)
    torch.testing.assert_close(s.alphas.float(), d.alphas, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.alphas_cumprod.float(), d.alphas_cumprod, rtol=0, atol=1e-6)
    variances = torch.stack([d._get_variance(t) for t in range(1, T)])
    torch.testing.assert_close(s.posterior_variance[1:].float(), variances, rtol=1e-5, atol=1e-7)

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(8, 3, 16, 16, generator=g)
    t = torch.randint(0, T, (8,), generator=g)
    torch.testing.assert_close(s.add_noise(x0, noise, t), d.add_noise(x0, noise, t), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.get_velocity(x0, noise, t), d.get_velocity(x0, noise, t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [0, 1, 2, 5, 10, 250, 511])
def test_one_step_matches_diffusers_and_the_seed(t):
    """One float32 step against diffusers and against the seed's formula evaluated in float64 on the same
    inputs and the same noise draw. diffusers recomputes beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} in float32;
    for the smallest t (beta_t ~ 2e-4) that cancellation costs it up to ~6e-5, so there the check against
    diffusers is 1e-4 while ours stays within 1e-6 of the float64 seed."""
    s = DDPMHubScheduler()
    d = diffusers_reference(s)
    ref = seed_tables(s.betas)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    eps = fake_model(x, t)
    ours = s.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    theirs = d.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).double() if t > 0 else 0
    seed = (
        ref["sqrt_one_over_alpha"][t]
        * (x.double() - ref["beta"][t] / ref["sqrt_one_minus_alpha_bar"][t] * eps.double())
        + ref["posterior_variance"][t].sqrt() * noise
    )
    torch.testing.assert_close(ours.prev_sample.double(), seed, rtol=0, atol=1e-6)
    diffusers_tolerance = 1e-4 if 0 < t < 10 else 1e-6
    torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, rtol=0, atol=diffusers_tolerance)
    # x_0 at high t is the noise amplified ~160 times (|x_0| ~ 200), so it is compared relatively
    torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, rtol=1e-6, atol=1e-6)


def test_whole_chain_matches_diffusers_in_float32():
    """512 steps with the same noise draws, in float32, with a model that denoises towards a fixed image
    (an almost-perfect model for a one-image dataset, so x stays at the data's scale as with a trained
    model). diffusers recomputes beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} from a float32 alpha_bar (up to
    6e-5 off per step at the smallest t, see the one-step test); measured residual over the chain: ~1.5e-6."""
    s = DDPMHubScheduler()
    d = diffusers_reference(s)
    d.set_timesteps(T)
    s.set_timesteps()
    assert torch.equal(s.timesteps, d.timesteps)
    target = torch.linspace(-0.9, 0.9, 64).reshape(1, 1, 8, 8)

    def model(x, t):
        alpha_bar = s.alphas_cumprod[int(t)]
        oracle = (x.double() - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()
        return oracle.float() + 0.05 * torch.sin(3 * x)

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, generator=g1)
    y = torch.randn(2, 1, 8, 8, generator=g2)
    for t in s.timesteps:
        x = s.step(model(x, t), t, x, generator=g1).prev_sample
        y = d.step(model(y, t), t, y, generator=g2).prev_sample
    residual = (x - y).abs().max().item()
    assert residual < 1e-4, f"chains diverged by {residual}"
    assert (x - target).abs().max() < 0.01  # the chain really went from noise to the image


def test_fewer_inference_steps_jump_with_effective_beta():
    s = DDPMHubScheduler()
    d = diffusers_reference(s)
    s.set_timesteps(64)
    d.set_timesteps(64)
    assert torch.equal(s.timesteps, d.timesteps)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in s.timesteps[:3]:
        a = s.step(fake_model(x, t), t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = d.step(fake_model(x, t), t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        x = a


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_match_diffusers(prediction_type):
    s = DDPMHubScheduler(prediction_type=prediction_type)
    d = DDPMScheduler.from_config(s.config)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = fake_model(x, 300)
    a = s.step(out, 300, x, generator=torch.Generator().manual_seed(1))
    b = d.step(out, 300, x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-5)


def test_no_noise_is_drawn_at_t0():
    s = DDPMHubScheduler()
    x = torch.randn(1, 1, 4, 4)
    a = s.step(fake_model(x, 0), 0, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = s.step(fake_model(x, 0), 0, x, generator=torch.Generator().manual_seed(99)).prev_sample
    assert torch.equal(a, b)


def test_other_diffusers_schedulers_build_from_our_config():
    s = DDPMHubScheduler()
    for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        other = cls.from_config(s.config)
        assert other.config.num_train_timesteps == 512
        torch.testing.assert_close(other.alphas_cumprod, s.alphas_cumprod.float(), rtol=0, atol=1e-6)


def test_scheduler_save_load_round_trip(tmp_path):
    s = DDPMHubScheduler(beta_start=1e-4, beta_end=0.02, clip_sample=True, prediction_type="v_prediction")
    s.save_pretrained(tmp_path)
    loaded = DDPMHubScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(s.config)
    torch.testing.assert_close(loaded.betas, s.betas, rtol=0, atol=0)
    x = torch.randn(1, 3, 4, 4)
    a = s.step(x, 100, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = loaded.step(x, 100, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_schedule="cosinus"), r"unknown schedule 'cosinus'.*registered schedules: .*linear"),
        (dict(num_train_timesteps=0), r"num_train_timesteps must be an integer >= 1, got 0"),
        (dict(beta_start=1e-4, beta_end=1.5), r"betas outside \(0, 1\)"),
        (dict(beta_start=-0.1, beta_end=0.02), r"betas outside \(0, 1\)"),
        (dict(trained_betas=[0.1, 0.2], num_train_timesteps=3), r"trained_betas has 2 values"),
        (dict(prediction_type="noise"), r"prediction_type 'noise' is not supported"),
        (dict(variance_type="fixed_large"), r"variance_type 'fixed_large' is not supported"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMHubScheduler(**kwargs)


def test_out_of_range_timesteps_are_a_clear_error():
    s = DDPMHubScheduler()
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 511\].*\[3, 512\]"):
        s.add_noise(x, x, torch.tensor([3, 512]))
    with pytest.raises(ValueError, match=r"timestep -1 is out of range: must be in \[0, 511\]"):
        s.step(x, -1, x)
    with pytest.raises(
        ValueError, match=r"num_inference_steps must be an integer between 1 and .*512, got 600"
    ):
        s.set_timesteps(600)


# -- the scheduler owns the training maths: noising, targets, min-SNR weights, x_0 from a model output -----


def training_batch(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(16, 3, 8, 8, generator=g) * 2 - 1).to(dtype)
    noise = torch.randn(16, 3, 8, 8, generator=g).to(dtype)
    t = torch.cat([torch.tensor([0, T - 1]), torch.randint(0, T, (14,), generator=g)])
    return x0, noise, t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_the_seeds_in_float32_bit_for_bit(prediction_type):
    """The training loop's former inline lines, on float32 tables: add_noise and get_target equal them exactly."""
    s = DDPMHubScheduler(prediction_type=prediction_type)
    x0, noise, t = training_batch()
    seed = seed_tables(linear(T))
    sqrt_alpha_bar = seed["sqrt_alpha_bar"].float()[t].view(-1, 1, 1, 1)
    sqrt_one_minus_alpha_bar = seed["sqrt_one_minus_alpha_bar"].float()[t].view(-1, 1, 1, 1)
    x_noisy = sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * noise  # seed: "Add noise to images"
    expected = {
        "epsilon": noise,  # seed: F.mse_loss(noise, model(x_noisy, t))
        "v_prediction": sqrt_alpha_bar * noise - sqrt_one_minus_alpha_bar * x0,
        "sample": x0,
    }[prediction_type]
    assert torch.equal(s.add_noise(x0, noise, t), x_noisy)
    assert torch.equal(s.get_target(x0, noise, t), expected)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_target_matches_diffusers(prediction_type):
    s = DDPMHubScheduler(prediction_type=prediction_type)
    d = diffusers_reference(s)
    x0, noise, t = training_batch(1)
    expected = {"epsilon": noise, "v_prediction": d.get_velocity(x0, noise, t), "sample": x0}[prediction_type]
    torch.testing.assert_close(s.get_target(x0, noise, t), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_match_diffusers_compute_snr(prediction_type):
    """diffusers' training scripts: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v; lucidrains' for x_0."""
    from diffusers.training_utils import compute_snr

    s = DDPMHubScheduler(prediction_type=prediction_type)
    d = diffusers_reference(s)
    _, _, t = training_batch(2)
    gamma = 5.0
    snr = compute_snr(d, t)
    torch.testing.assert_close(s.snr(t), snr, rtol=1e-5, atol=0)
    clipped = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[
        prediction_type
    ]
    weights = s.loss_weights(t, gamma)
    assert weights.shape == (16,) and weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-7)


def test_min_snr_weights_are_the_former_loop_formula_bit_for_bit():
    s = DDPMHubScheduler(prediction_type="v_prediction")
    _, _, t = training_batch(3)
    alpha_bar = s.alphas_cumprod.to(torch.float32)[t]
    snr = alpha_bar / (1 - alpha_bar)
    assert torch.equal(s.loss_weights(t, 5.0), snr.clamp(max=5.0) / (snr + 1))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_and_noise_from_a_model_output_match_diffusers_and_invert_the_target(prediction_type):
    s = DDPMHubScheduler(prediction_type=prediction_type)
    d = DDPMScheduler.from_config(s.config)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = fake_model(x, 300)
    expected = d.step(out, 300, x, generator=torch.Generator().manual_seed(1)).pred_original_sample
    torch.testing.assert_close(s.predict_original_sample(out, 300, x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(s.step(out, 300, x).pred_original_sample, expected, rtol=0, atol=1e-5)

    # a perfect model outputs the target: x_0 and the noise come back (float64, so exactly enough)
    x0, noise, t = training_batch(4, torch.float64)
    x_t = s.add_noise(x0, noise, t)
    perfect = s.get_target(x0, noise, t)
    torch.testing.assert_close(s.predict_original_sample(perfect, t, x_t), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.predict_noise(perfect, t, x_t), noise, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_for_samplers_whose_step_does_not_return_it(prediction_type):
    """The pipeline's callback gets x_0 from DPM-Solver++ through scheduler.original_sample."""
    from ddpm_hub.scheduler import original_sample

    s = DDPMHubScheduler(prediction_type=prediction_type)
    dpm = DPMSolverMultistepScheduler.from_config(s.config)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = fake_model(x, 300)
    torch.testing.assert_close(
        original_sample(dpm, out, 300, x), s.predict_original_sample(out, 300, x), rtol=1e-6, atol=1e-6
    )


def test_a_new_prediction_type_is_one_entry_in_the_scheduler(monkeypatch):
    """Register a prediction type in PREDICTION_TYPES only: training target, weights and sampling follow."""
    from ddpm_hub import scheduler as module

    # "negative epsilon": the model predicts -noise (a toy parameterization with a known answer)
    negative = module.PredictionType(
        description="negated noise",
        target=lambda x0, noise, a, s: -noise,
        original_sample=lambda out, x, a, s: (x + s * out) / a,
        noise=lambda out, x, a, s: -out,
        target_snr=lambda snr: snr,
    )
    monkeypatch.setitem(module.PREDICTION_TYPES, "negative_epsilon", negative)
    new = DDPMHubScheduler(prediction_type="negative_epsilon")
    seed = DDPMHubScheduler()
    x0, noise, t = training_batch(5)
    assert torch.equal(new.get_target(x0, noise, t), -seed.get_target(x0, noise, t))
    assert torch.equal(new.loss_weights(t, 5.0), seed.loss_weights(t, 5.0))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = fake_model(x, 300)
    a = new.step(-out, 300, x, generator=torch.Generator().manual_seed(1))
    b = seed.step(out, 300, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert torch.equal(a.pred_original_sample, b.pred_original_sample)


def test_the_training_tables_are_cast_once_per_device_and_dtype():
    s = DDPMHubScheduler()
    x0, noise, t = training_batch(6)
    first = s._tables(x0.device, torch.float32)
    s.add_noise(x0, noise, t)
    s.get_target(x0, noise, t)
    s.loss_weights(t, 5.0)
    assert all(a is b for a, b in zip(s._tables(x0.device, torch.float32), first, strict=True))
    assert list(s._table_cache) == [(torch.device("cpu"), torch.float32)]
    half = s._tables("cpu", torch.float64)
    assert half[0].dtype == torch.float64 and len(s._table_cache) == 2


def test_timesteps_on_an_accelerator_are_checked_without_a_host_sync(monkeypatch):
    """On a device other than the CPU the range check is torch._assert_async (no sync per training step);
    where a backend lacks it, the host check runs instead."""
    s = DDPMHubScheduler()
    calls = []

    class FakeDevice:
        type = "cuda"

    class Steps(torch.Tensor):
        @property
        def device(self):
            return FakeDevice()

    def assert_async(condition):
        calls.append(bool(condition))

    monkeypatch.setattr(torch, "_assert_async", assert_async)
    s._check_timesteps(torch.tensor([0, 511]).as_subclass(Steps))
    s._check_timesteps(torch.tensor([3, 512]).as_subclass(Steps))  # reported by the device, not here
    assert calls == [True, False]

    def missing(condition):
        raise NotImplementedError("no _assert_async on this backend")

    monkeypatch.setattr(torch, "_assert_async", missing)
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 511\]"):
        s._check_timesteps(torch.tensor([3, 512]).as_subclass(Steps))


@pytest.mark.parametrize("T", [64, 512, 1000])
def test_logsnr_normal_timesteps_have_the_asked_log_snr_distribution(T):
    s = DDPMHubScheduler(num_train_timesteps=T)
    probs = s.timestep_probabilities(0.5, 1.5)
    assert probs.shape == (T,) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    alpha_bar = s.alphas_cumprod.to(torch.float64)
    logsnr = torch.log(alpha_bar / (1 - alpha_bar))
    mean = float((probs.double() * logsnr).sum())
    std = float((probs.double() * (logsnr - mean) ** 2).sum().sqrt())
    # discretised onto T levels: the moments move by about the spacing of log SNR near the mean
    assert abs(mean - 0.5) < 0.15 and abs(std - 1.5) < 0.15, (mean, std)
    # the mode sits where log SNR is near the mean, far from the pure-noise end
    assert abs(float(logsnr[int(probs.argmax())]) - 0.5) < 1.5


def test_uniform_share_keeps_every_timestep_trained():
    s = DDPMHubScheduler(num_train_timesteps=512)
    pure = s.timestep_probabilities(0.0, 2.0)
    mixed = s.timestep_probabilities(0.0, 2.0, uniform_share=0.1)
    assert float(pure[-1]) < 1e-4 / 512  # log SNR -10: the normal alone all but never trains it
    assert float(mixed.min()) >= 0.1 / 512 * (1 - 1e-6)
    torch.testing.assert_close(mixed, 0.9 * pure + 0.1 / 512)
    torch.testing.assert_close(
        s.timestep_probabilities(0.0, 2.0, uniform_share=1.0), torch.full((512,), 1 / 512)
    )


def test_a_log_snr_distribution_outside_the_schedule_is_refused():
    s = DDPMHubScheduler(num_train_timesteps=512)
    for mean in (1e6, 9.0, -10.5):
        with pytest.raises(ValueError, match="outside this schedule's log SNR"):
            s.timestep_probabilities(mean, 2.0)
