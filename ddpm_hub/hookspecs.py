"""The plugin hooks of ddpm-hub.

Each hook receives a ``register`` callback and calls it once per thing it provides. The built-in
schedule, samplers and backbone are registered through these same hooks (see ``ddpm_hub.schedules``,
``ddpm_hub.samplers`` and ``ddpm_hub.models.unet``). CONTRIBUTING.md documents every hook with a
runnable example; ``tests/test_plugins.py`` fails when one is missing there.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ddpm_hub")
hookimpl = pluggy.HookimplMarker("ddpm_hub")


@hookspec
def register_schedules(register):
    """Register noise schedules.

    Called once, when the registries are first used. Call ``register(name, fn)`` for each schedule,
    where ``fn(num_train_timesteps: int, **kwargs) -> torch.Tensor`` returns the betas as a float64
    tensor of shape ``(num_train_timesteps,)`` with every value in (0, 1). ``kwargs`` are the
    scheduler config's ``beta_start`` and ``beta_end`` (``None`` when unset); a schedule that does not
    use them must accept and ignore them. The name is what ``beta_schedule`` in a scheduler config or
    a training config refers to. The return value of the hook is ignored.
    """


@hookspec
def register_samplers(register):
    """Register samplers (the scheduler used at generation time).

    Called once, when the registries are first used. Call ``register(name, factory)`` for each
    sampler, where ``factory(config: dict, betas: torch.Tensor) -> SchedulerMixin`` builds a diffusers
    compatible scheduler from the training scheduler's config and its float64 betas. Optional keywords:
    ``register(name, factory, default_steps=20, min_steps=4)``: the steps used when none are asked for
    (``None``, the default: all T steps) and the fewest steps that give a usable image; the CLI, the
    pipeline and the Space refuse fewer than ``min_steps`` or more than T. The name is what
    ``--sampler`` on the command line, the Space and ``ddpm_hub.make_sampler`` accept. The return
    value of the hook is ignored.
    """


@hookspec
def register_backbones(register):
    """Register denoising backbones.

    Called once, when the registries are first used. Call ``register(name, cls)`` for each backbone,
    where ``cls`` is a ``diffusers.ModelMixin`` + ``ConfigMixin`` class whose ``forward(sample,
    timestep, return_dict=True)`` returns an object with ``.sample`` of the input's shape (with
    ``out_channels`` channels), and whose config has ``sample_size``, ``in_channels`` and
    ``out_channels``. A saved pipeline folder names ``cls`` by its module (``cls.__module__``) and class
    name, so define it in an importable module of the plugin's package (and export it at the top level).
    The name is what ``backbone`` in a training config refers to. The return value of the hook is ignored.
    """
