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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs

__all__ = [
    "Entry",
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
]

ENTRY_POINT_GROUP = "ddpm_hub"
DEFAULT_PLUGINS = ("ddpm_hub.schedules", "ddpm_hub.samplers", "ddpm_hub.models.unet")
KINDS = ("schedules", "samplers", "backbones")


@dataclass(frozen=True)
class Entry:
    """One registered thing and who provided it."""

    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str


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


def _load_default_plugins() -> None:
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
            _plugin_dists[module_name] = ("ddpm-hub", _core_version())


def _load_entry_points() -> None:
    allowed = os.environ.get("DDPM_HUB_LOAD_PLUGINS")
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.get_plugin(ep.name) is not None:
                continue
            if names is not None and ep.name not in names and dist_name not in names:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise RuntimeError(
                    f"the ddpm-hub plugin {ep.name!r} from distribution {dist_name!r} failed to import: {exc}. "
                    f"Reinstall or upgrade it (pip install -U {dist_name}), uninstall it, or leave it out with "
                    "DDPM_HUB_LOAD_PLUGINS"
                ) from exc
            pm.register(plugin, name=ep.name)
            _plugin_dists[ep.name] = (dist_name, dist.version)


def load_plugins() -> pluggy.PluginManager:
    """Register the built-ins and the installed plugins (once), and check that every hook is known."""
    _load_default_plugins()
    _load_entry_points()
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise pluggy.PluginValidationError(
            exc.plugin,
            f"{exc}. ddpm-hub's hooks are: {', '.join('register_' + k for k in KINDS)} (see CONTRIBUTING.md)",
        ) from exc
    return pm


def _collect() -> dict[str, dict[str, Entry]]:
    load_plugins()
    registries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name
            dist, version = _plugin_dists.get(plugin_name, (plugin_name, "unknown"))

            def register(name: str, obj: Any, _kind=kind, _plugin=plugin_name, _dist=dist, _version=version):
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
                registry[name] = Entry(name, obj, _plugin, _dist, _version)

            impl.function(register=register)
    return registries


def _check_backbone_class(name: str, cls: Any, plugin: str) -> None:
    from diffusers import ConfigMixin, ModelMixin

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
        raise ValueError(
            f"unknown {kind[:-1]} {name!r}; registered {kind}: {known}. A {kind[:-1]} from a plugin needs that "
            "plugin installed (see `ddpm-hub plugins --all`)"
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
        if name in DEFAULT_PLUGINS and not include_builtins:
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
