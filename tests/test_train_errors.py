"""Training off the happy path: resume keeps the run (its saved config, its finished pipeline), a checkpoint is
never unpickled, sampling settings fail before step 1, Ctrl-C saves, and bad input gets one clear line."""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_args
from PIL import Image

from ddpm_hub.cli import main as cli_main
from ddpm_hub.config import ConfigError, DataConfig, config_from_argv, load_config
from ddpm_hub.data import load_images
from ddpm_hub.train import CheckpointError, list_checkpoints, train


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 and a non-default seed."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert cli_main(["train", *tiny_args(run, "--seed", "3")]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["output_dir"] = str(dest)
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


# ----------------------------------------------------------------------------------- resume keeps the run


def test_resume_latest_continues_from_the_runs_saved_config(run_copy, capsys):
    # README's command: only output_dir, resume and max_steps; everything else comes from config.yaml
    argv = ["train", "--output_dir", str(run_copy), "--resume", "latest", "--max_steps", "6"]
    assert cli_main(argv) == 0
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["model"]["base_channels"] == 16 and saved["batch_size"] == 4
    assert saved["data"]["max_samples"] == 64 and saved["max_steps"] == 6
    info = json.loads((run_copy / "train_info.json").read_text())
    assert info["num_train_steps"] == 6 and info["batch_size"] == 4
    assert [s for s, _ in list_checkpoints(run_copy)] == [4, 6]


def test_resume_with_a_changed_experiment_stops_with_one_line_per_key(run_copy, capsys):
    argv = ["train", "--output_dir", str(run_copy), "--resume", "latest", "--model.base_channels", "32"]
    argv += ["--seed", "1", "--batch_size", "8", "--scheduler.num_train_timesteps", "256", "--max_steps", "6"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    for line in (
        "model.base_channels: 16 -> 32",
        "seed: 3 -> 1",
        "batch_size: 4 -> 8",
        "scheduler.num_train_timesteps: 512 -> 256",
    ):
        assert sum(line in row for row in err.splitlines()) == 1, (line, err)
    assert "max_steps" not in err.split("(old -> new)")[1].split("drop them")[0]  # a safe key
    assert "Traceback" not in err and [s for s, _ in list_checkpoints(run_copy)] == [2, 4]


def test_resume_with_a_config_file_compares_the_file_too(run_copy, capsys):
    same = yaml.safe_load((run_copy / "config.yaml").read_text())
    changed = {**same, "seed": 5, "data": {**same["data"], "image_size": 32}}
    (run_copy.parent / "changed.yaml").write_text(yaml.safe_dump(changed))
    argv = ["train", "--config", str(run_copy.parent / "changed.yaml"), "--resume", "latest"]
    assert cli_main([*argv, "--output_dir", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "seed: 3 -> 5" in err and "data.image_size: 28 -> 32" in err and "2 key(s) differ" in err
    # the run's own file, with a longer max_steps, continues it
    argv = ["train", "--config", str(run_copy / "config.yaml"), "--resume", "latest", "--max_steps", "6"]
    assert cli_main(argv) == 0
    assert json.loads((run_copy / "train_info.json").read_text())["num_train_steps"] == 6


def test_resume_through_the_python_api_checks_the_saved_config_too(run_copy):
    config = load_config(
        None, [("output_dir", str(run_copy)), ("resume", "latest"), ("model", {"base_channels": 8})]
    )
    with pytest.raises(ConfigError, match=r"model\.base_channels: 16 -> 8"):
        train(config)


def test_resume_with_mixed_precision_auto_continues_in_the_runs_own_precision(run_copy, monkeypatch):
    """config.yaml holds the precision the run resolved ("no" here); ``auto`` (configs/mnist.yaml's, the Python
    API's default) continues in it even where this machine's auto would choose bf16; bf16 asked for stops."""
    import dataclasses

    from ddpm_hub import train as train_module
    from ddpm_hub.config import saved_run_config

    assert yaml.safe_load((run_copy / "config.yaml").read_text())["mixed_precision"] == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(train_module, "auto_trains_bf16", lambda kind: True)  # auto alone would be bf16 here
    auto = {**yaml.safe_load((run_copy / "config.yaml").read_text()), "mixed_precision": "auto"}
    (run_copy.parent / "auto.yaml").write_text(yaml.safe_dump(auto))
    resume = ["--resume", "latest", "--output_dir", str(run_copy)]
    assert config_from_argv(["--config", str(run_copy.parent / "auto.yaml"), *resume]).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: 'no' -> 'bf16'"):
        config_from_argv([*resume, "--mixed_precision", "bf16"])

    saved = saved_run_config(run_copy / "config.yaml")
    train(dataclasses.replace(saved, mixed_precision="auto", resume="latest", max_steps=6))
    info = json.loads((run_copy / "train_info.json").read_text())
    assert (info["num_train_steps"], info["mixed_precision"]) == (6, "no")


def test_a_run_saved_before_timestep_sampling_existed_resumes_with_its_uniform_t(run_copy, capsys):
    """config.yaml files written before the key existed have no timestep_sampling; those runs drew a uniform
    t, and a resume must not switch them to the newer default's log-SNR-normal draw."""
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["timestep_sampling"]["kind"] == "logsnr_normal"  # today's default, written out in full
    del saved["timestep_sampling"]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(saved))
    resume = ["--output_dir", str(run_copy), "--resume", "latest", "--max_steps", "6"]
    assert config_from_argv(resume).timestep_sampling.kind == "uniform"
    assert cli_main(["train", *resume, "--timestep_sampling.kind", "logsnr_normal"]) == 2
    assert "timestep_sampling.kind: 'uniform' -> 'logsnr_normal'" in capsys.readouterr().err
    assert cli_main(["train", *resume]) == 0
    assert json.loads((run_copy / "train_info.json").read_text())["timestep_sampling"] == "uniform"


def test_resume_with_another_model_size_and_no_saved_config_is_one_line(run_copy):
    (run_copy / "config.yaml").unlink()
    args = tiny_args(run_copy, "--seed", "3", "--resume", "latest", "--model.base_channels", "24")
    with pytest.raises(CheckpointError) as info:
        train(config_from_argv(args))
    message = str(info.value)
    assert "\n" not in message and "another model" in message and "tensor(s) of another shape" in message


def test_resume_on_a_finished_run_without_checkpoints_refuses_to_retrain(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    before = (run_copy / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert cli_main(["train", "--output_dir", str(run_copy), "--resume", "latest"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "no checkpoint" in line and "--overwrite_output_dir true" in line
    assert (run_copy / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    # asked for: retrain from scratch
    argv = ["train", "--output_dir", str(run_copy), "--resume", "latest", "--overwrite_output_dir", "true"]
    assert cli_main(argv) == 0
    assert json.loads((run_copy / "train_info.json").read_text())["num_train_steps"] == 4


# ------------------------------------------------------------------------------ nothing is ever unpickled


class Payload:
    """Unpickling this creates the marker file (what a planted payload would do, minus the harm)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


CHECKPOINT_FILES = [
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "ema.safetensors",
    "ema.json",
    "train_state.json",
    "custom_checkpoint_0.pkl",  # what accelerate's register_for_checkpointing would unpickle
]


def test_the_checkpoint_holds_only_safetensors_json_and_accelerates_weights_only_files(tiny_run):
    names = {p.name for p in (tiny_run / "checkpoints" / "checkpoint-4").iterdir()}
    assert names == set(CHECKPOINT_FILES) - {"custom_checkpoint_0.pkl"}


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_a_payload_planted_in_any_checkpoint_file_never_runs(run_copy, tmp_path, capsys, name, fmt):
    marker = tmp_path / "payload-ran"
    target = run_copy / "checkpoints" / "checkpoint-4" / name
    if fmt == "pickle":
        target.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"state": Payload(marker)}, target)
    assert not marker.exists()
    code = cli_main(["train", "--output_dir", str(run_copy), "--resume", "latest", "--max_steps", "6"])
    assert not marker.exists(), f"a payload in {name} ran"
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert name in line and "checkpoint-4" in line


def test_a_truncated_file_names_the_checkpoint_and_suggests_the_previous_one(run_copy, capsys):
    target = run_copy / "checkpoints" / "checkpoint-4" / "optimizer.bin"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    assert cli_main(["train", "--output_dir", str(run_copy), "--resume", "latest", "--max_steps", "6"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    previous = run_copy / "checkpoints" / "checkpoint-2"
    assert "optimizer.bin" in line and "checkpoint-4" in line and f"--resume {previous}" in line
    # and that suggestion works
    argv = ["train", "--output_dir", str(run_copy), "--resume", str(previous), "--max_steps", "6"]
    assert cli_main(argv) == 0


def test_resume_with_another_number_of_processes_says_so(run_copy, capsys):
    checkpoint = run_copy / "checkpoints" / "checkpoint-4"
    shutil.copy(checkpoint / "random_states_0.pkl", checkpoint / "random_states_1.pkl")  # as 2 ranks write
    assert cli_main(["train", "--output_dir", str(run_copy), "--resume", "latest", "--max_steps", "6"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "written by 2 process(es), this resume runs 1" in line


# ------------------------------------------------------------------------ sampling settings and checkpoints


@pytest.mark.parametrize(
    "extra, key",
    [
        (["--sample_inference_steps", "40"], "sample_inference_steps=40"),
        (["--final_sampler", "ddpm", "--final_inference_steps", "40"], "final_inference_steps=40"),
        (["--sample_sampler", "nope"], "sample_sampler=nope"),
    ],
)
def test_sampling_settings_are_checked_against_T_before_step_1(tmp_path, capsys, extra, key):
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_args(run, "--scheduler.num_train_timesteps", "32", *extra)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert key in line and ("T=32" in line or "nope" in line)
    assert not (run / "checkpoints").exists()


def test_a_failing_grid_never_costs_the_checkpoint_of_its_step(tmp_path, monkeypatch, capsys):
    from ddpm_hub.pipeline import DDPMHubPipeline

    real_call = DDPMHubPipeline.__call__

    def grid_fails(self, *args, sampler=None, **kwargs):
        if sampler == "sde-dpm-solver++":  # the in-training grid; the final samples use ddim
            raise RuntimeError("out of memory")
        return real_call(self, *args, sampler=sampler, **kwargs)

    monkeypatch.setattr(DDPMHubPipeline, "__call__", grid_fails)
    run = train(config_from_argv(tiny_args(tmp_path / "run")))
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert "sample grid at step 2 failed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize(
    "workers",
    [False, True],  # True: Ctrl-C in a terminal signals the whole group, DataLoader workers included
)
def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_exits_130(tmp_path, workers):
    run = tmp_path / "run"
    args = tiny_args(run, "--max_steps", "1000", "--checkpointing_steps", "0", "--sample_sampler", "ddim")
    if workers:
        args += ["--data.predecode_max_mb", "0", "--data.num_workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpm_hub.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "samples" / "step-2.png").exists():  # two steps ran
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        if workers:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.count("Ctrl-C: stopping after this step") == 1
    command = f"ddpm-hub train --output_dir {run} --resume latest"
    assert command in err
    ((step, _),) = list_checkpoints(run)
    assert 2 <= step < 1000
    # the printed command continues the run
    assert cli_main([*command.split()[1:], "--max_steps", str(step + 1)]) == 0
    assert json.loads((run / "train_info.json").read_text())["num_train_steps"] == step + 1


# ------------------------------------------------------------------------------- one line for bad input


def test_output_dir_that_is_a_file_or_not_writable(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert cli_main(["train", *tiny_args(file)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "is a file, not a folder" in line
    # /sys refuses new folders even to root (a chmod'ed folder would not stop root)
    assert cli_main(["train", *tiny_args("/sys/ddpm-hub-test/run")]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "cannot write to output_dir /sys/ddpm-hub-test/run" in line


def test_config_that_is_a_folder_and_a_negative_seed(tmp_path, capsys):
    assert cli_main(["train", "--config", str(tmp_path)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "is a folder; give a YAML file" in line
    assert cli_main(["train", *tiny_args(tmp_path / "run", "--seed", "-1")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "seed must be in 0..2**32-1" in line and "-1" in line


def test_a_folder_of_non_images(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.csv").write_text("1,2")
    assert cli_main(["train", *tiny_args(tmp_path / "run", "--data.dataset", str(folder))]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"no images found in {folder} (read: .png, .jpg" in line


def _digits_with_one_corrupt(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(folder / f"{i}.png")
    (folder / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_a_corrupt_image_gives_the_same_message_streamed_by_workers_as_pre_decoded(tmp_path, capsys):
    folder = _digits_with_one_corrupt(tmp_path / "digits")
    base = ["--data.dataset", str(folder), "--data.max_samples", "null", "--data.image_size", "28"]
    assert cli_main(["train", *tiny_args(tmp_path / "a", *base)]) == 1
    (predecoded,) = error_lines(capsys.readouterr().err)
    streamed_args = [*base, "--data.predecode_max_mb", "0", "--data.num_workers", "2"]
    assert cli_main(["train", *tiny_args(tmp_path / "b", *streamed_args)]) == 1
    err = capsys.readouterr().err
    (streamed,) = error_lines(err)
    assert "cannot decode the image at" in predecoded and "7.png" in predecoded
    assert streamed == predecoded and "DataLoader worker" not in err and "Traceback" not in err


def test_channels_1_on_color_data_says_what_really_happens(tmp_path, caplog):
    folder = tmp_path / "color"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="ddpm_hub.data"):
        data = load_images(DataConfig(dataset=str(folder), channels=1, image_size=8))
    assert data.channels == 1 and data.images.shape == (4, 1, 8, 8)
    (message,) = [r.getMessage() for r in caplog.records if "channels=1" in r.getMessage()]
    assert "converted to grayscale" in message and "trained as 1 channel" in message
    assert "set 3 to keep color" in message and "the first" in message
