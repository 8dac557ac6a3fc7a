"""Plugins: entry-point discovery, `ddpm-hub plugins`, DDPM_HUB_LOAD_PLUGINS, throwaway in-process plugins,
provenance in saved pipelines, missing-plugin errors, and CONTRIBUTING.md documenting (and running) every hook."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn

from ddpm_hub import (
    DDPMHubPipeline,
    DDPMHubScheduler,
    UNet,
    hookimpl,
    hookspecs,
    load_pipeline,
    make_sampler,
    plugins,
)
from ddpm_hub.plugins import MissingPluginError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGINS = {"schedules": "ddpm-hub-schedules", "dit": "ddpm-hub-dit"}


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is faster than several (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def register_plugin():
    """Register throwaway plugins in-process; unregister them (and re-collect the registries) afterwards."""
    names = []

    def register(obj, name):
        names.append(name)
        plugins.pm.register(obj, name=name)
        plugins.reset_registries()
        return obj

    yield register
    for name in names:
        if plugins.pm.get_plugin(name) is not None:
            plugins.pm.unregister(name=name)
    plugins.reset_registries()


@pytest.fixture
def tiny_unet():
    return UNet(
        sample_size=8,
        in_channels=1,
        base_channels=16,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        norm_num_groups=8,
    )


def run(args, env_extra=None, check=True):
    env = {**os.environ, **(env_extra or {})}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# --- discovery -------------------------------------------------------------------------------------------


def test_entry_points_discover_both_example_plugins():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="ddpm_hub")}
    assert eps["schedules"] == "ddpm_hub_schedules" and eps["dit"] == "ddpm_hub_dit"
    schedules, backbones = plugins.get_schedules(), plugins.get_backbones()
    for name in ("cosine", "sigmoid"):
        assert (schedules[name].plugin, schedules[name].distribution) == ("schedules", "ddpm-hub-schedules")
    assert (backbones["dit"].plugin, backbones["dit"].distribution) == ("dit", "ddpm-hub-dit")
    # the built-ins come through the same hooks
    assert schedules["linear"].distribution == "ddpm-hub"
    assert set(plugins.get_samplers()) >= {"ddpm", "ddim", "dpm-solver++"}
    assert plugins.get_backbones()["unet"].obj is UNet


def test_plugin_info_reports_name_distribution_version_hooks_and_names():
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert set(info) >= set(EXAMPLE_PLUGINS) and not any(n.startswith("ddpm_hub.") for n in info)
    assert info["schedules"] == {
        "name": "schedules",
        "distribution": "ddpm-hub-schedules",
        "version": importlib.metadata.version("ddpm-hub-schedules"),
        "hooks": ["register_schedules"],
        "registered": {"schedules": ["cosine", "sigmoid"]},
    }
    assert info["dit"]["hooks"] == ["register_backbones"] and info["dit"]["registered"] == {
        "backbones": ["dit"]
    }
    everything = {p["name"]: p for p in plugins.plugin_info(include_builtins=True)}
    assert everything["ddpm_hub.samplers"]["registered"] == {
        "samplers": ["ddim", "ddpm", "ddpm-seed", "dpm-solver++", "sde-dpm-solver++"]
    }
    assert everything["ddpm_hub.schedules"]["distribution"] == "ddpm-hub"


def test_cli_plugins_shows_the_example_plugins(capsys):
    shown = json.loads(run(["-m", "ddpm_hub.cli", "plugins"]).stdout)
    by_name = {p["name"]: p for p in shown}
    assert {n: by_name[n]["distribution"] for n in EXAMPLE_PLUGINS} == EXAMPLE_PLUGINS
    assert by_name["dit"]["version"] == importlib.metadata.version("ddpm-hub-dit")
    assert by_name["dit"]["registered"] == {"backbones": ["dit"]}
    assert not any(p["distribution"] == "ddpm-hub" for p in shown)
    from ddpm_hub.cli import main

    assert main(["plugins", "--all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert {"ddpm_hub.schedules", "ddpm_hub.samplers", "ddpm_hub.models.unet"} <= {
        p["name"] for p in everything
    }
    assert set(EXAMPLE_PLUGINS) <= {p["name"] for p in everything}


def test_load_plugins_env_var_hides_and_selects_plugins(tmp_path, tiny_unet):
    """DDPM_HUB_LOAD_PLUGINS="" loads no installed plugin; a list loads only those named (any spelling)."""
    some = run(["-m", "ddpm_hub.cli", "plugins"], {"DDPM_HUB_LOAD_PLUGINS": " DDPM_hub_DiT , nosuch"})
    assert [p["name"] for p in json.loads(some.stdout)] == ["dit"]
    assert "DDPM_HUB_LOAD_PLUGINS names nosuch" in some.stderr

    # with none loaded: `ddpm-hub plugins --all` shows the built-ins only, and a checkpoint whose schedule
    # comes from an installed plugin that the variable leaves out says so
    folder = tmp_path / "cosine-pipeline"
    scheduler = DDPMHubScheduler(num_train_timesteps=50, beta_schedule="cosine")
    DDPMHubPipeline(unet=tiny_unet, scheduler=scheduler).save_pretrained(folder)
    # a folder saved now records the betas (trained_betas) and loads without the plugin; an older one
    # (trained_betas null) needs the plugin that computes them
    _edit(folder / "scheduler" / "scheduler_config.json", trained_betas=None)
    script = textwrap.dedent(f"""
        import ddpm_hub
        from ddpm_hub.cli import main
        main(["plugins", "--all"])
        for attempt in (lambda: ddpm_hub.load_pipeline({str(folder)!r}),
                        lambda: ddpm_hub.DDPMHubScheduler(beta_schedule="cosine")):
            try:
                attempt()
            except Exception as exc:
                print("ERROR", type(exc).__name__, exc)
    """)
    out = run(["-c", script], {"DDPM_HUB_LOAD_PLUGINS": ""}).stdout
    listing, *errors = out.split("ERROR ")
    assert {p["distribution"] for p in json.loads(listing)} == {"ddpm-hub"}
    assert errors[0].startswith("MissingPluginError") and "'ddpm-hub-schedules'" in errors[0]
    assert "installed but not loaded because DDPM_HUB_LOAD_PLUGINS=''" in errors[0]
    assert errors[1].startswith("ValueError") and "unknown schedule 'cosine'" in errors[1]
    assert "DDPM_HUB_LOAD_PLUGINS=''" in errors[1]


# --- throwaway plugins -------------------------------------------------------------------------------------


def test_a_new_schedule_is_used_by_the_scheduler_and_samplers(register_plugin):
    def geometric(num_train_timesteps, beta_start=None, beta_end=None):
        start, end = beta_start or 1e-3, beta_end or 0.1
        return torch.logspace(
            torch.log10(torch.tensor(start)),
            torch.log10(torch.tensor(end)),
            num_train_timesteps,
            dtype=torch.float64,
        )

    class Geometric:
        @hookimpl
        def register_schedules(self, register):
            register("geometric", geometric)

    register_plugin(Geometric(), "geometric")
    scheduler = DDPMHubScheduler(num_train_timesteps=64, beta_schedule="geometric", beta_end=0.2)
    torch.testing.assert_close(scheduler.betas, geometric(64, beta_end=0.2))
    torch.testing.assert_close(scheduler.alphas_cumprod, torch.cumprod(1 - geometric(64, beta_end=0.2), 0))
    ddim = make_sampler("ddim", scheduler)  # diffusers does not know "geometric": the betas travel along
    torch.testing.assert_close(ddim.betas.double(), scheduler.betas, rtol=1e-6, atol=1e-9)
    entry = plugins.provider("schedules", "geometric")
    assert (entry.plugin, entry.obj) == ("geometric", geometric)
    assert {p["name"]: p for p in plugins.plugin_info()}["geometric"]["registered"] == {
        "schedules": ["geometric"]
    }

    plugins.pm.unregister(name="geometric")
    plugins.reset_registries()
    with pytest.raises(ValueError, match="unknown schedule 'geometric'; registered schedules: .*linear"):
        DDPMHubScheduler(beta_schedule="geometric")


def test_a_schedule_returning_bad_betas_is_named(register_plugin):
    class Bad:
        @hookimpl
        def register_schedules(self, register):
            register("too-steep", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 1.5))

    register_plugin(Bad(), "bad")
    with pytest.raises(ValueError, match="schedule 'too-steep' gives betas outside"):
        DDPMHubScheduler(beta_schedule="too-steep")


def test_duplicate_names_are_an_error_naming_both_plugins(register_plugin):
    class First:
        @hookimpl
        def register_samplers(self, register):
            register("fancy", lambda config, betas: None)

    class Second:
        @hookimpl
        def register_samplers(self, register):
            register("fancy", lambda config, betas: None)

    register_plugin(First(), "first-plugin")
    assert "fancy" in plugins.get_samplers()
    register_plugin(Second(), "second-plugin")
    with pytest.raises(
        ValueError, match="two plugins register the sampler 'fancy': 'first-plugin' .* and 'second-plugin'"
    ):
        plugins.get_samplers()


def test_shadowing_a_builtin_names_the_builtin_and_its_distribution(register_plugin):
    class Shadow:
        @hookimpl
        def register_schedules(self, register):
            register("linear", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 0.01))

    register_plugin(Shadow(), "shadow")
    with pytest.raises(ValueError, match=r"'ddpm_hub.schedules' \(distribution 'ddpm-hub'\) and 'shadow'"):
        DDPMHubScheduler()


def test_a_misspelled_hook_fails_loudly_naming_the_hook(register_plugin):
    class Typo:
        @hookimpl
        def register_schedule(self, register):  # missing "s"
            register("never", None)

    register_plugin(Typo(), "typo-plugin")
    with pytest.raises(pluggy.PluginValidationError) as info:
        plugins.load_plugins()
    message = str(info.value)
    assert "'typo-plugin'" in message and "'register_schedule'" in message and "register_schedules" in message
    with pytest.raises(pluggy.PluginValidationError, match="register_schedule"):
        plugins.get_schedules()  # every use of the registries fails, not only the first


def test_a_hook_with_the_wrong_argument_is_rejected(register_plugin):
    class WrongArgument:
        @hookimpl
        def register_backbones(self, add):
            pass

    with pytest.raises(
        pluggy.PluginValidationError,
        match=r"Plugin 'wrong-argument' for hook 'register_backbones'(.|\n)*\{'add'\} are declared",
    ):
        register_plugin(WrongArgument(), "wrong-argument")


class NotAModelMixin(nn.Module):
    def __init__(self, sample_size=8, in_channels=1, out_channels=1):
        super().__init__()


def test_a_backbone_that_is_not_a_diffusers_model_is_rejected(register_plugin):
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("plain-module", NotAModelMixin)

    register_plugin(Plugin(), "plain")
    with pytest.raises(
        TypeError, match="'plain' registered backbone 'plain-module' .* not a diffusers ModelMixin"
    ):
        plugins.get_backbones()


def test_a_backbone_without_the_contract_config_is_rejected(register_plugin):
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    class NoChannels(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, sample_size=8, channels=1):
            super().__init__()

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("no-channels", NoChannels)

    register_plugin(Plugin(), "no-channels-plugin")
    with pytest.raises(TypeError, match=r"lacks \['in_channels', 'out_channels'\]"):
        plugins.get_backbone("no-channels")


def test_a_backbone_whose_forward_breaks_the_contract_fails_clearly():
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    class BareTensor(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, sample_size=8, in_channels=1, out_channels=1, crop=False):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, sample, timestep, return_dict=True):
            out = sample * self.scale
            if self.config.crop:
                return types.SimpleNamespace(sample=out[..., :-1])
            return out  # no .sample

    scheduler = DDPMHubScheduler(num_train_timesteps=100)
    with pytest.raises(TypeError, match="BareTensor returned Tensor .* must return an object with a .sample"):
        DDPMHubPipeline(unet=BareTensor(), scheduler=scheduler)(batch_size=1, output_type="pt")
    with pytest.raises(
        ValueError, match=r"returned .sample of shape \(1, 1, 8, 7\) for input \(1, 1, 8, 8\)"
    ):
        DDPMHubPipeline(unet=BareTensor(crop=True), scheduler=scheduler)(batch_size=1, output_type="pt")


# --- provenance and missing plugins ------------------------------------------------------------------------


def test_save_pretrained_records_providers_and_diffusers_ignores_them(tmp_path, tiny_unet):
    from ddpm_hub_dit import DiT

    pipe = DDPMHubPipeline(
        unet=tiny_unet, scheduler=DDPMHubScheduler(num_train_timesteps=50, beta_schedule="sigmoid")
    )
    pipe.save_pretrained(tmp_path / "a")
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    core = importlib.metadata.version("ddpm-hub")
    assert index["_ddpm_hub_requires"] == {
        "unet": {"distribution": "ddpm-hub", "version": core, "backbone": "unet"},
        "scheduler": {
            "distribution": "ddpm-hub-schedules",
            "version": importlib.metadata.version("ddpm-hub-schedules"),
            "beta_schedule": "sigmoid",
        },
    }
    # diffusers' own loader drops "_" keys: the folder loads without it, the key is not a component or kwarg
    loaded = DDPMHubPipeline.from_pretrained(tmp_path / "a")
    assert set(loaded.components) == {"unet", "scheduler"}
    assert "_ddpm_hub_requires" not in loaded.config
    torch.testing.assert_close(loaded.scheduler.betas, pipe.scheduler.betas)

    # a DiT with explicit betas: the backbone's plugin is required, no schedule plugin is
    betas = DDPMHubScheduler(num_train_timesteps=50, beta_schedule="cosine").betas.tolist()
    dit = DiT(sample_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2)
    DDPMHubPipeline(
        unet=dit, scheduler=DDPMHubScheduler(num_train_timesteps=50, trained_betas=betas)
    ).save_pretrained(tmp_path / "b")
    requires = json.loads((tmp_path / "b" / "model_index.json").read_text())["_ddpm_hub_requires"]
    assert requires["unet"] == {"distribution": "ddpm-hub-dit", "version": "0.1.0", "backbone": "dit"}
    assert requires["scheduler"] == {"distribution": "ddpm-hub", "version": core}

    # a stock diffusers pipeline's components are recorded by their distribution
    from diffusers import DDPMScheduler, UNet2DModel

    stock = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8,),
        layers_per_block=1,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=4,
    )
    DDPMHubPipeline(unet=stock, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(
        tmp_path / "c"
    )
    requires = json.loads((tmp_path / "c" / "model_index.json").read_text())["_ddpm_hub_requires"]
    diffusers_version = importlib.metadata.version("diffusers")
    assert requires["unet"] == {"distribution": "ddpm-hub", "version": core, "backbone": "diffusers-unet2d"}
    assert requires["scheduler"] == {"distribution": "diffusers", "version": diffusers_version}
    assert isinstance(load_pipeline(tmp_path / "c").scheduler, DDPMScheduler)


def _saved(tmp_path, unet):
    folder = tmp_path / "pipeline"
    DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return folder


def _edit(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_checkpoint_naming_a_missing_plugins_backbone_names_the_distribution(tmp_path, tiny_unet):
    folder = _saved(tmp_path, tiny_unet)
    _edit(
        folder / "model_index.json",
        unet=["ddpm_hub_fancynet.model", "FancyNet"],
        _ddpm_hub_requires={
            "unet": {"distribution": "ddpm-hub-fancynet", "version": "1.2.3", "backbone": "fancy"}
        },
    )
    with pytest.raises(MissingPluginError) as info:
        load_pipeline(folder)
    message = str(info.value)
    assert "ddpm_hub_fancynet.model.FancyNet" in message
    assert (
        "'ddpm-hub-fancynet' (saved with version 1.2.3), which is not installed: pip install ddpm-hub-fancynet==1.2.3"
        in message
    )
    assert isinstance(info.value, ImportError)

    # an older folder without _ddpm_hub_requires: the distribution is guessed from the module
    _edit(folder / "model_index.json", _ddpm_hub_requires={})
    with pytest.raises(MissingPluginError, match="pip install ddpm-hub-fancynet$"):
        load_pipeline(folder)
    # run folders (a pipeline/ subfolder) go through the same check, and so does `ddpm-hub sample`
    result = run(["-m", "ddpm_hub.cli", "sample", str(tmp_path), "--num-images", "1"], check=False)
    assert result.returncode != 0 and "pip install ddpm-hub-fancynet" in result.stderr


def test_a_checkpoint_naming_a_missing_schedule_names_the_distribution(tmp_path, tiny_unet):
    folder = _saved(tmp_path, tiny_unet)
    _edit(folder / "scheduler" / "scheduler_config.json", beta_schedule="laplace")
    _edit(
        folder / "model_index.json",
        _ddpm_hub_requires={
            "scheduler": {"distribution": "ddpm-hub-laplace", "version": "0.3.0", "beta_schedule": "laplace"}
        },
    )
    with pytest.raises(
        MissingPluginError,
        match=r"beta_schedule 'laplace' is provided by the distribution "
        r"'ddpm-hub-laplace' \(saved with version 0.3.0\), which is not installed: pip install "
        r"ddpm-hub-laplace==0.3.0",
    ):
        load_pipeline(folder)
    _edit(folder / "model_index.json", _ddpm_hub_requires={})
    with pytest.raises(
        MissingPluginError, match="beta_schedule 'laplace' is not registered; install the plugin"
    ):
        load_pipeline(folder)


def test_a_fake_installed_distribution_that_does_not_provide_the_schedule(tmp_path, tiny_unet, monkeypatch):
    """The distribution is installed (a fake one on sys.path) but registers no such schedule: upgrade it."""
    site = tmp_path / "site"
    dist_info = site / "ddpm_hub_oldschedules-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ddpm-hub-oldschedules\nVersion: 0.1.0\n"
    )
    monkeypatch.syspath_prepend(str(site))
    folder = _saved(tmp_path, tiny_unet)
    _edit(folder / "scheduler" / "scheduler_config.json", beta_schedule="shiny")
    _edit(
        folder / "model_index.json",
        _ddpm_hub_requires={
            "scheduler": {
                "distribution": "ddpm-hub-oldschedules",
                "version": "0.2.0",
                "beta_schedule": "shiny",
            }
        },
    )
    with pytest.raises(
        MissingPluginError,
        match="installed but does not provide it; upgrade it: pip install -U ddpm-hub-oldschedules",
    ):
        load_pipeline(folder)


# --- CONTRIBUTING.md --------------------------------------------------------------------------------------


def _hookspec_names():
    return sorted(name for name, fn in vars(hookspecs).items() if hasattr(fn, "ddpm_hub_spec"))


def _hook_sections():
    """{hook name: [python code blocks]} from CONTRIBUTING.md's "### `register_x(register)`" sections."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    parts = re.split(r"^### `(\w+)\(register\)`\s*$", text, flags=re.M)
    sections = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        body = re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.M)[0]
        sections[name] = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return sections


def test_every_hookspec_is_documented_in_contributing():
    assert _hookspec_names() == ["register_backbones", "register_samplers", "register_schedules"]
    sections = _hook_sections()
    undocumented = [name for name in _hookspec_names() if name not in sections]
    assert not undocumented, f"hooks without a section in CONTRIBUTING.md: {undocumented}"
    for name in _hookspec_names():
        assert len(sections[name]) == 2, f"the {name} section needs a plugin module and a use example"
        assert f"def {name}(register)" in sections[name][0]


@pytest.mark.parametrize("hook", ["register_schedules", "register_samplers", "register_backbones"])
def test_contributing_examples_run(hook, register_plugin):
    """Each hook's example: load the plugin module as written, register it, run the use block."""
    plugin_code, use_code = _hook_sections()[hook]
    module = types.ModuleType(f"contributing_example_{hook}")
    exec(compile(plugin_code, f"CONTRIBUTING.md:{hook}", "exec"), module.__dict__)
    register_plugin(module, f"contributing-{hook}")
    assert plugin_info_hooks(f"contributing-{hook}") == [hook]
    exec(compile(use_code, f"CONTRIBUTING.md:{hook}:use", "exec"), {})


def plugin_info_hooks(name):
    return {p["name"]: p for p in plugins.plugin_info()}[name]["hooks"]
