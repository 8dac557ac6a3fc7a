"""The plugin manager and the registries of schedules, samplers and backbones.

Modelled on ``llm`` and ``datasette``: one ``pluggy.PluginManager("ddpm_hub")``; third-party plugins are
loaded from the ``ddpm_hub`` entry-point group; the built-ins register through the same hooks.
``DDPM_HUB_LOAD_PLUGINS`` (a comma-separated list of distribution or entry-point names; the empty
string loads none) limits which installed plugins load.

A broken plugin never breaks the others. Registration checks each plugin against the contracts that can be
checked without running a model (see ``_check_schedule``, ``_check_sampler``, ``_check_backbone``); a plugin
that fails to import, implements a hook ddpm-hub does not define, or registers something that breaks a
contract is *disabled* (quarantined): it registers nothing, one :class:`PluginWarning` names its
distribution and the reason, ``ddpm-hub plugins`` lists it with its ``error``, and only a model that needs it
fails (:class:`PluginError`, or ``MissingPluginError`` for a saved pipeline). The first use of a plugin's
schedule or sampler runs it once on a small case (a few T for a schedule; building it from a small ddpm-hub
config and taking one step for a sampler), and training runs one forward of a plugin's backbone
(:func:`check_backbone`) before it creates the run folder; a failure names the plugin, its distribution and
the rule it broke.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from . import hookspecs

__all__ = [
    "Entry",
    "MissingPluginError",
    "PluginError",
    "PluginWarning",
    "pm",
    "get_schedules",
    "get_samplers",
    "get_backbones",
    "get_schedule",
    "get_sampler",
    "get_backbone",
    "provider",
    "reset_registries",
    "plugin_info",
    "load_plugins",
    "allowed_plugins",
    "distribution_of",
    "set_smoke_check",
    "smoke_check",
    "check_backbone",
    "unavailable_reason",
    "one_line_warnings",
]

ENTRY_POINT_GROUP = "ddpm_hub"
#: the built-in plugins (``ddpm_hub.schedules``, ``ddpm_hub.samplers``, ``ddpm_hub.models.unet``), registered
#: through the same hooks as installed ones. ``ddpm_hub/__init__.py`` hands them over
#: (:func:`register_builtins`): they use this module (the scheduler looks its schedule up here), so this
#: module imports none of them, by name or by string.
BUILTIN_PLUGINS: list[ModuleType] = []
KINDS = ("schedules", "samplers", "backbones")
HOOKS = tuple(f"register_{kind}" for kind in KINDS)
CORE_DISTRIBUTION = "ddpm-hub"


@dataclass(frozen=True)
class Entry:
    """One registered thing and who provided it."""

    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str
    #: samplers only: the steps used when none are asked for (None: all T) and the fewest that give a
    #: usable image; the CLI, the pipeline and the Space bound ``num_inference_steps`` by these
    default_steps: int | None = None
    min_steps: int = 1

    @property
    def builtin(self) -> bool:
        return self.plugin in _builtin_names()

    def who(self) -> str:
        """``the ddpm-hub plugin 'dit' (distribution 'ddpm-hub-dit')``: whom a broken contract is blamed on."""
        return _who(self.plugin, self.distribution)


@dataclass
class Disabled:
    """A plugin that failed to import or to register: it provides nothing in this process."""

    plugin: str
    distribution: str
    version: str
    reason: str
    #: what it registered before failing, by kind: a lookup of one of these names says why it is missing
    names: dict[str, list[str]] = field(default_factory=dict)


class MissingPluginError(ImportError):
    """A checkpoint or config needs a schedule, sampler or backbone whose plugin is not installed or not loaded."""


class PluginError(ValueError):
    """A plugin broke its contract, or a name it provides cannot be used; the message names the plugin, its
    distribution and the rule."""


class PluginWarning(UserWarning):
    """A plugin was disabled (failed to import or register) or looks wrong (an undecorated hook)."""


pm = pluggy.PluginManager("ddpm_hub")
pm.add_hookspecs(hookspecs)

#: plugin name -> (distribution name, version) for every plugin registered by this module
_plugin_dists: dict[str, tuple[str, str]] = {}
#: plugins disabled while loading (import error, invalid hooks); entry points are not retried in a process
_disabled_at_load: dict[str, Disabled] = {}
_registries: dict[str, dict[str, Entry]] | None = None
#: plugins disabled while registering, names that two plugins register (kind -> name -> entries)
_disabled_at_register: dict[str, Disabled] = {}
_conflicts: dict[str, dict[str, list[Entry]]] = {}
#: (kind, name) -> None (the smoke check passed) or the PluginError it raised
_smoke: dict[tuple[str, str], PluginError | None] = {}
#: True while the hooks are being called (a hook must not look the registries up)
_collecting = False


def _who(plugin: str, distribution: str) -> str:
    if plugin == distribution:  # registered in-process, not installed
        return f"the ddpm-hub plugin {plugin!r}"
    return f"the ddpm-hub plugin {plugin!r} (distribution {distribution!r})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _core_version() -> str:
    try:
        return importlib.metadata.version(CORE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def distribution_of(obj: Any) -> tuple[str, str] | None:
    """(distribution, version) of the installed distribution that provides ``obj``'s top-level module."""
    top = (getattr(obj, "__module__", None) or getattr(obj, "__name__", None) or "").split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _builtin_names() -> set[str]:
    return {module.__name__ for module in BUILTIN_PLUGINS}


def register_builtins(*modules: ModuleType) -> None:
    """Declare ddpm-hub's built-in plugin modules; ``ddpm_hub/__init__.py`` calls this once."""
    for module in modules:
        if module not in BUILTIN_PLUGINS:
            BUILTIN_PLUGINS.append(module)
    reset_registries()


def _load_default_plugins() -> None:
    for module in BUILTIN_PLUGINS:
        if not pm.is_registered(module):
            pm.register(module, name=module.__name__)
            _plugin_dists[module.__name__] = (CORE_DISTRIBUTION, _core_version())


def _normalize(name: str) -> str:
    """A distribution or entry-point name in canonical form (PEP 503: ``ddpm_hub.DiT`` -> ``ddpm-hub-dit``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_plugins() -> set[str] | None:
    """The normalized names in ``DDPM_HUB_LOAD_PLUGINS`` (None when unset: every installed plugin loads)."""
    allowed = os.environ.get("DDPM_HUB_LOAD_PLUGINS")
    if allowed is None:
        return None
    return {_normalize(n.strip()) for n in allowed.split(",") if n.strip()}


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    """(entry point, distribution name, version) for every installed ``ddpm_hub`` entry point, deduplicated
    (the same distribution found twice on sys.path counts once)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or (ep.name, _normalize(dist_name)) in seen:
                continue
            seen.add((ep.name, _normalize(dist_name)))
            out.append((ep, dist_name, dist.version))
    return out


def _is_allowed(ep_name: str, dist_name: str, names: set[str] | None) -> bool:
    return names is None or _normalize(ep_name) in names or _normalize(dist_name) in names


def _hook_argument_problem(plugin: Any) -> str | None:
    """Why pluggy would reject the plugin's hook functions, in one line (pluggy's own message spans lines)."""
    for attr in HOOKS:
        fn = getattr(plugin, attr, None)
        if fn is None or not hasattr(fn, "ddpm_hub_impl"):
            continue
        try:
            params = [p for p in inspect.signature(fn).parameters if p != "self"]
        except (TypeError, ValueError):
            continue
        if params and params != ["register"]:
            return (
                f"its hook {attr}({', '.join(params)}) must take one argument named `register` (pluggy passes hook "
                "arguments by name)"
            )
    return None


def _disable(store: dict[str, Disabled], plugin: str, reason: str, names: dict[str, list[str]] | None = None):
    dist, version = _plugin_dists.get(plugin, (plugin, "unknown"))
    store[plugin] = Disabled(plugin, dist, version, reason, names or {})
    return store[plugin]


#: disabled plugins not warned about yet
_unwarned: list[Disabled] = []
#: DDPM_HUB_LOAD_PLUGINS names already warned about as unknown (load_plugins runs more than once per command)
_warned_unknown: set[tuple[str, ...]] = set()


def _warn_disabled() -> None:
    """One warning per disabled plugin: its distribution, why, and how to leave it out."""
    if not _unwarned:
        return
    disabled = list(_unwarned)
    _unwarned.clear()
    names = allowed_plugins()
    off = set(_disabled_at_load) | set(_disabled_at_register)
    healthy = sorted(
        ep.name for ep, dist, _ in _entry_points() if ep.name not in off and _is_allowed(ep.name, dist, names)
    )
    for d in disabled:
        fix = f"pip uninstall {d.distribution}" if d.distribution != d.plugin else f"unregister {d.plugin!r}"
        warnings.warn(
            f"{_who(d.plugin, d.distribution)} is disabled: {d.reason}. Everything else works without it; fix or "
            f"remove it ({fix}), or load only the plugins you use: DDPM_HUB_LOAD_PLUGINS={','.join(healthy)!r}",
            PluginWarning,
            stacklevel=4,
        )


def _load_entry_points() -> list[Disabled]:
    names = allowed_plugins()
    found = _entry_points()
    by_name: dict[str, list[str]] = {}
    for ep, dist_name, _ in found:
        by_name.setdefault(ep.name, []).append(dist_name)
    disabled = []
    for ep, dist_name, version in found:
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name) or ep.name in _disabled_at_load:
            continue
        if not _is_allowed(ep.name, dist_name, names):
            continue
        _plugin_dists[ep.name] = (dist_name, version)
        if len(by_name[ep.name]) > 1:
            others = [d for d in by_name[ep.name] if d != dist_name]
            disabled.append(
                _disable(
                    _disabled_at_load,
                    ep.name,
                    f"the distribution(s) {', '.join(map(repr, others))} also provide a plugin named {ep.name!r}; "
                    "uninstall all but one of them",
                )
            )
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            disabled.append(
                _disable(
                    _disabled_at_load,
                    ep.name,
                    f"it failed to import ({_one_line(exc)}); reinstall or upgrade it (pip install -U {dist_name})",
                )
            )
            continue
        problem = _hook_argument_problem(plugin)
        if problem is None:
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                problem = f"pluggy rejects its hooks ({_one_line(exc)})"
        if problem is not None:
            if pm.get_plugin(ep.name) is not None:  # pluggy leaves it half-registered
                pm.unregister(name=ep.name)
            disabled.append(_disable(_disabled_at_load, ep.name, problem))
    unknown = sorted((names or set()) - {_normalize(n) for ep, d, _ in found for n in (ep.name, d)})
    if unknown and tuple(unknown) not in _warned_unknown:
        _warned_unknown.add(tuple(unknown))
        warnings.warn(
            f"DDPM_HUB_LOAD_PLUGINS names {', '.join(unknown)}, which no installed ddpm-hub plugin is called "
            f"(installed: {', '.join(sorted(by_name)) or 'none'})",
            PluginWarning,
            stacklevel=3,
        )
    return disabled


def _disable_unknown_hooks() -> list[Disabled]:
    """Disable (unregister) every third-party plugin that implements a hook ddpm-hub does not define."""
    bad: dict[str, list[str]] = {}
    for hook, caller in vars(pm.hook).items():
        if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    bad.setdefault(impl.plugin_name, []).append(hook)
    disabled = []
    for plugin, hooks in sorted(bad.items()):
        if plugin in _builtin_names():
            raise pluggy.PluginValidationError(
                pm.get_plugin(plugin), f"ddpm-hub's {plugin} implements {hooks}"
            )
        pm.unregister(name=plugin)
        disabled.append(
            _disable(
                _disabled_at_load,
                plugin,
                f"it implements {', '.join(map(repr, sorted(hooks)))}, which is not a ddpm-hub hook (misspelled?); "
                f"ddpm-hub's hooks are {', '.join(HOOKS)} (see CONTRIBUTING.md)",
            )
        )
    return disabled


def load_plugins() -> pluggy.PluginManager:
    """Register the built-ins and the installed plugins (once), and check that every hook is known.

    ``DDPM_HUB_LOAD_PLUGINS``, when set, is a comma-separated list of entry-point or distribution names
    (``ddpm-hub-dit`` or ``dit``; ``-``/``_`` and case do not matter): only those installed plugins load,
    and the empty string loads none. The built-ins always load. A plugin that fails to import or implements
    a hook ddpm-hub does not define (a misspelled ``register_schedule``) is disabled with a
    :class:`PluginWarning` naming it and the reason; the others load.
    """
    _load_default_plugins()
    _unwarned.extend(_load_entry_points())
    _unwarned.extend(_disable_unknown_hooks())
    if not _collecting:  # the registration checks can disable more: warn once everything is known
        _registry("schedules")
        _warn_disabled()
    return pm


# ------------------------------------------------------------------------------------------ registration


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
        raise PluginError(
            f"it registered the name {name!r}; a name must be a non-empty string without spaces"
        )


def _binds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): cannot tell, accept
        return True
    return True


def _check_schedule(name: str, fn: Any) -> None:
    if not callable(fn):
        raise PluginError(f"it registered the schedule {name!r} as {fn!r}, which is not callable")
    if not _binds(fn, 16, beta_start=None, beta_end=None):
        raise PluginError(
            f"it registered the schedule {name!r} as {getattr(fn, '__name__', fn)!r}{_signature(fn)}, which cannot be "
            "called as fn(num_train_timesteps, beta_start=None, beta_end=None); a schedule that does not use the "
            "range must still accept and ignore these keyword arguments (see CONTRIBUTING.md)"
        )


def _check_sampler(name: str, factory: Any, default_steps: Any, min_steps: Any) -> dict[str, Any]:
    if not callable(factory):
        raise PluginError(f"it registered the sampler {name!r} as {factory!r}, which is not callable")
    if not _binds(factory, {}, None):
        raise PluginError(
            f"it registered the sampler {name!r} as {getattr(factory, '__name__', factory)!r}{_signature(factory)}, "
            "which cannot be called as factory(config, betas) (see CONTRIBUTING.md)"
        )

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(min_steps) or not (default_steps is None or positive_int(default_steps)):
        raise PluginError(
            f"it registered the sampler {name!r} with default_steps={default_steps!r}, min_steps={min_steps!r}; both "
            "must be positive integers (default_steps=None: all T steps)"
        )
    if default_steps is not None and default_steps < min_steps:
        raise PluginError(
            f"it registered the sampler {name!r} with default_steps={default_steps} below its min_steps={min_steps}"
        )
    return {"default_steps": default_steps, "min_steps": min_steps}


def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return ""


def _registers_its_config(init: Any) -> bool:
    """Whether ``init`` (a class's ``__init__``) is wrapped by diffusers' ``@register_to_config``."""
    wrapped = register_to_config(lambda self: None).__code__
    while init is not None:
        if getattr(init, "__code__", None) is wrapped:
            return True
        init = getattr(init, "__wrapped__", None)
    return False


def _check_backbone(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin) and issubclass(cls, ConfigMixin)):
        raise PluginError(
            f"it registered the backbone {name!r} as {cls!r}, which is not a diffusers ModelMixin + ConfigMixin class "
            "(see the backbone contract in CONTRIBUTING.md)"
        )
    if not _registers_its_config(cls.__init__):
        raise PluginError(
            f"it registered the backbone {name!r} ({cls.__name__}) whose __init__ is not decorated with diffusers' "
            "@register_to_config: without it the model has no config to save, load or copy"
        )
    params = inspect.signature(cls.__init__).parameters
    missing = [key for key in ("sample_size", "in_channels", "out_channels") if key not in params]
    if missing:
        raise PluginError(
            f"it registered the backbone {name!r} ({cls.__name__}) whose config lacks {missing}; every backbone's "
            "__init__ takes sample_size, in_channels and out_channels (see CONTRIBUTING.md)"
        )
    if not _binds(cls.forward, None, "sample", "timestep", return_dict=True):
        raise PluginError(
            f"it registered the backbone {name!r} ({cls.__name__}) whose forward{_signature(cls.forward)} cannot be "
            "called as forward(sample, timestep, return_dict=True) (see CONTRIBUTING.md)"
        )


def _collect() -> dict[str, dict[str, Entry]]:
    """Call every plugin's hooks; a third-party plugin whose hook fails or registers something that breaks a
    contract is disabled as a whole (whatever it registered is dropped)."""
    load_plugins()
    registries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    _disabled_at_register.clear()
    _conflicts.clear()
    _smoke.clear()
    disabled = []
    plugins_in_order: list[str] = []
    for kind in KINDS:  # registration order: built-ins first, then the others as pluggy lists them
        for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
            if impl.plugin_name not in plugins_in_order:
                plugins_in_order.append(impl.plugin_name)
    plugins_in_order.sort(key=lambda p: p not in _builtin_names())
    for plugin_name in plugins_in_order:
        dist, version = _plugin_dists.get(plugin_name, (plugin_name, "unknown"))
        staged: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        attempted: dict[str, list[str]] = {kind: [] for kind in KINDS}
        try:
            for kind in KINDS:
                for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
                    if impl.plugin_name == plugin_name:
                        impl.function(
                            register=_registrar(
                                kind, plugin_name, dist, version, staged, attempted, registries
                            )
                        )
        except Exception as exc:
            if plugin_name in _builtin_names():
                raise
            reason = (
                str(exc) if isinstance(exc, PluginError) else f"its register hook raised {_one_line(exc)}"
            )
            names = {kind: sorted(set(attempted[kind])) for kind in KINDS if attempted[kind]}
            disabled.append(_disable(_disabled_at_register, plugin_name, reason, names))
            continue
        for kind in KINDS:
            for name, entry in staged[kind].items():
                if name in _conflicts.get(kind, {}):
                    _conflicts[kind][name].append(entry)
                elif name in registries[kind]:  # two third-party plugins: neither gets the name
                    _conflicts.setdefault(kind, {})[name] = [registries[kind].pop(name), entry]
                else:
                    registries[kind][name] = entry
    _unwarned.extend(disabled)
    _warn_disabled()
    return registries


def _registrar(kind, plugin_name, dist, version, staged, attempted, registries):
    """The ``register`` callback handed to one plugin's ``register_<kind>`` hook."""

    def register(name: str, obj: Any, *, default_steps: int | None = None, min_steps: int = 1) -> None:
        _check_name(name)
        attempted[kind].append(name)
        if name in staged[kind]:
            raise PluginError(f"it registered the {kind[:-1]} {name!r} twice")
        builtin = registries[kind].get(name)
        if builtin is not None and builtin.builtin and plugin_name not in _builtin_names():
            raise PluginError(
                f"it registered the {kind[:-1]} {name!r}, a name ddpm-hub itself provides; pick another name for it"
            )
        steps = {}
        if kind == "schedules":
            _check_schedule(name, obj)
        elif kind == "backbones":
            _check_backbone(name, obj)
        if kind == "samplers":
            steps = _check_sampler(name, obj, default_steps, min_steps)
        elif default_steps is not None or min_steps != 1:
            raise PluginError(
                f"it passed default_steps/min_steps for the {kind[:-1]} {name!r}; only samplers take them"
            )
        staged[kind][name] = Entry(name, obj, plugin_name, dist, version, **steps)

    return register


def _registry(kind: str) -> dict[str, Entry]:
    global _registries, _collecting
    if _registries is None:
        if _collecting:
            raise PluginError(
                "a register hook looked up ddpm-hub's registries while they are being built; import what it needs "
                "directly instead (for example `from ddpm_hub.samplers import ddim`)"
            )
        _collecting = True
        try:
            _registries = _collect()
        finally:
            _collecting = False
    return _registries[kind]


def reset_registries() -> None:
    """Forget the collected registries; the next lookup calls the hooks again (after pm.register/unregister)."""
    global _registries
    _registries = None
    installed = {ep.name for ep, _, _ in _entry_points()}
    for name in [n for n in _disabled_at_load if n not in installed]:  # in-process plugins: forget them
        del _disabled_at_load[name]


def get_schedules() -> dict[str, Entry]:
    return dict(_registry("schedules"))


def get_samplers() -> dict[str, Entry]:
    return dict(_registry("samplers"))


def get_backbones() -> dict[str, Entry]:
    return dict(_registry("backbones"))


def _disabled() -> dict[str, Disabled]:
    _registry("schedules")
    return {**_disabled_at_load, **_disabled_at_register}


def _get(kind: str, name: str) -> Entry:
    registry = _registry(kind)
    if name in registry:
        return registry[name]
    what = f"{kind[:-1]} {name!r}"
    clash = _conflicts.get(kind, {}).get(name)
    if clash:
        raise PluginError(
            f"the {what} is registered by {' and by '.join(e.who() for e in clash)}, so neither is used; uninstall "
            "one of them or leave one out with DDPM_HUB_LOAD_PLUGINS"
        )
    disabled = _disabled()
    for d in disabled.values():
        if name in d.names.get(kind, []):
            raise PluginError(
                f"the {what} comes from {_who(d.plugin, d.distribution)}, which is disabled: {d.reason}"
            )
    known = ", ".join(sorted(registry)) or "none"
    restricted = os.environ.get("DDPM_HUB_LOAD_PLUGINS")
    hint = (
        f" DDPM_HUB_LOAD_PLUGINS={restricted!r} limits which installed plugins load."
        if restricted is not None
        else ""
    )
    if disabled:
        hint += " Disabled plugins, which may provide it: " + "; ".join(
            f"{_who(d.plugin, d.distribution)}: {d.reason}" for d in disabled.values()
        )
    raise ValueError(
        f"unknown {what}; registered {kind}: {known}. A {kind[:-1]} from a plugin needs that plugin installed (see "
        f"`ddpm-hub plugins --all`).{hint}"
    )


def get_schedule(name: str) -> Callable[..., Any]:
    """The schedule ``name``; a plugin's is first run on a few small T (:class:`PluginError` if it breaks)."""
    entry = _get("schedules", name)
    _smoke_check("schedules", entry)
    return entry.obj


def get_sampler(name: str) -> Callable[..., Any]:
    """The sampler factory ``name``; a plugin's is first built from a small ddpm-hub config and takes one step."""
    entry = _get("samplers", name)
    _smoke_check("samplers", entry)
    return entry.obj


def get_backbone(name: str) -> type:
    return _get("backbones", name).obj


def provider(kind: str, name: str) -> Entry:
    """The registry entry (with distribution and version) for ``name`` in ``kind``."""
    return _get(kind, name)


def backbone_name_of(cls: type) -> Entry | None:
    """The registry entry of a backbone class, or None if the class is not registered."""
    for entry in _registry("backbones").values():
        if entry.obj is cls:
            return entry
    return None


# -------------------------------------------------------------------------------------- smoke checks


#: the T a plugin's schedule is first run with: the smallest possible and a small one
SMOKE_TIMESTEPS = (1, 10)


#: kind -> the first-use check of a plugin's entry, for the kinds whose check needs a module that uses this one
#: (``ddpm_hub.samplers`` sets ``samplers``: building a sampler needs the scheduler)
_smoke_checks: dict[str, Callable[[Entry], None]] = {}


def set_smoke_check(kind: str, check: Callable[[Entry], None]) -> None:
    """Install ``check(entry)``, run once on the first use of each plugin entry of ``kind``; it raises
    :class:`PluginError` naming the plugin (see ``Entry.who``) when the entry breaks its contract."""
    _smoke_checks[kind] = check
    _smoke.clear()


def smoke_check(kind: str, entry: Entry) -> None:
    """Run (once) the first-use check of ``entry``; raise its :class:`PluginError` on every use if it failed."""
    _smoke_check(kind, entry)


def _smoke_check(kind: str, entry: Entry) -> None:
    if entry.builtin:
        return
    key = (kind, entry.name)
    if key not in _smoke:
        try:
            check = {"schedules": _smoke_schedule, **_smoke_checks}.get(kind)
            if check is not None:
                check(entry)
            _smoke[key] = None
        except PluginError as exc:
            _smoke[key] = exc
    if _smoke[key] is not None:
        raise _smoke[key]


def _smoke_schedule(entry: Entry) -> None:
    for T in SMOKE_TIMESTEPS:
        try:
            betas = entry.obj(T, beta_start=None, beta_end=None)
        except ValueError:
            continue  # a schedule may refuse a T it cannot serve, with a ValueError saying which T it can
        except Exception as exc:
            raise PluginError(
                f"{entry.who()}: its schedule {entry.name!r} raised {_one_line(exc)} for num_train_timesteps={T}; a "
                "schedule must give valid betas for every T >= 1 or raise a ValueError saying which T it supports"
            ) from exc
        problem = _betas_problem(betas, T)
        if problem:
            raise PluginError(
                f"{entry.who()}: its schedule {entry.name!r} breaks the schedule contract at num_train_timesteps={T} "
                f"(beta_start and beta_end unset): {problem}"
            )


def _betas_problem(betas: Any, T: int) -> str | None:
    if not isinstance(betas, torch.Tensor):
        return f"it returned {type(betas).__name__}, not a float64 tensor"
    if tuple(betas.shape) != (T,):
        return f"it returned betas of shape {tuple(betas.shape)}, not ({T},)"
    if not betas.is_floating_point():
        return f"it returned {betas.dtype} betas, not float64"
    bad = betas[~((betas > 0) & (betas < 1))]
    if bad.numel():
        return f"betas must lie strictly inside (0, 1), got {bad[:3].tolist()}"
    return None


def check_backbone(model: Any, num_train_timesteps: int) -> None:
    """One forward of ``model`` on a batch of 2 at its own size, with a ``(B,)`` timestep (as training calls
    it) and a scalar one (as samplers do); raise :class:`PluginError` (naming the plugin) or ``ValueError``
    (a built-in backbone: the config) when it breaks the backbone contract. Training calls it before it
    creates the run folder."""
    entry = backbone_name_of(type(model))
    size = model.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    sample = torch.randn(2, model.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    T = int(num_train_timesteps)
    try:
        with torch.no_grad():
            for t in (torch.tensor([0, T - 1]), torch.tensor(T - 1)):
                _check_output(model, model(sample, t), sample)
    except Exception as exc:
        what = (
            f"forward on a {tuple(sample.shape)} sample with timestep {t.tolist()} failed: {_one_line(exc)}"
        )
        if entry is None or entry.builtin:
            name = entry.name if entry else type(model).__name__
            raise ValueError(f"the backbone {name!r} with this config does not run: {what}") from exc
        raise PluginError(
            f"{entry.who()}: its backbone {entry.name!r} breaks the backbone contract: {what}"
        ) from exc


def _check_output(model: Any, output: Any, sample: torch.Tensor) -> None:
    result = getattr(output, "sample", None)
    if not isinstance(result, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__} returned {type(output).__name__}; a backbone must return an object with a .sample "
            "tensor (a diffusers BaseOutput)"
        )
    B, _, H, W = sample.shape
    expected = (B, model.config.out_channels or model.config.in_channels, H, W)
    if tuple(result.shape) != expected:
        raise ValueError(f".sample has shape {tuple(result.shape)}, expected {expected}")


def _smoke_backbone(entry: Entry) -> None:
    """``ddpm-hub plugins``' check of a backbone: build it with its defaults (1 channel) and run it."""
    cls = entry.obj
    params = inspect.signature(cls.__init__).parameters
    size = params["sample_size"].default
    size = size if isinstance(size, int) and 0 < size <= 64 else 32
    try:
        model = cls(sample_size=size, in_channels=1, out_channels=1)
    except Exception as exc:
        raise PluginError(
            f"{entry.who()}: its backbone {entry.name!r} cannot be built with its defaults and sample_size={size}, "
            f"in_channels=1, out_channels=1: {_one_line(exc)}"
        ) from exc
    check_backbone(model, 16)


def one_line_warnings() -> None:
    """Show ddpm-hub's plugin warnings as ``warning: ...`` lines on stderr (no source line), for the commands."""
    show = warnings.showwarning
    if getattr(show, "ddpm_hub_one_line", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.ddpm_hub_one_line = True
    warnings.showwarning = showwarning


# ---------------------------------------------------------------------------------- what is installed


def unavailable_reason(distribution: str) -> str | None:
    """Why the installed ``distribution``'s ddpm-hub plugin provides nothing here (``not loaded because
    DDPM_HUB_LOAD_PLUGINS=... leaves it out`` or ``disabled: ...``), or None (loaded, or not a plugin)."""
    load_plugins()
    eps = [(ep, dist) for ep, dist, _ in _entry_points() if _normalize(dist) == _normalize(distribution)]
    disabled = _disabled()
    if not eps or any(pm.get_plugin(ep.name) is not None and ep.name not in disabled for ep, _ in eps):
        return None
    for ep, _ in eps:
        if ep.name in disabled:
            return f"disabled: {disabled[ep.name].reason}"
    if allowed_plugins() is not None:
        return (
            f"not loaded because DDPM_HUB_LOAD_PLUGINS={os.environ['DDPM_HUB_LOAD_PLUGINS']!r} leaves it out: add "
            f"{distribution} to it"
        )
    return None


def _undecorated_hooks(plugin: Any) -> list[str]:
    """Functions of ``plugin`` named like a hook but without ``@hookimpl`` (pluggy ignores them silently)."""
    found = []
    for attr in dir(plugin):
        if attr.startswith("_") or not attr.lower().startswith("register"):
            continue
        value = getattr(plugin, attr, None)
        if not callable(value) or isinstance(value, type) or hasattr(value, "ddpm_hub_impl"):
            continue
        close = difflib.get_close_matches(attr, HOOKS, n=1, cutoff=0.85)
        if close:
            found.append(
                f"{attr}() looks like the hook {close[0]} but is not decorated with @ddpm_hub.hookimpl, so it is never "
                "called"
            )
    return found


def plugin_info(include_builtins: bool = False, check: bool = True) -> list[dict[str, Any]]:
    """What ``ddpm-hub plugins`` prints: each plugin's name, distribution, version, hooks and registered names.

    A disabled plugin has ``error`` (why); ``problems`` lists the names whose smoke check fails (``check``:
    run a plugin's schedules at small T, build its samplers, and build and run its backbones with their
    defaults); ``warnings`` lists undecorated hook functions and names another plugin registers too.
    """
    load_plugins()
    registries = {kind: _registry(kind) for kind in KINDS}
    out = []
    for name, plugin in pm.list_name_plugin():
        if name in _builtin_names() and not include_builtins:
            continue
        dist, version = _plugin_dists.get(name, (name, "unknown"))
        record: dict[str, Any] = {
            "name": name,
            "distribution": dist,
            "version": version,
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        registered = {
            kind: sorted(e.name for e in registries[kind].values() if e.plugin == name) for kind in KINDS
        }
        record["registered"] = {k: v for k, v in registered.items() if v}
        disabled = _disabled_at_register.get(name)
        if disabled is not None:
            record["error"] = disabled.reason
        problems = []
        if check and name not in _builtin_names():
            for kind in KINDS:
                for entry_name in registered[kind]:
                    entry = registries[kind][entry_name]
                    try:
                        _smoke_backbone(entry) if kind == "backbones" else _smoke_check(kind, entry)
                    except PluginError as exc:
                        problems.append(str(exc))
        if problems:
            record["problems"] = problems
        warns = _undecorated_hooks(plugin)
        for kind, clashes in _conflicts.items():
            for clash_name, entries in clashes.items():
                if any(e.plugin == name for e in entries):
                    others = ", ".join(e.who() for e in entries if e.plugin != name)
                    warns.append(
                        f"the {kind[:-1]} {clash_name!r} is also registered by {others}: neither is used"
                    )
        if warns:
            record["warnings"] = warns
        out.append(record)
    for d in _disabled_at_load.values():
        if d.plugin in _builtin_names() and not include_builtins:
            continue
        out.append(
            {
                "name": d.plugin,
                "distribution": d.distribution,
                "version": d.version,
                "hooks": [],
                "registered": {},
                "error": d.reason,
            }
        )
    return sorted(out, key=lambda p: p["name"])
