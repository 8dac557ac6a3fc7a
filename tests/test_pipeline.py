"""DDPMHubPipeline: same images as diffusers' DDPMPipeline, samplers, outputs, callbacks, save/load."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from helpers import tiny_unet
from PIL import Image

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet, load_pipeline, make_sampler


@pytest.fixture
def unet(tiny_unet_kwargs):
    torch.manual_seed(0)
    model = UNet(**tiny_unet_kwargs)
    torch.nn.init.normal_(model.conv_out.weight, std=0.02)  # untrained but not identically zero
    return model.eval()


@pytest.fixture
def pipe(unet):
    p = DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler())
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scheduler_cls", [DDPMHubScheduler, DDPMScheduler])
@pytest.mark.parametrize("clip", [True, False])
def test_same_seed_same_images_as_diffusers_ddpm_pipeline(scheduler_cls, clip):
    """Like with like: the default path (``ddpm``, x0 clipped) against DDPMPipeline on a clipping scheduler,
    the seed's loop (``ddpm-seed``) against a non-clipping one. All 512 steps, so the UNet is the smallest
    real one (8 px, two levels, attention at 4 px)."""
    unet = tiny_unet(in_channels=3, perturb=False)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(std=0.05)
    scheduler = scheduler_cls.from_config(DDPMHubScheduler().config, clip_sample=clip)
    ours = DDPMHubPipeline(unet=unet, scheduler=scheduler)
    theirs = DDPMPipeline(unet=unet, scheduler=scheduler)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    sampler = None if clip else "ddpm-seed"
    a = ours(
        batch_size=2, generator=gen(1), num_inference_steps=512, output_type="np", sampler=sampler
    ).images
    b = theirs(batch_size=2, generator=gen(1), num_inference_steps=512, output_type="np").images
    assert np.array_equal(a, b)
    assert a.std() > 0.05  # real images, not a constant


def test_output_types(pipe):
    pt = pipe(batch_size=2, generator=gen(), num_inference_steps=12, output_type="pt").images
    np_ = pipe(batch_size=2, generator=gen(), num_inference_steps=12, output_type="np").images
    pil = pipe(batch_size=2, generator=gen(), num_inference_steps=12, output_type="pil").images
    assert pt.shape == (2, 1, 28, 28) and pt.min() >= 0 and pt.max() <= 1
    assert np_.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), np_)
    assert (
        len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].mode == "L" and pil[0].size == (28, 28)
    )
    with pytest.raises(ValueError, match=r"output_type 'jpg' is not supported"):
        pipe(output_type="jpg")
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        pipe(batch_size=0)


def test_generator_makes_it_reproducible(pipe):
    a = pipe(batch_size=2, generator=gen(3), num_inference_steps=12, output_type="pt").images
    b = pipe(batch_size=2, generator=gen(3), num_inference_steps=12, output_type="pt").images
    c = pipe(batch_size=2, generator=gen(4), num_inference_steps=12, output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++", "sde-dpm-solver++"])
def test_callback_sees_every_step_with_sample_and_predicted_x0(pipe, sampler):
    seen = []

    def callback(p, i, t, tensors):
        assert p is pipe
        seen.append((i, t, tensors["sample"].shape, tensors["pred_original_sample"].shape))
        return None

    pipe(
        batch_size=2, generator=gen(), sampler=sampler, num_inference_steps=12, callback_on_step_end=callback
    )
    assert [s[0] for s in seen] == list(range(12))
    assert seen[0][1] > seen[-1][1]  # timesteps go from T towards 0
    assert all(s[2] == s[3] == (2, 1, 28, 28) for s in seen)


def test_callback_can_replace_the_sample(pipe):
    zeros = pipe(
        batch_size=1,
        generator=gen(),
        num_inference_steps=12,
        output_type="pt",
        callback_on_step_end=lambda p, i, t, x: {"sample": torch.zeros_like(x["sample"])},
    ).images
    assert torch.equal(zeros, torch.full_like(zeros, 0.5))


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_any_diffusers_scheduler_built_from_our_config_samples(unet, cls):
    p = DDPMHubPipeline(unet=unet, scheduler=cls.from_config(DDPMHubScheduler().config))
    p.set_progress_bar_config(disable=True)
    images = p(batch_size=2, generator=gen(), num_inference_steps=12, output_type="pt").images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()


def test_few_step_samplers_clip_the_predicted_x0():
    """With the T-scaled range, x_0 predicted at high t is the noise error amplified ~160x. A DDIM copied
    from our non-clipping config lets it run away; the registered ddim and dpm-solver++ keep it in [-1, 1]."""
    ours = DDPMHubScheduler()
    assert ours.config.clip_sample is False
    ddim, dpm = make_sampler("ddim", ours), make_sampler("dpm-solver++", ours)
    assert ddim.config.clip_sample is True and dpm.config.thresholding is True
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(make_sampler("ddpm-seed", ours).config) == public(ours.config)  # the seed's loop, unclipped
    assert public(make_sampler("ddpm", ours).config) == {**public(ours.config), "clip_sample": True}

    x = torch.randn(2, 1, 8, 8, generator=gen())
    eps_error = 0.2 * torch.randn(2, 1, 8, 8, generator=gen(1))  # an imperfect model's noise prediction
    naive = DDIMScheduler.from_config(ours.config)
    naive.set_timesteps(20)
    ddim.set_timesteps(20)
    t = ddim.timesteps[0]
    assert naive.step(eps_error, naive.timesteps[0], x).pred_original_sample.abs().max() > 10
    assert ddim.step(eps_error, t, x).pred_original_sample.abs().max() <= 1.0


def test_sde_dpm_solver_draws_fresh_noise_from_the_pipeline_generator(pipe):
    """The SDE variant adds noise at every step (the ODE one does not), drawn from the generator the pipeline
    is given: the same seed gives the same images, and the images differ from the ODE solver's."""
    ours = DDPMHubScheduler()
    sde, ode = make_sampler("sde-dpm-solver++", ours), make_sampler("dpm-solver++", ours)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and ode.config.algorithm_type == "dpmsolver++"
    assert sde.config.thresholding is True and sde.config.timestep_spacing == "trailing"
    x, eps = torch.randn(2, 1, 8, 8, generator=gen()), 0.1 * torch.randn(2, 1, 8, 8, generator=gen(1))
    steps = {}
    for name, s in (("sde", sde), ("ode", ode)):
        steps[name] = []
        for seed in (5, 6):
            s.set_timesteps(20)  # a fresh chain each time: the first step from the same x
            steps[name].append(s.step(eps, s.timesteps[0], x, generator=gen(seed)).prev_sample)
    assert not torch.equal(*steps["sde"])  # different step noise
    assert torch.equal(*steps["ode"])  # deterministic

    def run(seed):
        return pipe(
            batch_size=2,
            generator=gen(seed),
            sampler="sde-dpm-solver++",
            num_inference_steps=6,
            output_type="pt",
        ).images

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ode_images = pipe(
        batch_size=2, generator=gen(3), sampler="dpm-solver++", num_inference_steps=6, output_type="pt"
    ).images
    assert not torch.equal(a, ode_images)


def test_samplers_keep_the_training_betas():
    ours = DDPMHubScheduler(beta_start=3e-4, beta_end=0.03)
    for name in ("ddpm", "ddpm-seed", "ddim", "dpm-solver++", "sde-dpm-solver++"):
        sampler = make_sampler(name, ours)
        torch.testing.assert_close(
            torch.as_tensor(sampler.alphas_cumprod).double(), ours.alphas_cumprod, rtol=1e-5, atol=1e-7
        )
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*ddim, ddpm, ddpm-seed, dpm-solver\+\+"):
        make_sampler("euler", ours)


def test_pipeline_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == ["ddpm_hub.pipeline", "DDPMHubPipeline"]  # diffusers' custom-code form
    assert (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "p" / "scheduler" / "scheduler_config.json").is_file()
    loaded = load_pipeline(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    for sampler in (None, "ddim"):
        a = pipe(
            batch_size=2, generator=gen(), sampler=sampler, num_inference_steps=12, output_type="pt"
        ).images
        b = loaded(
            batch_size=2, generator=gen(), sampler=sampler, num_inference_steps=12, output_type="pt"
        ).images
        assert torch.equal(a, b)


def test_sampler_registry_entries_carry_default_and_minimum_steps():
    from ddpm_hub.plugins import get_samplers

    entries = get_samplers()
    for name in ("ddpm", "ddpm-seed", "ddim", "dpm-solver++", "sde-dpm-solver++"):
        entry = entries[name]
        assert entry.min_steps >= 1
        assert entry.default_steps is None or entry.default_steps >= entry.min_steps
    assert entries["ddpm"].default_steps is None  # all T steps: the seed's loop


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm-seed", "ddim", "dpm-solver++", "sde-dpm-solver++"])
@pytest.mark.parametrize("steps", [0, -5, 2.5, 513, True, "20"])
def test_bad_step_counts_are_refused_by_every_sampler(pipe, sampler, steps):
    with pytest.raises(ValueError, match="steps"):
        pipe(batch_size=1, generator=gen(), sampler=sampler, num_inference_steps=steps, output_type="pt")


def test_resolve_steps_defaults_and_caps_at_T():
    from ddpm_hub.samplers import resolve_steps

    assert resolve_steps("ddpm", None, 512) == 512
    assert resolve_steps("ddim", None, 512) == 50
    assert resolve_steps("ddim", None, 10) == 10  # a default above T is T
    assert resolve_steps("dpm-solver++", 30, 512) == 30


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [50, 200, 512])
def test_ddim_steps_land_on_the_next_listed_timestep(prediction_type, steps):
    """With an exact model every deterministic DDIM step must give x at the next listed timestep's noise level
    and the last one x_0 itself. diffusers' DDIMScheduler steps to t - T // steps instead, which with
    trailing spacing at T=512 is not the next listed timestep (512 / 200 = 2.56 apart, T // 200 = 2): it leaves
    noise behind. The registered ddim follows the list."""
    ours = DDPMHubScheduler(prediction_type=prediction_type)
    ddim = make_sampler("ddim", ours)
    ddim.set_timesteps(steps)
    ts = [int(t) for t in ddim.timesteps]
    assert len(set(ts)) == steps and ts[0] == 511
    x0 = torch.rand(2, 1, 8, 8, generator=gen()) * 1.8 - 0.9  # inside [-1, 1]: clipping changes nothing
    eps = torch.randn(2, 1, 8, 8, generator=gen(1))
    ab = ddim.alphas_cumprod
    x = ab[ts[0]].sqrt() * x0 + (1 - ab[ts[0]]).sqrt() * eps
    for i, t in enumerate(ts):
        exact = eps if prediction_type == "epsilon" else ab[t].sqrt() * eps - (1 - ab[t]).sqrt() * x0
        x = ddim.step(exact, t, x).prev_sample
        if i + 1 < len(ts):
            n = ts[i + 1]
            torch.testing.assert_close(x, ab[n].sqrt() * x0 + (1 - ab[n]).sqrt() * eps, rtol=0, atol=1e-3)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-3)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_is_diffusers_step_where_diffusers_lands_right(eta):
    """Where T // steps is the listed spacing (leading spacing; trailing with a step count that divides T) the
    registered ddim's step is diffusers' DDIMScheduler.step with use_clipped_model_output=True, eta included."""
    ours = DDPMHubScheduler(prediction_type="v_prediction")
    for spacing, steps in (("leading", 50), ("trailing", 64)):
        mine = make_sampler("ddim", ours)
        mine.register_to_config(timestep_spacing=spacing)
        theirs = DDIMScheduler.from_config(mine.config)
        mine.set_timesteps(steps)
        theirs.set_timesteps(steps)
        assert torch.equal(mine.timesteps, theirs.timesteps)
        x = torch.randn(2, 1, 8, 8, generator=gen())
        for t in mine.timesteps[:: max(1, steps // 8)]:
            out = torch.randn(2, 1, 8, 8, generator=gen(int(t)))
            a = mine.step(out, t, x, eta=eta, generator=gen(7))
            b = theirs.step(out, t, x, eta=eta, use_clipped_model_output=True, generator=gen(7))
            torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-6)
            torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=0, atol=0)
