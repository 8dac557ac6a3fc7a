"""Bad inputs a new user tries, one per subcommand, found by a fresh-eyes probe of the CLI: each gives one
line naming the problem and the fix, a non-zero exit, and no traceback."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import cli

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet
from ddpm_hub.cli import main as cli_main


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    unet = UNet(
        sample_size=8,
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        norm_num_groups=4,
    )
    path = tmp_path / "model"
    DDPMHubPipeline(unet, DDPMHubScheduler(num_train_timesteps=16)).save_pretrained(path)
    return path


def test_sample_mistyped_path_without_existing_parent_says_no_folder_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/ here: the name is also a valid Hub id, and the Hub is offline
    code, message = cli(["sample", "out/doesnotexist", "--out", tmp_path / "g.png"], capsys)
    assert code == 1
    assert message.startswith(
        "ddpm-hub sample: error: there is no folder out/doesnotexist; read as a Hub repo id"
    )
    assert "offline mode is on" in message and "\n" not in message.strip()


def test_sample_out_of_memory_is_one_line_naming_num_images(model_dir, tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(DDPMHubPipeline, "__call__", oom)
    out = tmp_path / "g.png"
    code, message = cli(
        ["sample", model_dir, "--num-images", 4000, "--sampler", "ddim", "--out", out], capsys
    )
    assert code == 1 and "out of memory generating 4000 images at once on cpu" in message
    assert "give a smaller --num-images (such as 1000)" in message and not out.exists()


def test_sample_other_runtime_errors_are_not_called_out_of_memory(model_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(DDPMHubPipeline, "__call__", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli_main(["sample", str(model_dir), "--out", str(tmp_path / "g.png")])


def test_eval_dataset_folder_without_images_or_a_non_parquet_file(model_dir, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("not an image")
    code, message = cli(["eval", model_dir, "--num-samples", 2, "--dataset", folder], capsys)
    assert code == 2 and f"--dataset: no images found in {folder} (read: .png, .jpg" in message
    code, message = cli(["eval", model_dir, "--num-samples", 2, "--dataset", folder / "a.txt"], capsys)
    assert code == 2 and "is a file but not a .parquet file" in message


@pytest.mark.parametrize("port", [-1, 0, 70000])
def test_space_port_out_of_range(port, capsys):
    code, message = cli(["space", "--port", port], capsys)
    assert code == 2 and f"--port must be between 1 and 65535, got {port}" in message


def test_space_missing_local_model_is_refused_before_serving(tmp_path, capsys):
    code, message = cli(["space", "--model", tmp_path / "missing"], capsys)
    assert code == 2 and f"--model: there is no folder {tmp_path / 'missing'} (its parent" in message
    (tmp_path / "model.yaml").write_text("x: 1")
    code, message = cli(["space", "--model", tmp_path / "model.yaml"], capsys)
    assert code == 2 and "is a file, not a folder" in message


def test_space_deploy_checks_token_offline_and_reachability_like_push(hub_server, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    repo_id = f"{hub_server.user}/space-{os.getpid()}"
    monkeypatch.delenv("HF_TOKEN")
    code, message = cli(["space", "--deploy", repo_id], capsys)
    assert code == 1 and "needs a Hub token with write access and you are not logged in" in message
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, message = cli(["space", "--deploy", repo_id], capsys)
    assert code == 1 and "offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE" in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, message = cli(["space", "--deploy", repo_id], capsys)
    assert code == 1 and "the Hub (http://127.0.0.1:9) cannot be reached" in message
    assert ("space", repo_id) not in hub_server.state.repos


@pytest.mark.parametrize(
    "key, text", [("learning_rate", "nan"), ("ema.max_decay", "nan"), ("max_grad_norm", "inf")]
)
def test_train_refuses_a_non_finite_number_before_anything(key, text, tmp_path):
    """nan passed every range check (nan <= 0 is False), and the run died in torch.optim with a traceback."""
    from ddpm_hub.config import ConfigError, load_config, parse_overrides

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got {text}$"):
        load_config(None, parse_overrides([f"--{key}", text, "--output_dir", str(out)])[1])
    assert not out.exists()


def test_an_abbreviated_option_is_not_taken_for_a_longer_one(capsys):
    # `eval --class 3` once meant `--class-accuracy` plus a stray 3
    from ddpm_hub.cli import build_parser

    args, rest = build_parser().parse_known_args(["eval", "spaces/default-model", "--class", "3"])
    assert not args.class_accuracy
    assert rest == ["--class", "3"]


def test_resume_latest_without_any_run_in_the_folder_is_refused(tmp_path, capsys):
    from ddpm_hub.cli import main

    missing = tmp_path / "typo"
    assert main(["train", "--output_dir", str(missing), "--resume", "latest", "--max_steps", "2"]) != 0
    err = capsys.readouterr().err
    assert "no run in" in err and "drop --resume" in err
    assert not missing.exists()
