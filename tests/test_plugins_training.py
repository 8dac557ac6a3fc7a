"""Plugins through training: `beta_schedule: cosine` and `backbone: dit` train a few steps, save a pipeline
that records its plugins, and load and sample in a fresh process, through the same commands as the UNet."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from ddpm_hub import load_pipeline

UNET = {
    "base_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [8],
    "dropout": 0.0,
    "norm_num_groups": 8,
}
DIT = {"patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 2, "frequency_embedding_size": 32}

RUNS = {
    # backbone, model kwargs, schedule, how training is started
    "unet-cosine": ("unet", UNET, "cosine", "api"),
    "dit-sigmoid": ("dit", DIT, "sigmoid", "cli"),
}


def write_config(tmp_path, backbone, model, schedule):
    config = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": {"dataset": "mnist5k", "image_size": 16, "max_samples": 64, "num_workers": 0},
        "backbone": backbone,
        "model": model,
        "scheduler": {"num_train_timesteps": 100, "beta_schedule": schedule},
        "max_steps": 4,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "log_with": "none",
        "logging_steps": 1,
        "sample_steps": 1000,
        "num_sample_images": 2,
        "sample_sampler": "ddim",
        "sample_inference_steps": 8,
        "final_sampler": "ddim",
        "final_inference_steps": 8,
        "checkpointing_steps": 1000,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("run_name", list(RUNS))
def test_train_save_and_sample_in_a_fresh_process(tmp_path, run_name):
    from importlib.metadata import version

    from ddpm_hub.config import load_config
    from ddpm_hub.train import main, train

    backbone, model, schedule, how = RUNS[run_name]
    config_path = write_config(tmp_path, backbone, model, schedule)
    if how == "api":
        run_dir = train(load_config(config_path))
    else:  # the command's own entry point, as `ddpm-hub train --config ...` runs it
        assert main(["--config", str(config_path)]) == 0
        run_dir = tmp_path / "run"
    assert (run_dir / "pipeline" / "model_index.json").is_file()

    # the run and its pipeline record which plugin provided what
    index = json.loads((run_dir / "pipeline" / "model_index.json").read_text())
    requires = index["_ddpm_hub_requires"]
    plugin_dist = {"dit": "ddpm-hub-dit", "unet": "ddpm-hub"}[backbone]
    assert requires["unet"] == {
        "distribution": plugin_dist,
        "version": version(plugin_dist),
        "backbone": backbone,
    }
    assert requires["scheduler"] == {
        "distribution": "ddpm-hub-schedules",
        "version": version("ddpm-hub-schedules"),
        "beta_schedule": schedule,
    }
    scheduler_config = json.loads((run_dir / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["beta_schedule"] == schedule  # and its betas, so that diffusers can use them too
    assert len(scheduler_config["trained_betas"]) == scheduler_config["num_train_timesteps"]
    info = json.loads((run_dir / "train_info.json").read_text())
    assert (info["backbone"], info["beta_schedule"]) == (backbone, schedule)
    assert {"distribution": "ddpm-hub-schedules", "version": version("ddpm-hub-schedules")} in info["plugins"]
    dit = {"distribution": "ddpm-hub-dit", "version": version("ddpm-hub-dit")}
    # only the plugins this model needs: the UNet run must not ask its users to install the DiT plugin
    assert (dit in info["plugins"]) == (backbone == "dit")

    # a fresh process loads the run (through the entry points, nothing imported by hand) and samples
    out = tmp_path / "fresh.npy"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        import ddpm_hub
        from ddpm_hub.cli import main

        pipe = ddpm_hub.load_pipeline({str(run_dir)!r})
        print(type(pipe.unet).__module__, type(pipe.unet).__name__, pipe.scheduler.config.beta_schedule)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), sampler="ddim",
                      num_inference_steps=8, output_type="np").images
        np.save({str(out)!r}, images)
        sys.exit(main(["sample", {str(run_dir)!r}, "--num-images", "2", "--sampler", "dpm-solver++", "--steps", "5",
                       "--out", {str(tmp_path / "grid.png")!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    module, cls, loaded_schedule = result.stdout.splitlines()[0].split()
    assert (module.split(".")[0], loaded_schedule) == (
        {"dit": "ddpm_hub_dit", "unet": "ddpm_hub"}[backbone],
        schedule,
    )
    assert cls == {"dit": "DiT", "unet": "UNet"}[backbone]
    assert (tmp_path / "grid.png").is_file()

    fresh = np.load(out)
    assert fresh.shape == (2, 16, 16, 1) and np.isfinite(fresh).all()
    # the same weights and betas as in this process: the same images from the same seed
    pipe = load_pipeline(run_dir)
    here = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        sampler="ddim",
        num_inference_steps=8,
        output_type="np",
    ).images
    np.testing.assert_allclose(fresh, here, atol=1e-5)
