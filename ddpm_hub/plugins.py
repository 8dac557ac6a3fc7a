"""The plugin manager and the registries of schedules, samplers and backbones.

Modelled on ``llm`` and ``datasette``: one ``pluggy.PluginManager("ddpm_hub")``; third-party plugins are
loaded from the ``ddpm_hub`` entry-point group; the built-ins register through the same hooks.
``DDPM_HUB_LOAD_PLUGINS`` (a comma-separated list of distribution or entry-point names; the empty
string loads none) limits which installed plugins load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy
from diffusers import ConfigMixin, ModelMixin

from . import hookspecs

__all__ = [
    "Entry",
    "MissingPluginError",
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
]

ENTRY_POINT_GROUP = "ddpm_hub"
#: the built-in plugins (``ddpm_hub.schedules``, ``ddpm_hub.samplers``, ``ddpm_hub.models.unet``), registered
#: through the same hooks as installed ones. ``ddpm_hub/__init__.py`` hands them over
#: (:func:`register_builtins`): they use this module (the scheduler looks its schedule up here), so this
#: module imports none of them, by name or by string.
BUILTIN_PLUGINS: list[ModuleType] = []
KINDS = ("schedules", "samplers", "backbones")


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


pm = pluggy.PluginManager("ddpm_hub")
pm.add_hookspecs(hookspecs)

#: plugin name -> (distribution name, version) for every plugin registered by this module
_plugin_dists: dict[str, tuple[str, str]] = {}
_registries: dict[str, dict[str, Entry]] | None = None


def _core_version() -> str:
    try:
        return importlib.metadata.version("ddpm-hub")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def distribution_of(obj: Any) -> tuple[str, str] | None:
    """(distribution, version) of the installed distribution that provides ``obj``'s top-level module."""
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


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
            _plugin_dists[module.__name__] = ("ddpm-hub", _core_version())


class MissingPluginError(ImportError):
    """A checkpoint or config needs a schedule, sampler or backbone whose plugin is not installed or not loaded."""


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
    """(entry point, distribution name, version) for every installed ``ddpm_hub`` entry point, deduplicated."""
    seen: dict[str, str] = {}
    out = []
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            if ep.name in seen:
                if _normalize(seen[ep.name]) != _normalize(dist_name):
                    raise RuntimeError(
                        f"two installed distributions provide a ddpm-hub plugin named {ep.name!r}: {seen[ep.name]!r} "
                        f"and {dist_name!r}; uninstall one of them"
                    )
                continue  # the same distribution found twice on sys.path
            seen[ep.name] = dist_name
            out.append((ep, dist_name, dist.version))
    return out


def _load_entry_points() -> None:
    names = allowed_plugins()
    available: set[str] = set()
    for ep, dist_name, version in _entry_points():
        available |= {_normalize(ep.name), _normalize(dist_name)}
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        if names is not None and _normalize(ep.name) not in names and _normalize(dist_name) not in names:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise RuntimeError(
                f"the ddpm-hub plugin {ep.name!r} from distribution {dist_name!r} failed to import: {exc}. "
                f"Reinstall or upgrade it (pip install -U {dist_name}), uninstall it, or leave it out with "
                "DDPM_HUB_LOAD_PLUGINS"
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:
            if pm.get_plugin(ep.name) is not None:  # pluggy leaves it half-registered
                pm.unregister(name=ep.name)
            raise pluggy.PluginValidationError(
                exc.plugin,
                f"the ddpm-hub plugin {ep.name!r} from distribution {dist_name!r} is invalid: {exc}",
            ) from exc
        _plugin_dists[ep.name] = (dist_name, version)
    unknown = sorted((names or set()) - available)
    if unknown:
        warnings.warn(
            f"DDPM_HUB_LOAD_PLUGINS names {', '.join(unknown)}, which no installed ddpm-hub plugin is called "
            f"(installed: {', '.join(sorted(ep.name for ep, _, _ in _entry_points())) or 'none'})",
            stacklevel=3,
        )


def load_plugins() -> pluggy.PluginManager:
    """Register the built-ins and the installed plugins (once), and check that every hook is known.

    ``DDPM_HUB_LOAD_PLUGINS``, when set, is a comma-separated list of entry-point or distribution names
    (``ddpm-hub-dit`` or ``dit``; ``-``/``_`` and case do not matter): only those installed plugins load,
    and the empty string loads none. The built-ins always load. A plugin that implements a hook ddpm-hub does
    not define (a misspelled ``register_schedule``) fails here, naming the plugin and the hook.
    """
    _load_default_plugins()
    _load_entry_points()
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        dist = _plugin_dists.get(name, (None,))[0]
        bad = sorted(
            hook
            for hook, caller in vars(pm.hook).items()
            if isinstance(caller, pluggy.HookCaller)
            and not caller.has_spec()
            and any(impl.plugin is exc.plugin for impl in caller.get_hookimpls())
        )
        known = ", ".join("register_" + k for k in KINDS)
        raise pluggy.PluginValidationError(
            exc.plugin,
            f"the ddpm-hub plugin {name!r}{f' (distribution {dist!r})' if dist else ''} implements "
            f"{', '.join(repr(h) for h in bad)}, which is not a ddpm-hub hook (misspelled?). ddpm-hub's hooks are: "
            f"{known} (see CONTRIBUTING.md)",
        ) from exc
    return pm


def _collect() -> dict[str, dict[str, Entry]]:
    load_plugins()
    registries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            plugin_name = impl.plugin_name
            dist, version = _plugin_dists.get(plugin_name, (plugin_name, "unknown"))

            def register(
                name: str,
                obj: Any,
                *,
                default_steps: int | None = None,
                min_steps: int = 1,
                _kind=kind,
                _plugin=plugin_name,
                _dist=dist,
                _version=version,
            ):
                if not isinstance(name, str) or not name:
                    raise ValueError(
                        f"plugin {_plugin!r} registered a {_kind[:-1]} with an invalid name {name!r}"
                    )
                registry = registries[_kind]
                if name in registry:
                    other = registry[name]
                    raise ValueError(
                        f"two plugins register the {_kind[:-1]} {name!r}: {other.plugin!r} (distribution "
                        f"{other.distribution!r}) and {_plugin!r} (distribution {_dist!r}); uninstall one or "
                        "restrict DDPM_HUB_LOAD_PLUGINS"
                    )
                if _kind == "backbones":
                    _check_backbone_class(name, obj, _plugin)
                steps = {}
                if _kind == "samplers":
                    steps = _check_sampler_steps(name, _plugin, default_steps, min_steps)
                elif default_steps is not None or min_steps != 1:
                    raise ValueError(
                        f"plugin {_plugin!r} passed default_steps/min_steps for the {_kind[:-1]} {name!r}; only "
                        "samplers take them"
                    )
                registry[name] = Entry(name, obj, _plugin, _dist, _version, **steps)

            impl.function(register=register)
    return registries


def _check_backbone_class(name: str, cls: Any, plugin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin) and issubclass(cls, ConfigMixin)):
        raise TypeError(
            f"plugin {plugin!r} registered backbone {name!r} as {cls!r}, which is not a diffusers ModelMixin + "
            "ConfigMixin class; see the backbone contract in CONTRIBUTING.md"
        )
    params = inspect.signature(cls.__init__).parameters
    missing = [key for key in ("sample_size", "in_channels", "out_channels") if key not in params]
    if missing:
        raise TypeError(
            f"plugin {plugin!r} registered backbone {name!r} ({cls.__name__}) whose config lacks {missing}; every "
            "backbone's __init__ takes sample_size, in_channels and out_channels (see CONTRIBUTING.md)"
        )


def _check_sampler_steps(name: str, plugin: str, default_steps: int | None, min_steps: int) -> dict[str, Any]:
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(min_steps) or not (default_steps is None or positive_int(default_steps)):
        raise ValueError(
            f"plugin {plugin!r} registered the sampler {name!r} with default_steps={default_steps!r}, "
            f"min_steps={min_steps!r}; both must be positive integers (default_steps=None: all T steps)"
        )
    if default_steps is not None and default_steps < min_steps:
        raise ValueError(
            f"plugin {plugin!r} registered the sampler {name!r} with default_steps={default_steps} below its "
            f"min_steps={min_steps}"
        )
    return {"default_steps": default_steps, "min_steps": min_steps}


def _registry(kind: str) -> dict[str, Entry]:
    global _registries
    if _registries is None:
        _registries = _collect()
    return _registries[kind]


def reset_registries() -> None:
    """Forget the collected registries; the next lookup calls the hooks again (after pm.register/unregister)."""
    global _registries
    _registries = None


def get_schedules() -> dict[str, Entry]:
    return dict(_registry("schedules"))


def get_samplers() -> dict[str, Entry]:
    return dict(_registry("samplers"))


def get_backbones() -> dict[str, Entry]:
    return dict(_registry("backbones"))


def _get(kind: str, name: str) -> Entry:
    registry = _registry(kind)
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        restricted = os.environ.get("DDPM_HUB_LOAD_PLUGINS")
        hint = (
            f" DDPM_HUB_LOAD_PLUGINS={restricted!r} limits which installed plugins load."
            if restricted is not None
            else ""
        )
        raise ValueError(
            f"unknown {kind[:-1]} {name!r}; registered {kind}: {known}. A {kind[:-1]} from a plugin needs that "
            f"plugin installed (see `ddpm-hub plugins --all`).{hint}"
        )
    return registry[name]


def get_schedule(name: str) -> Callable[..., Any]:
    return _get("schedules", name).obj


def get_sampler(name: str) -> Callable[..., Any]:
    return _get("samplers", name).obj


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


def plugin_info(include_builtins: bool = False) -> list[dict[str, Any]]:
    """What ``ddpm-hub plugins`` prints: each plugin's name, version, hooks and registered names."""
    load_plugins()
    registries = {kind: _registry(kind) for kind in KINDS}
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        if plugin in BUILTIN_PLUGINS and not include_builtins:
            continue
        dist, version = _plugin_dists.get(name, (name, "unknown"))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        registered = {
            kind: sorted(e.name for e in registries[kind].values() if e.plugin == name) for kind in KINDS
        }
        out.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "hooks": hooks,
                "registered": {k: v for k, v in registered.items() if v},
            }
        )
    return out
