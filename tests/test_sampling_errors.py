"""No silent wrong result when sampling (issue 11, part B): step counts, non-finite images, small T, the
clipped default chain, scheduler interop with diffusers configs, eval's reference data, push's card
metadata, and one-line errors (with exit codes) from `ddpm-hub sample`, `eval` and `push`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import helpers
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from helpers import cli

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet, load_pipeline
from ddpm_hub.cli import main as cli_main
from ddpm_hub.pipeline import NonFiniteSampleError
from ddpm_hub.schedules import default_beta_range, linear, reference_alpha_bar_T

T = 32


def tiny_unet(in_channels: int = 1, seed: int = 0, perturb: bool = True) -> UNet:
    return helpers.tiny_unet(in_channels, seed, perturb).eval()


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    DDPMHubPipeline(tiny_unet(), DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(path)
    return path


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- 4. step counts and non-finite images -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "steps", "words"),
    [
        ("dpm-solver++", 1000, "between 5 and 32 steps for this model (T=32), got 1000"),
        ("ddim", -5, "got -5"),
        ("ddpm", 0, "got 0"),
    ],
)
def test_sample_bad_steps_exit_2_before_sampling(model_dir, tmp_path, capsys, sampler, steps, words):
    out = tmp_path / "grid.png"
    code, message = cli(["sample", model_dir, "--sampler", sampler, "--steps", steps, "--out", out], capsys)
    assert code == 2 and "--steps" in message and words in message
    assert not out.exists()


def test_eval_bad_steps_and_unknown_sampler_exit_2(model_dir, capsys):
    code, message = cli(["eval", model_dir, "--steps", 1000, "--num-samples", 2], capsys)
    assert code == 2 and "--steps: the ddpm sampler takes between 12 and 32 steps" in message
    code, message = cli(["eval", model_dir, "--sampler", "eulr", "--num-samples", 2], capsys)
    assert code == 2 and "--sampler: unknown sampler 'eulr'" in message and "ddim" in message


def test_sample_unknown_sampler_exits_2_naming_the_registered_ones(model_dir, tmp_path, capsys):
    code, message = cli(["sample", model_dir, "--sampler", "eulr", "--out", tmp_path / "g.png"], capsys)
    assert code == 2 and "unknown sampler 'eulr'" in message and "dpm-solver++" in message


def nan_model_dir(tmp_path) -> Path:
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.bias.fill_(float("nan"))
    path = tmp_path / "nan-model"
    DDPMHubPipeline(unet, DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(path)
    return path


def test_a_non_finite_image_is_an_error_never_an_output(tmp_path, capsys):
    path = nan_model_dir(tmp_path)
    pipe = quiet(load_pipeline(path))
    for sampler in ("ddpm", "ddim", "dpm-solver++"):
        with pytest.raises(
            NonFiniteSampleError,
            match=rf"sampling with {re.escape(sampler)} .*NaN or infinite values in 2 of 2",
        ):
            pipe(batch_size=2, generator=gen(), sampler=sampler, output_type="pt")
    out = tmp_path / "grid.png"
    code, message = cli(["sample", path, "--num-images", 2, "--out", out], capsys)
    assert code == 1 and "NaN or infinite values" in message and "nothing was written" in message
    assert not out.exists()
    code, message = cli(["eval", path, "--num-samples", 2, "--sampler", "ddim"], capsys)
    assert code == 1 and "NaN or infinite values" in message and "no score was computed" in message


# --- 6. small T ---------------------------------------------------------------------------------------


def test_default_range_is_valid_for_every_T_and_keeps_hos_terminal_signal_below_100():
    target = reference_alpha_bar_T() ** 0.5
    assert target == pytest.approx(0.00635, abs=5e-5)  # Ho et al.'s range at T=1000
    for t in range(1, 130):
        betas = linear(t)
        assert betas.shape == (t,) and bool(((betas > 0) & (betas < 1)).all()), t
        signal = float(torch.prod(1 - betas).sqrt())
        if t < 100:
            assert signal == pytest.approx(target, rel=1e-6), t
            start, end = default_beta_range(t)
            assert start == pytest.approx(end / 200 if t > 1 else end)
        else:  # the 1000/T-scaled range, as the seed and diffusers tests pin it at T=512
            assert default_beta_range(t) == pytest.approx((1e-4 * 1000 / t, 0.02 * 1000 / t), rel=1e-12)
    assert default_beta_range(512) == (1e-4 * 1000 / 512, 0.02 * 1000 / 512)


@pytest.mark.parametrize("t", [1, 2, 10, 20])
def test_small_T_schedulers_build_and_sample(t):
    s = DDPMHubScheduler(num_train_timesteps=t)
    assert s.config.beta_end < 1
    pipe = quiet(DDPMHubPipeline(tiny_unet(), s))
    images = pipe(batch_size=1, generator=gen(), num_inference_steps=t, output_type="pt").images
    assert torch.isfinite(images).all()
    # the resolved range is in the config, so another diffusers scheduler uses the same betas
    torch.testing.assert_close(DDPMScheduler.from_config(s.config).alphas_cumprod.double(), s.alphas_cumprod)


# --- 7. the default chain clips x0; the seed's loop stays available and warns when it diverges -----------


def test_default_path_clips_x0_and_the_seeds_loop_is_ddpm_seed():
    """A fresh UNet predicts eps = 0, the extreme of a bad model: the seed's unclipped loop then multiplies
    x by 1/sqrt(alpha_t) at every step and runs away; the default (clipped) chain does not."""
    pipe = quiet(DDPMHubPipeline(tiny_unet(perturb=False), DDPMHubScheduler(num_train_timesteps=64)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divergence warning on the default path
        default = pipe(batch_size=2, generator=gen(), output_type="pt").images
        ddpm = pipe(batch_size=2, generator=gen(), sampler="ddpm", output_type="pt").images
    assert torch.equal(default, ddpm)
    assert pipe.make_sampler("ddpm").config.clip_sample is True
    assert pipe.make_sampler("ddpm-seed").config.clip_sample is False
    with pytest.warns(
        RuntimeWarning, match=r"the ddpm-seed sampling chain diverged: \|x_t\| reached .* clips x0"
    ):
        seed = pipe(batch_size=2, generator=gen(), sampler="ddpm-seed", output_type="pt").images
    saturated = lambda x: float(((x < 0.01) | (x > 0.99)).float().mean())  # noqa: E731
    assert saturated(seed) > 0.9 > 0.5 > saturated(default)


def test_training_final_grid_and_cli_use_the_clipped_default():
    from ddpm_hub.config import TrainConfig

    assert TrainConfig().final_sampler == "ddpm"
    from ddpm_hub.cli import build_parser

    assert build_parser().parse_args(["sample", "m"]).sampler == "ddpm"


# --- 8. scheduler interop with diffusers configs -----------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_a_diffusers_config_keeps_its_T_and_betas(schedule):
    theirs = DDPMScheduler(beta_schedule=schedule)
    ours = DDPMHubScheduler.from_config(theirs.config)
    assert ours.config.num_train_timesteps == 1000 and ours.config.clip_sample is True
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod)
    for cls in (DDIMScheduler, DPMSolverMultistepScheduler):
        other = cls(beta_schedule=schedule)
        assert DDPMHubScheduler.from_config(other.config).config.num_train_timesteps == 1000


def test_a_saved_diffusers_config_keeps_its_T_and_betas(tmp_path):
    DDPMScheduler(num_train_timesteps=1000).save_config(tmp_path)
    ours = DDPMHubScheduler.from_pretrained(tmp_path)
    assert (ours.config.num_train_timesteps, ours.config.beta_start, ours.config.beta_end) == (
        1000,
        1e-4,
        0.02,
    )
    # ddpm-hub's own config still round-trips with its own defaults
    again = DDPMHubScheduler.from_config(DDPMHubScheduler().config)
    assert again.config.num_train_timesteps == 512 and again.config.beta_end == 0.02 * 1000 / 512


def test_zero_terminal_snr_is_refused_clearly():
    with pytest.raises(ValueError, match=r"rescale_betas_zero_snr=True .*not supported by DDPMHubScheduler"):
        DDPMHubScheduler.from_config(DDPMScheduler(rescale_betas_zero_snr=True).config)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        DDPMHubScheduler(rescale_betas_zero_snr=True)
    assert DDPMHubScheduler().config.rescale_betas_zero_snr is False  # DDIM from our config applies none


@pytest.mark.parametrize("schedule", ["cosine", "sigmoid"])
def test_plugin_schedules_convert_to_diffusers_schedulers_and_save_and_load(schedule, tmp_path):
    ours = DDPMHubScheduler(num_train_timesteps=T, beta_schedule=schedule)
    for cls in (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler):
        other = cls.from_config(ours.config)
        torch.testing.assert_close(other.alphas_cumprod.double(), ours.alphas_cumprod, rtol=1e-5, atol=1e-7)
    DDPMHubPipeline(tiny_unet(), ours).save_pretrained(tmp_path / "p")
    loaded = load_pipeline(tmp_path / "p").scheduler
    assert loaded.config.beta_schedule == schedule
    assert torch.equal(loaded.betas, ours.betas)
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_ddpm_hub_requires"]["scheduler"]["distribution"] == "ddpm-hub-schedules"


# --- 9b. eval's reference data ---------------------------------------------------------------------


def test_eval_refuses_an_rgb_model_against_mnist(tmp_path, capsys):
    path = tmp_path / "rgb"
    DDPMHubPipeline(tiny_unet(in_channels=3), DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(path)
    code, message = cli(["eval", path, "--num-samples", 2], capsys)
    assert (
        code == 2 and "the model makes 3x8x8 images but the reference data 'mnist5k' holds 1x28x28" in message
    )
    from ddpm_hub import evaluate

    with pytest.raises(ValueError, match="3x8x8"):
        evaluate.evaluate_pipeline(load_pipeline(path), num_samples=2)
    with pytest.warns(UserWarning, match="8x8 images and the reference data 'mnist5k' holds 28x28"):
        evaluate.check_image_shape((1, 8, 8), "mnist5k")


# --- bullets: sample/eval arguments and load errors --------------------------------------------------


@pytest.mark.parametrize(
    ("out", "words"),
    [
        ("grid", "needs an image file extension"),
        ("folder", "is a folder; give a file name"),
        ("/proc/ddpm-hub-no/grid.png", "cannot be written"),
    ],
)
def test_sample_out_is_checked_before_loading(tmp_path, capsys, out, words):
    if out == "folder":
        (tmp_path / "folder").mkdir()
    target = out if out.startswith("/") else tmp_path / out
    # the model does not exist: --out is checked first, so the message is about --out
    code, message = cli(["sample", tmp_path / "no-model", "--out", target], capsys)
    assert code == 2 and f"--out {target}" in message and words in message


def test_eval_out_folder_and_missing_model(tmp_path, capsys):
    code, message = cli(["eval", tmp_path, "--out", tmp_path, "--num-samples", 2], capsys)
    assert code == 2 and "is a folder" in message
    code, message = cli(["eval", tmp_path / "nothing", "--num-samples", 2], capsys)
    assert code == 1 and message.startswith("ddpm-hub eval: error: no pipeline folder at")


def test_invalid_model_index_json_is_named(model_dir, tmp_path, capsys):
    index = model_dir / "model_index.json"
    index.write_text("{not json")
    code, message = cli(["sample", model_dir, "--out", tmp_path / "g.png"], capsys)
    assert code == 1 and f"{index} is not valid JSON" in message
    index.write_text(json.dumps({"unet": "ddpm_hub.UNet", "scheduler": ["ddpm_hub", "DDPMHubScheduler"]}))
    with pytest.raises(
        ValueError, match=r"model_index.json is invalid: 'unet' must be \[library, class name\]"
    ):
        load_pipeline(model_dir)


def test_a_truncated_safetensors_file_is_named_as_corrupt(model_dir, tmp_path, capsys):
    weights = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, message = cli(["sample", model_dir, "--out", tmp_path / "g.png"], capsys)
    assert code == 1 and f"{weights} is corrupt (truncated" in message


def test_a_mistyped_relative_path_says_there_is_no_such_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    code, message = cli(["sample", "out/doesnotexist", "--out", tmp_path / "g.png"], capsys)
    assert code == 1 and "there is no folder out/doesnotexist (its parent out exists)" in message


def test_cli_exit_codes_in_a_real_process(model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "ddpm_hub.cli", *map(str, a)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    bad = run("sample", model_dir, "--steps", 1000, "--out", tmp_path / "g.png")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        "ddpm-hub sample: error: --steps: the ddpm sampler takes between 12 and 32 steps for this model (T=32), "
        "got 1000; its default is 32"
    )
    missing = run("eval", tmp_path / "nothing", "--num-samples", 2)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


# --- 10. push: license, token first, offline, unreachable ---------------------------------------------


def make_run(root: Path) -> Path:
    from ddpm_hub.hub import write_model_card

    run = root / "run"
    DDPMHubPipeline(tiny_unet(), DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(run / "pipeline")
    write_model_card(run / "pipeline", {"dataset": "mnist5k"})  # as training does: license apache-2.0
    return run


def test_push_license_replaces_the_cards_license(hub_server, tmp_path, capsys):
    from huggingface_hub import ModelCard

    run = make_run(tmp_path)
    repo_id = f"{hub_server.user}/license-{os.getpid()}"
    cli_main(["push", str(run), "--repo-id", repo_id, "--license", "mit"])
    card = ModelCard(hub_server.files(repo_id)["README.md"].content.decode())
    assert card.data.license == "mit"
    assert (
        ModelCard.load(run / "pipeline" / "README.md").data.license == "apache-2.0"
    )  # the local card is kept
    cli_main(["push", str(run), "--repo-id", repo_id])  # no --license: the card's own
    card = ModelCard(hub_server.files(repo_id)["README.md"].content.decode())
    assert card.data.license == "apache-2.0"


def test_an_invalid_license_creates_nothing_on_the_hub(hub_server, tmp_path, capsys):
    run = make_run(tmp_path)
    repo_id = f"{hub_server.user}/badlicense-{os.getpid()}"
    code, message = cli(["push", run, "--repo-id", repo_id, "--license", "MIT-2"], capsys)
    assert code == 1 and "'MIT-2' is not a license id the Hub accepts (did you mean mit" in message
    card = run / "pipeline" / "README.md"
    card.write_text(card.read_text().replace("license: apache-2.0", "license: apache2"))
    code, message = cli(["push", run, "--repo-id", repo_id], capsys)
    assert code == 1 and "has license: 'apache2' is not a license id" in message and "--license" in message
    assert ("model", repo_id) not in hub_server.state.repos


def test_push_checks_the_token_first_then_offline_then_reachability(
    hub_server, tmp_path, capsys, monkeypatch
):
    import huggingface_hub.constants as constants

    repo_id = f"{hub_server.user}/net-{os.getpid()}"
    monkeypatch.delenv("HF_TOKEN")
    # no token: said first, even for a folder that is not a pipeline and an invalid license
    code, message = cli(["push", tmp_path / "nothing", "--repo-id", repo_id, "--license", "x"], capsys)
    assert code == 1 and "needs a Hub token with write access and you are not logged in" in message
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    run = make_run(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, message = cli(["push", run, "--repo-id", repo_id], capsys)
    assert code == 1 and "offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE" in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, message = cli(["push", run, "--repo-id", repo_id], capsys)
    assert code == 1 and "the Hub (http://127.0.0.1:9) cannot be reached" in message
    assert ("model", repo_id) not in hub_server.state.repos
