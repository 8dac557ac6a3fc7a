"""Broken plugins, installed as a plugin author would install them (a distribution with an entry point), never
break ddpm-hub: each is disabled or fails only where it is used, with one line naming its distribution.

The distributions are built here: a ``NAME.dist-info`` folder (METADATA, entry_points.txt) beside the
module, on PYTHONPATH of the subprocesses that run the commands."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BACKBONE_HEAD = """
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ddpm_hub import hookimpl
"""

#: distribution -> (entry-point name, module source); each breaks one rule
BROKEN = {
    "ddpm-hub-importerror": (
        "importerror",
        "import ddpm_hub_no_such_dependency\n",
    ),
    "ddpm-hub-typo": (
        "typo",
        """
        import torch
        from ddpm_hub import hookimpl

        @hookimpl
        def register_schedule(register):  # the hook is register_schedules
            register("typo-linear", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 0.01))
        """,
    ),
    "ddpm-hub-forgot": (
        "forgot",
        BACKBONE_HEAD
        + textwrap.dedent("""
        class ForgotNet(ModelMixin, ConfigMixin):
            def __init__(self, sample_size=8, in_channels=1, out_channels=1):  # no @register_to_config
                super().__init__()
                self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

            def forward(self, sample, timestep, return_dict=True):
                return BaseOutput(sample=self.conv(sample))

        @hookimpl
        def register_backbones(register):
            register("forgot", ForgotNet)
        """),
    ),
    "ddpm-hub-plaintensor": (
        "plaintensor",
        BACKBONE_HEAD
        + textwrap.dedent("""
        class PlainNet(ModelMixin, ConfigMixin):
            @register_to_config
            def __init__(self, sample_size=8, in_channels=1, out_channels=1):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

            def forward(self, sample, timestep, return_dict=True):
                return self.conv(sample)  # a plain tensor, no .sample

        @hookimpl
        def register_backbones(register):
            register("plain", PlainNet)
        """),
    ),
    "ddpm-hub-undecorated": (
        "undecorated",
        """
        import torch

        def register_schedules(register):  # no @hookimpl: pluggy never calls it
            register("undecorated", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 0.01))
        """,
    ),
    "ddpm-hub-raisingsampler": (
        "raisingsampler",
        """
        from ddpm_hub import hookimpl

        def boom(config, betas):
            raise RuntimeError("the factory is broken")

        @hookimpl
        def register_samplers(register):
            register("boom", boom, default_steps=10, min_steps=2)
        """,
    ),
    "ddpm-hub-nokwargs": (
        "nokwargs",
        """
        import torch
        from ddpm_hub import hookimpl

        def nokw(num_train_timesteps):  # no beta_start / beta_end
            return torch.full((num_train_timesteps,), 0.01, dtype=torch.float64)

        @hookimpl
        def register_schedules(register):
            register("nokw", nokw)
        """,
    ),
}
DISABLED = {  # distribution -> words of its error
    "ddpm-hub-importerror": "failed to import (ModuleNotFoundError: No module named 'ddpm_hub_no_such_dependency')",
    "ddpm-hub-typo": "implements 'register_schedule', which is not a ddpm-hub hook",
    "ddpm-hub-forgot": "not decorated with diffusers' @register_to_config",
    "ddpm-hub-nokwargs": "cannot be called as fn(num_train_timesteps, beta_start=None, beta_end=None)",
}


def make_distribution(site: Path, dist: str, ep_name: str, source: str, version: str = "0.1.0") -> None:
    """An installed distribution ``dist`` whose ``ddpm_hub`` entry point ``ep_name`` is a module in ``site``."""
    module = dist.replace("-", "_")
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ddpm_hub]\n{ep_name} = {module}\n")
    (info / "top_level.txt").write_text(module + "\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for dist, (ep_name, source) in BROKEN.items():
        make_distribution(site, dist, ep_name, source)
    return site


def run(site, args, env_extra=None, cwd=None):
    paths = [
        str(site),
        str(ROOT),
        str(ROOT / "plugins/ddpm-hub-dit"),
        str(ROOT / "plugins/ddpm-hub-schedules"),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(env_extra or {})}
    env.pop("DDPM_HUB_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd
    )


def test_ddpm_hub_plugins_lists_every_broken_plugin_and_exits_0(site):
    result = run(site, ["-m", "ddpm_hub.cli", "plugins"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    listed = {p["distribution"]: p for p in json.loads(result.stdout)}
    for dist, words in DISABLED.items():
        assert words in listed[dist]["error"], listed[dist]
        assert listed[dist]["registered"] == {}
    # what only running it shows: the smoke checks of `ddpm-hub plugins`
    (plain,) = listed["ddpm-hub-plaintensor"]["problems"]
    assert "'plain' breaks the backbone contract" in plain and "must return an object with a .sample" in plain
    (boom,) = listed["ddpm-hub-raisingsampler"]["problems"]
    assert (
        "'boom' fails building it from a ddpm-hub scheduler config" in boom
        and "the factory is broken" in boom
    )
    (undecorated,) = listed["ddpm-hub-undecorated"]["warnings"]
    assert "register_schedules() looks like the hook register_schedules but is not decorated" in undecorated
    assert listed["ddpm-hub-undecorated"]["hooks"] == [] and "error" not in listed["ddpm-hub-undecorated"]
    # the working plugins beside them are listed as before, with nothing to report
    for healthy in ("ddpm-hub-dit", "ddpm-hub-schedules"):
        assert not {"error", "problems", "warnings"} & set(listed[healthy]), listed[healthy]
    assert listed["ddpm-hub-schedules"]["registered"] == {"schedules": ["cosine", "sigmoid"]}

    # stderr: one line per disabled plugin, naming its distribution, the reason and the way out
    lines = result.stderr.strip().splitlines()
    for dist in DISABLED:
        (line,) = [line for line in lines if f"(distribution {dist!r}) is disabled" in line]
        assert line.startswith("warning: the ddpm-hub plugin") and DISABLED[dist] in line
        assert "DDPM_HUB_LOAD_PLUGINS=" in line and f"pip uninstall {dist}" in line
    assert any("ddpm-hub-undecorated" in line and "@ddpm_hub.hookimpl" in line for line in lines)
    way_out = lines[0].split("DDPM_HUB_LOAD_PLUGINS=")[1]
    assert set(way_out.strip("'").split(",")) == {
        "dit",
        "schedules",
        "plaintensor",
        "raisingsampler",
        "undecorated",
    }


TINY_RUN = [
    "--max_steps",
    "2",
    "--batch_size",
    "4",
    "--data.max_samples",
    "8",
    "--data.image_size",
    "8",
    "--data.num_workers",
    "0",
    "--model",
    "{base_channels: 8, channel_mult: [1], num_res_blocks: 1, attention_resolutions: [], norm_num_groups: 4}",
    "--scheduler.num_train_timesteps",
    "50",
    "--sample_steps",
    "0",
    "--num_sample_images",
    "2",
    "--final_sampler",
    "ddim",
    "--final_inference_steps",
    "8",
    "--log_with",
    "none",
]


def test_training_with_builtins_works_beside_broken_plugins(site, tmp_path):
    out = tmp_path / "run"
    result = run(site, ["-m", "ddpm_hub.cli", "train", "--output_dir", str(out), *TINY_RUN])
    assert result.returncode == 0, result.stderr
    assert (out / "pipeline" / "model_index.json").is_file()
    assert "Traceback" not in result.stderr
    assert sum("is disabled" in line for line in result.stderr.splitlines()) == len(DISABLED)
    # the banner counts a small model's parameters readably; no TensorBoard line for a run without a tracker
    assert "backbone unet (" in result.stdout and "k parameters)" in result.stdout
    assert "0.00M" not in result.stdout and "tensorboard" not in result.stdout


# each use of a broken plugin: the arguments, the words of the one error line, and the distribution named
USES = {
    "backbone-plain-tensor": (
        ["--backbone", "plain"],
        "must return an object with a .sample",
        "ddpm-hub-plaintensor",
    ),
    "backbone-no-register-to-config": (["--backbone", "forgot"], "@register_to_config", "ddpm-hub-forgot"),
    "schedule-without-kwargs": (
        ["--scheduler.beta_schedule", "nokw"],
        "beta_start=None",
        "ddpm-hub-nokwargs",
    ),
    "raising-sampler": (["--final_sampler", "boom"], "the factory is broken", "ddpm-hub-raisingsampler"),
    "misspelled-hook": (["--scheduler.beta_schedule", "typo-linear"], "register_schedule", "ddpm-hub-typo"),
}


def test_using_a_broken_plugin_fails_naming_it_before_any_run_folder(site, tmp_path):
    """All uses in one process (the plugins load once), each through `ddpm-hub train`'s own main."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from ddpm_hub.cli import main
        results = {{}}
        for name, args in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    code = main(["train", "--output_dir", {str(tmp_path)!r} + "/" + name, *args])
                except SystemExit as exc:
                    code = exc.code
            results[name] = (code, err.getvalue())
        print(json.dumps(results))
    """)
    unet_model = TINY_RUN.index("--model")
    other_backbone = TINY_RUN[:unet_model] + TINY_RUN[unet_model + 2 :]  # the plugin backbone's own defaults
    uses = {
        name: (other_backbone if "--backbone" in use[0] else TINY_RUN) + use[0] for name, use in USES.items()
    }
    result = run(site, ["-c", script, json.dumps(uses)])
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (_, words, dist) in USES.items():
        code, stderr = results[name]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1, (name, stderr)
        assert words in errors[0] and repr(dist) in errors[0], (name, errors[0])
        assert "Traceback" not in stderr
        assert not (tmp_path / name).exists(), name


def test_only_a_model_that_needs_a_disabled_plugin_fails(site, tmp_path):
    """A pipeline whose backbone comes from the plugin that fails to import: MissingPluginError naming it;
    `ddpm-hub sample --sampler boom` (a sampler whose factory raises) fails at the option, naming it."""
    script = textwrap.dedent(f"""
        import json, torch
        from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet, load_pipeline
        unet = UNet(sample_size=8, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                    attention_resolutions=(), norm_num_groups=4)
        folder = {str(tmp_path / "pipe")!r}
        pipe = DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler(num_train_timesteps=50))
        for where in (folder, {str(tmp_path / "good")!r}):
            pipe.save_pretrained(where)
        load_pipeline(folder)  # built-ins load beside the broken plugins
        index = json.load(open(folder + "/model_index.json"))
        index["unet"] = ["ddpm_hub_importerror", "SomeNet"]
        index["_ddpm_hub_requires"]["unet"] = {{"distribution": "ddpm-hub-importerror", "version": "0.1.0"}}
        json.dump(index, open(folder + "/model_index.json", "w"))
        try:
            load_pipeline(folder)
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    result = run(site, ["-c", script])
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip().splitlines()[-1]
    assert message.startswith("MissingPluginError") and "'ddpm-hub-importerror'" in message
    assert "installed but disabled: it failed to import (ModuleNotFoundError" in message

    good = tmp_path / "good"
    result = run(
        site,
        ["-m", "ddpm_hub.cli", "sample", str(good), "--sampler", "boom", "--out", str(tmp_path / "g.png")],
    )
    assert result.returncode == 2 and "ddpm-hub-raisingsampler" in result.stderr.splitlines()[-1]
    assert "the factory is broken" in result.stderr and not (tmp_path / "g.png").exists()
