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
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
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
from ddpm_hub.config import MNIST_MODEL
from ddpm_hub.plugins import MissingPluginError, PluginError

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
    assert some.stderr.count("DDPM_HUB_LOAD_PLUGINS names nosuch") == 1  # once, though plugins load twice

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


def test_bad_betas_blame_the_plugin_unless_the_config_set_the_range(register_plugin):
    def late(num_train_timesteps, beta_start=None, beta_end=None):  # fine at small T, broken at T >= 100
        end = 0.02 if beta_end is None else beta_end
        return torch.full(
            (num_train_timesteps,), end if num_train_timesteps < 100 else 1.5, dtype=torch.float64
        )

    def ranged(num_train_timesteps, beta_start=None, beta_end=None):
        return torch.linspace(beta_start or 1e-4, beta_end or 0.02, num_train_timesteps, dtype=torch.float64)

    class Bad:
        @hookimpl
        def register_schedules(self, register):
            register("too-steep", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 1.5))
            register("late", late)
            register("ranged", ranged)

    register_plugin(Bad(), "bad")
    # first use: run at small T (the smoke check), before the T the config asks for
    with pytest.raises(
        PluginError,
        match=r"^the ddpm-hub plugin 'bad': its schedule 'too-steep' breaks the schedule contract at "
        r"num_train_timesteps=1 \(beta_start and beta_end unset\): betas must lie strictly inside \(0, 1\), got \[1.5\]",
    ):
        DDPMHubScheduler(beta_schedule="too-steep")
    with pytest.raises(
        PluginError,
        match=r"its schedule 'late' gives bad betas for num_train_timesteps=512 \(beta_start=None, beta_end=None, so "
        r"this is the plugin's fault, not the config's\)",
    ):
        DDPMHubScheduler(beta_schedule="late")
    # a range the config set and the schedule used: the config is at fault
    with pytest.raises(
        ValueError, match="'ranged' gives betas outside .*check beta_start and beta_end"
    ) as info:
        DDPMHubScheduler(beta_schedule="ranged", beta_end=1.5)
    assert not isinstance(info.value, PluginError)
    torch.testing.assert_close(
        DDPMHubScheduler(num_train_timesteps=8, beta_schedule="ranged").betas, ranged(8)
    )


def test_two_plugins_registering_one_name_lose_it_and_keep_the_rest(register_plugin):
    from ddpm_hub.samplers import ddim

    class First:
        @hookimpl
        def register_samplers(self, register):
            register("fancy", lambda config, betas: None)
            register("first-only", ddim)

    class Second:
        @hookimpl
        def register_samplers(self, register):
            register("fancy", lambda config, betas: None)

    register_plugin(First(), "first-plugin")
    assert "fancy" in plugins.get_samplers()
    register_plugin(Second(), "second-plugin")
    samplers = plugins.get_samplers()
    assert "fancy" not in samplers and "first-only" in samplers and "ddpm" in samplers
    with pytest.raises(
        PluginError,
        match="the sampler 'fancy' is registered by the ddpm-hub plugin 'first-plugin' and by the ddpm-hub plugin "
        "'second-plugin', so neither is used; uninstall one of them or leave one out with DDPM_HUB_LOAD_PLUGINS",
    ):
        plugins.get_sampler("fancy")
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert info["second-plugin"]["warnings"] == [
        "the sampler 'fancy' is also registered by the ddpm-hub plugin 'first-plugin': neither is used"
    ]


def test_a_builtin_name_disables_the_plugin_and_says_to_pick_another(register_plugin):
    class Shadow:
        @hookimpl
        def register_schedules(self, register):
            register("linear", lambda num_train_timesteps, **_: torch.full((num_train_timesteps,), 0.01))

    register_plugin(Shadow(), "shadow")
    with pytest.warns(
        plugins.PluginWarning,
        match="'shadow' is disabled: it registered the schedule 'linear', a "
        "name ddpm-hub itself provides; pick another name for it",
    ):
        scheduler = DDPMHubScheduler(num_train_timesteps=100)
    torch.testing.assert_close(scheduler.betas, plugins.get_schedules()["linear"].obj(100))  # the built-in
    assert plugins.get_schedules()["linear"].distribution == "ddpm-hub"
    assert "pick another name" in {p["name"]: p for p in plugins.plugin_info()}["shadow"]["error"]


def test_a_misspelled_hook_disables_only_that_plugin(register_plugin):
    class Typo:
        @hookimpl
        def register_schedule(self, register):  # missing "s"
            register("never", None)

    register_plugin(Typo(), "typo-plugin")
    with pytest.warns(plugins.PluginWarning) as record:
        plugins.load_plugins()
    (message,) = [str(w.message) for w in record if "typo-plugin" in str(w.message)]
    assert (
        "'typo-plugin' is disabled: it implements 'register_schedule', which is not a ddpm-hub hook"
        in message
    )
    assert "register_schedules" in message and "DDPM_HUB_LOAD_PLUGINS=" in message
    assert "linear" in plugins.get_schedules()  # everything else works
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert "not a ddpm-hub hook" in info["typo-plugin"]["error"] and info["typo-plugin"]["registered"] == {}


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
    assert "must take one argument named `register`" in plugins._hook_argument_problem(WrongArgument())


class NotAModelMixin(nn.Module):
    def __init__(self, sample_size=8, in_channels=1, out_channels=1):
        super().__init__()


class TensorOnly(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, sample_size=8, in_channels=1, out_channels=1):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, return_dict=True):
        return sample * self.scale


class Forgot(ModelMixin, ConfigMixin):
    def __init__(self, sample_size=8, in_channels=1, out_channels=1):
        super().__init__()


class NoChannels(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, sample_size=8, channels=1):
        super().__init__()


class NoReturnDict(TensorOnly):
    def forward(self, x):
        return x


def good_schedule(num_train_timesteps, beta_start=None, beta_end=None):
    return torch.full((num_train_timesteps,), 0.01, dtype=torch.float64)


#: what a plugin registers -> the words of the error that disables it
BAD_REGISTRATIONS = {
    "not-a-model": (
        "backbones",
        "plain-module",
        NotAModelMixin,
        "NotAModelMixin'>, which is not a diffusers ModelMixin + ConfigMixin class",
    ),
    "no-register-to-config": (
        "backbones",
        "forgot",
        Forgot,
        "backbone 'forgot' (Forgot) whose __init__ is not decorated with diffusers' @register_to_config",
    ),
    "no-channels": (
        "backbones",
        "no-channels",
        NoChannels,
        r"whose config lacks ['in_channels', 'out_channels']",
    ),
    "forward-signature": (
        "backbones",
        "no-return-dict",
        NoReturnDict,
        "whose forward(self, x) cannot be called as forward(sample, timestep, return_dict=True)",
    ),
    "schedule-without-kwargs": (
        "schedules",
        "nokw",
        lambda num_train_timesteps: None,
        "cannot be called as fn(num_train_timesteps, beta_start=None, beta_end=None); a schedule that does not "
        "use the range must still accept and ignore these keyword arguments",
    ),
    "sampler-signature": (
        "samplers",
        "one-arg",
        lambda config: None,
        "cannot be called as factory(config, betas)",
    ),
    "name-not-a-string": (
        "schedules",
        7,
        good_schedule,
        "it registered the name 7; a name must be a non-empty string",
    ),
    "name-with-space": ("schedules", "my schedule", good_schedule, "without spaces"),
    "steps-on-a-schedule": ("schedules", "x", good_schedule, "only samplers take them"),
}


@pytest.mark.parametrize("case", list(BAD_REGISTRATIONS))
def test_registration_checks_the_contract_and_disables_only_the_bad_plugin(case, register_plugin):
    kind, name, obj, words = BAD_REGISTRATIONS[case]

    class Plugin:
        @hookimpl
        def register_schedules(self, register):
            register("fine", good_schedule)  # registered first, dropped with the rest of the plugin
            if kind == "schedules":
                register(name, obj, **({"min_steps": 2} if case == "steps-on-a-schedule" else {}))

    def register_other(self, register):
        register(name, obj)

    if kind != "schedules":
        setattr(Plugin, f"register_{kind}", hookimpl(register_other))
    register_plugin(Plugin(), "bad-plugin")
    with pytest.warns(
        plugins.PluginWarning, match="the ddpm-hub plugin 'bad-plugin' is disabled: "
    ) as record:
        registry = getattr(plugins, f"get_{kind}")()
    assert words in str(record[0].message)
    assert "fine" not in plugins.get_schedules() and "linear" in plugins.get_schedules()
    assert name not in registry
    info = {p["name"]: p for p in plugins.plugin_info()}["bad-plugin"]
    assert words in info["error"] and info["registered"] == {}
    if isinstance(name, str) and " " not in name:  # using it says why it is missing
        with pytest.raises(
            PluginError,
            match=f"the {kind[:-1]} '{name}' comes from the ddpm-hub plugin 'bad-plugin', "
            "which is disabled: ",
        ):
            plugins.provider(kind, name)


def test_a_raising_sampler_factory_fails_on_first_use_naming_the_plugin(register_plugin, tiny_unet):
    def boom(config, betas):
        raise RuntimeError("no luck")

    seen = {}

    def spy(config, betas):  # what a factory gets: the training scheduler's config and its float64 betas
        seen.update(config=config, betas=betas)
        return plugins.get_samplers()["ddim"].obj(config, betas)

    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("boom", boom)
            register("spy", spy)

    register_plugin(Plugin(), "raising")
    pipe = DDPMHubPipeline(unet=tiny_unet, scheduler=DDPMHubScheduler(num_train_timesteps=50))
    message = "^the ddpm-hub plugin 'raising': its sampler 'boom' fails building it from a ddpm-hub scheduler config"
    with pytest.raises(
        PluginError, match=message + r" \(T=100\) and taking one step: RuntimeError: no luck$"
    ):
        pipe(batch_size=1, sampler="boom", num_inference_steps=5, output_type="pt")
    with pytest.raises(PluginError, match=message):  # every use, not only the first
        make_sampler("boom", pipe.scheduler)
    assert "problems" not in {p["name"]: p for p in plugins.plugin_info()}.get("spy", {})
    make_sampler("spy", pipe.scheduler)
    assert seen["config"]["_class_name"] == "DDPMHubScheduler" and seen["config"]["num_train_timesteps"] == 50
    assert seen["betas"].dtype == torch.float64 and seen["betas"].shape == (50,)
    assert {"_use_default_values", "_diffusers_version"} & set(seen["config"])  # why factories drop "_" keys


def test_a_function_named_like_a_hook_without_hookimpl_is_a_warning(register_plugin):
    class Undecorated:
        def register_schedules(self, register):  # no @hookimpl
            register("never", good_schedule)

        def register_sampler(self, register):  # misspelled and undecorated
            pass

        def register_to_config(self):  # not hook-like: not reported
            pass

    register_plugin(Undecorated(), "undecorated")
    info = {p["name"]: p for p in plugins.plugin_info()}["undecorated"]
    assert info["hooks"] == [] and "error" not in info
    assert info["warnings"] == [
        "register_sampler() looks like the hook register_samplers but is not decorated with @ddpm_hub.hookimpl, "
        "so it is never called",
        "register_schedules() looks like the hook register_schedules but is not decorated with @ddpm_hub.hookimpl, "
        "so it is never called",
    ]


def test_check_backbone_runs_a_forward_and_names_the_plugin(register_plugin):
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("tensor-only", TensorOnly)

    register_plugin(Plugin(), "tensor-plugin")
    with pytest.raises(
        PluginError,
        match=r"^the ddpm-hub plugin 'tensor-plugin': its backbone 'tensor-only' breaks the backbone contract: "
        r"forward on a \(2, 1, 8, 8\) sample with timestep \[0, 49\] failed: TypeError: TensorOnly returned "
        "Tensor; a backbone must return an object with a .sample tensor",
    ):
        plugins.check_backbone(TensorOnly(), 50)
    (problem,) = {p["name"]: p for p in plugins.plugin_info()}["tensor-plugin"]["problems"]
    assert "'tensor-only' breaks the backbone contract" in problem
    from ddpm_hub_dit import DiT

    plugins.check_backbone(
        DiT(sample_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2), 50
    )


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


# --- DDPM_HUB_LOAD_PLUGINS covers backbones, `model` follows the backbone, CLI text from the registry ---------


def test_the_allowlist_covers_a_checkpoints_backbone(tmp_path):
    """A DiT folder with only the schedules plugin allowed: the DiT module is importable, but not loaded."""
    from ddpm_hub_dit import DiT

    folder = tmp_path / "dit-pipeline"
    dit = DiT(sample_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2)
    DDPMHubPipeline(unet=dit, scheduler=DDPMHubScheduler(num_train_timesteps=50)).save_pretrained(folder)
    script = f"import ddpm_hub; ddpm_hub.load_pipeline({str(folder)!r})"
    result = run(["-c", script], {"DDPM_HUB_LOAD_PLUGINS": "schedules"}, check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ddpm_hub.plugins.MissingPluginError: this checkpoint's unet (ddpm_hub_dit")
    assert "'ddpm-hub-dit' (saved with version 0.1.0), which is installed but not loaded because " in last
    assert "DDPM_HUB_LOAD_PLUGINS='schedules' leaves it out: add ddpm-hub-dit to it" in last
    assert (
        run(["-c", script], {"DDPM_HUB_LOAD_PLUGINS": "schedules,dit"}).returncode == 0
    )  # by entry-point name


@pytest.mark.parametrize(
    "argv, model",
    [
        (["--backbone", "dit"], {}),  # the UNet's defaults do not carry over
        (["--backbone", "dit", "--model.patch_size", "4"], {"patch_size": 4}),
        (["--model.patch_size", "4", "--backbone", "dit"], {"patch_size": 4}),  # order does not matter
        (["--backbone", "dit", "--model", "{depth: 2}"], {"depth": 2}),
        (["--config", "configs/mnist.yaml", "--backbone", "dit"], {}),  # nor the file's model for the UNet
        (["--backbone", "unet", "--model.base_channels", "8"], {**MNIST_MODEL, "base_channels": 8}),
    ],
)
def test_changing_the_backbone_starts_model_from_its_own_defaults(argv, model, monkeypatch):
    from ddpm_hub.config import config_from_argv

    monkeypatch.chdir(ROOT)
    assert config_from_argv(argv).model == model


def test_unknown_model_keys_say_model_is_replaced_as_a_whole_and_how(tmp_path):
    from ddpm_hub.config import ConfigError, config_from_argv
    from ddpm_hub.train import build_model

    config = config_from_argv(["--backbone", "dit", "--model.base_channels", "16"])
    with pytest.raises(ConfigError) as info:
        build_model(config, 1, 28)
    message = str(info.value)
    assert message.startswith("unknown model key(s) ['base_channels'] for DiT; allowed: ")
    assert (
        "`model` holds the constructor arguments of backbone 'dit' (DiT) and is replaced as a whole"
        in message
    )
    assert "--model '{patch_size: 2, hidden_size: 192}' replaces the mapping" in message


def test_cli_sampler_choices_and_help_come_from_the_registry(register_plugin, capsys, monkeypatch):
    from ddpm_hub.cli import main
    from ddpm_hub.samplers import ddim

    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at hyphens otherwise

    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("my-sampler", ddim, default_steps=10)

    register_plugin(Plugin(), "my-plugin")
    registered = ", ".join(sorted(plugins.get_samplers()))
    assert "my-sampler" in registered
    for command in ("sample", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"a registered sampler: {registered} (default: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["sample", "some/model", "--sampler", "nope"])
    assert info.value.code == 2
    assert (
        f"argument --sampler: unknown sampler 'nope'; registered samplers: {registered}."
        in capsys.readouterr().err
    )


def test_parameter_counts_read_well_for_small_and_large_models():
    from ddpm_hub.train import format_count

    assert [format_count(n) for n in (812, 12_345, 690_377, 4_200_000, 35_746_307)] == [
        "812",
        "12.3k",
        "0.69M",
        "4.20M",
        "35.7M",
    ]
