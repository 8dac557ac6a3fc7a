"""Training end to end, kept tiny (a 16-channel UNet at 28 px, batches of 4, a few steps): the run folder,
two real data-parallel ranks, exact resume, checkpoints that survive SIGKILL and the NaN guard (bf16:
tests/test_devices.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_args
from safetensors.torch import load_file

from ddpm_hub import load_pipeline
from ddpm_hub.cli import main as cli_main
from ddpm_hub.config import config_from_argv
from ddpm_hub.train import NonFiniteLossError, list_checkpoints, resolve_checkpoint, train


def unet_weights(run):
    return load_file(str(Path(run) / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_ddpm_hub_train_writes_a_run_folder_that_loads_and_samples(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_args(run, "--log_with", "tensorboard")]) == 0
    out = capsys.readouterr()
    assert "global batch 4" in out.out and "done: 4 steps" in out.out
    for name in ("config.yaml", "samples.png", "loss.png", "samples/step-2.png", "pipeline/model_index.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("logs/**/events.out.tfevents.*"))
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    info = json.loads((run / "train_info.json").read_text())
    assert {
        "dataset",
        "image_size",
        "channels",
        "num_train_steps",
        "batch_size",
        "learning_rate",
        "num_train_timesteps",
        "beta_schedule",
        "backbone",
        "num_parameters",
        "mixed_precision",
        "ema_decay",
        "hardware",
        "num_processes",
        "wall_time_s",
        "final_loss",
        "ddpm_hub_version",
        "plugins",
    } <= set(info)
    assert (info["dataset"], info["channels"], info["image_size"], info["num_train_steps"]) == (
        "mnist5k",
        1,
        28,
        4,
    )
    assert info["num_processes"] == 1 and info["batch_size"] == 4 and info["final_loss"] > 0

    pipe = load_pipeline(run)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        sampler="ddim",
        num_inference_steps=8,
        output_type="pt",
    ).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    assert (
        cli_main(
            [
                "sample",
                str(run),
                "--num-images",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "8",
                "--out",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )

    # the folder holds a run now: training into it again needs --resume or --overwrite_output_dir
    assert cli_main(["train", *tiny_args(run)]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_two_real_ranks_agree_and_double_the_batch(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "0",
            "-m",
            "ddpm_hub.train",
            *tiny_args(run, "--max_steps", "3", "--checkpointing_steps", "0"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run / "train_info.json").read_text())
    assert info["num_processes"] == 2
    digests = info["weights_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks end with identical weights
    assert info["per_process_batch_size"] == 4 and info["batch_size"] == 8  # measured by a gather
    ckpt = list_checkpoints(run)[-1][1]
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # dropout and random flips on: equality needs the RNG states and the data position restored
    extra = ["--model.dropout", "0.1", "--data.random_flip", "true", "--lr_warmup_steps", "2"]
    whole = train(config_from_argv(tiny_args(tmp_path / "whole", *extra)))

    part = tmp_path / "part"
    train(config_from_argv(tiny_args(part, *extra, "--max_steps", "2")))
    assert [s for s, _ in list_checkpoints(part)] == [2]
    train(config_from_argv(tiny_args(part, *extra, "--resume", "latest")))

    a, b = unet_weights(whole), unet_weights(part)  # the EMA weights
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    for ckpt in ("checkpoint-4",):  # the raw model too
        ma = load_file(str(whole / "checkpoints" / ckpt / "model.safetensors"))
        mb = load_file(str(part / "checkpoints" / ckpt / "model.safetensors"))
        for key in ma:
            torch.testing.assert_close(ma[key], mb[key], atol=1e-6, rtol=0)
    info = json.loads((part / "train_info.json").read_text())
    assert info["num_train_steps"] == 4
    # the loss history survives the resume (loss.png covers the whole run)
    assert json.loads((whole / "train_info.json").read_text())["final_loss"] == pytest.approx(
        info["final_loss"], abs=1e-6
    )


SAVE_HANGS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import accelerate
    original = accelerate.Accelerator.save_state
    calls = []
    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: write part of it, then hang until killed
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            Path(sys.argv[1], "writing").touch()
            time.sleep(600)
        return original(self, output_dir, **kwargs)
    accelerate.Accelerator.save_state = save_state
    from ddpm_hub.train import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigkill_while_writing_a_checkpoint_leaves_latest_loadable(tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_HANGS, str(tmp_path), *tiny_args(run, "--max_steps", "6")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "writing").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the run ended before its second checkpoint"
            )
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (run / "checkpoints" / ".tmp-checkpoint-4").is_dir()  # the half-written one, never named
    assert resolve_checkpoint(run, "latest") == run / "checkpoints" / "checkpoint-2"
    train(config_from_argv(tiny_args(run, "--max_steps", "6", "--resume", "latest")))
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert json.loads((run / "train_info.json").read_text())["num_train_steps"] == 6


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import ddpm_hub.train as train_module

    calls = []
    real_mse = train_module.F.mse_loss

    def mse_then_nan(a, b, **kwargs):
        calls.append(1)
        loss = real_mse(a, b, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(train_module.F, "mse_loss", mse_then_nan)
    run = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite .* between steps 2 and 3.*last good checkpoint is .*checkpoint-2",
    ):
        train(config_from_argv(tiny_args(run)))
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert not (run / "pipeline").exists()


def _timestep_run(kind, **kwargs):
    from types import SimpleNamespace

    from ddpm_hub.config import TimestepSamplingConfig, TrainConfig
    from ddpm_hub.scheduler import DDPMHubScheduler
    from ddpm_hub.train import training_timestep_probabilities

    config = TrainConfig(timestep_sampling=TimestepSamplingConfig(kind=kind, **kwargs))
    scheduler = DDPMHubScheduler(num_train_timesteps=512)
    return SimpleNamespace(
        config=config,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        scheduler=scheduler,
        timestep_probs=training_timestep_probabilities(config, scheduler),
    )


def test_uniform_timesteps_are_the_seeds_draw_bit_for_bit():
    from ddpm_hub.train import sample_timesteps

    torch.manual_seed(3)
    drawn = sample_timesteps(_timestep_run("uniform"), 64)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.randint(0, 512, (64,)).long())


def test_logsnr_normal_timesteps_train_where_the_image_is_not_gone():
    from ddpm_hub.train import sample_timesteps

    run = _timestep_run("logsnr_normal", mean=0.0, std=2.0, uniform_share=0.1)
    torch.manual_seed(0)
    t = torch.cat([sample_timesteps(run, 64) for _ in range(200)])
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 512
    logsnr = torch.log(run.scheduler.snr(t).double())
    torch.manual_seed(0)
    uniform = torch.log(run.scheduler.snr(torch.randint(0, 512, (12800,))).double())
    # the uniform draw spends over a third of the steps below log SNR -4; this one about 7%
    assert float((uniform < -4).double().mean()) > 0.33 and float((logsnr < -4).double().mean()) < 0.1
    assert abs(float(logsnr.mean())) < 0.5  # 90% N(0, 2) + 10% uniform (mean -0.8)


def test_a_logsnr_normal_run_records_its_timestep_sampling(tmp_path):
    run = tmp_path / "run"
    args = tiny_args(run, "--timestep_sampling", "{kind: logsnr_normal, mean: -0.5, std: 2.0}")
    assert cli_main(["train", *args]) == 0
    info = json.loads((run / "train_info.json").read_text())
    assert info["timestep_sampling"] == "log SNR ~ N(-0.5, 2), 10% uniform"
    card = (run / "pipeline" / "README.md").read_text()
    assert "| training timesteps | log SNR ~ N(-0.5, 2), 10% uniform |" in card


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("std", "0", "timestep_sampling.std must be positive"),
        ("uniform_share", "1.5", r"timestep_sampling.uniform_share must be in \[0, 1\]"),
        ("kind", "lognormal", "lognormal"),
    ],
)
def test_bad_timestep_sampling_is_refused_before_the_run(tmp_path, capsys, key, value, message):
    import re

    assert cli_main(["train", *tiny_args(tmp_path / "run", f"--timestep_sampling.{key}", value)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_log_snr_mean_off_the_schedule_is_a_config_error(tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_args(run, "--timestep_sampling", "{kind: logsnr_normal, mean: 1000, std: 1}")
    assert cli_main(["train", *args]) == 1  # found at the run's start, like sampling settings against T
    err = capsys.readouterr().err
    assert "the log SNR mean 1000 is outside this schedule's log SNR, -10.2 (t=T-1) to 8.5 (t=0)" in err
    assert not (run / "checkpoints").exists()
