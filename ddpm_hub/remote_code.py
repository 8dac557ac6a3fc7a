"""The code that a saved pipeline folder carries for stock diffusers' ``trust_remote_code``.

``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` takes the pipeline class from
``model_index.json``'s ``_class_name`` when that is a ``[module, class]`` pair and ``<module>.py`` lies at the
folder's root, and a component's class from ``<component>/<module>.py`` when that file exists (diffusers'
``_resolve_custom_pipeline_and_cls`` and ``get_class_obj_and_candidates``). So
``DDPMHubPipeline.save_pretrained`` writes, beside the weights:

- ``ddpm_hub.pipeline.py`` (``_class_name: ["ddpm_hub.pipeline", "DDPMHubPipeline"]``),
- ``unet/<module>.py`` and ``scheduler/<module>.py`` for components that are not diffusers' own
  (``unet/ddpm_hub.models.unet.py`` for ``["ddpm_hub.models.unet", "UNet"]``).

The files are named after the modules that model_index.json already names, so its component entries stay
the real ``ddpm_hub`` modules: ddpm-hub's own loader imports the installed ``ddpm_hub`` and never reads these
files (it loads weights from safetensors only and never runs code from a folder or repo), while diffusers,
given ``trust_remote_code=True`` by its user, runs them and needs no ddpm-hub installed.

Each file is made by :func:`bundle` from the installed sources, not written by hand: the class, and what it
uses from other ddpm-hub modules (followed through their imports, function-level ones too), copied in
dependency order into one self-contained module. The plugin registry is replaced by a fixed table of the
entries the pipeline can use (its schedule; the core samplers), and the plugin hooks are left out. A class
whose code cannot be made self-contained (a plugin that reaches into ddpm-hub internals) gets no file; the
folder then loads with ``load_pipeline`` only.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plugins import _core_version, get_samplers, get_schedules

#: packages whose imports are followed and copied, as relative imports are (the rest are imported by the
#: generated file)
INTERNAL_PREFIXES = ("ddpm_hub",)
#: ddpm-hub modules that are never copied: the plugin machinery (its names come from the generated table)
OPAQUE_MODULES = ("ddpm_hub.plugins", "ddpm_hub.hookspecs")
#: registry functions the generated table provides, and what each returns
REGISTRY_NAMES = ("get_schedule", "get_sampler", "get_schedules", "get_samplers", "provider", "smoke_check")
#: methods of the pipeline that only make sense with ddpm-hub installed (saving records plugins, loading
#: goes through ddpm-hub's safe loader): diffusers' own take their place in the generated class
PIPELINE_ONLY_METHODS = ("save_pretrained", "from_pretrained")
#: libraries diffusers loads components from itself: no file needed
DIFFUSERS_LIBRARIES = ("diffusers", "transformers", "onnxruntime.training")


class BundleError(ValueError):
    """A class's code cannot be made into one self-contained file."""


@dataclass
class _Module:
    name: str
    source: str
    lines: list[str]
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)  # bound name -> import line
    internal: dict[str, tuple[str, str]] = field(default_factory=dict)  # bound name -> (module, name)


def _is_internal(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in INTERNAL_PREFIXES)


def _import_target(node: ast.ImportFrom, package: str) -> str:
    if node.level:
        return importlib.util.resolve_name("." * node.level + (node.module or ""), package)
    return node.module or ""


def _is_hookimpl(node: ast.stmt) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any(
        (isinstance(d, ast.Name) and d.id == "hookimpl")
        or (isinstance(d, ast.Attribute) and d.attr == "hookimpl")
        for d in decorators
    )


_MODULES: dict[str, _Module] = {}


def _module(name: str) -> _Module:
    if name in _MODULES:
        return _MODULES[name]
    module = importlib.import_module(name)
    source = inspect.getsource(module)
    package = name if hasattr(module, "__path__") else name.rpartition(".")[0]
    parsed = _Module(name, source, source.splitlines())
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, package)
            if target == "__future__":
                continue
            for alias in node.names:
                bound = alias.asname or alias.name
                if node.level or _is_internal(target):
                    parsed.internal[bound] = (target, alias.name)
                else:
                    as_ = f" as {alias.asname}" if alias.asname else ""
                    parsed.imports[bound] = f"from {target} import {alias.name}{as_}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_internal(alias.name):
                    raise BundleError(
                        f"{name} imports {alias.name} as a module; only `from ... import` is followed"
                    )
                bound = alias.asname or alias.name.split(".")[0]
                parsed.imports[bound] = f"import {alias.name}" + (
                    f" as {alias.asname}" if alias.asname else ""
                )
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if not _is_hookimpl(node):
                parsed.defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name):
                        parsed.defs[n.id] = node
    _MODULES[name] = parsed
    return parsed


def _used_names(node: ast.AST) -> set[str]:
    return {
        n.id
        for part in _kept_parts(node)
        for n in ast.walk(part)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def _dropped_methods(node: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The pipeline-only methods of a DiffusionPipeline subclass (left out of its copy)."""
    if not isinstance(node, ast.ClassDef):
        return []
    if not any(isinstance(b, ast.Name) and b.id == "DiffusionPipeline" for b in node.bases):
        return []
    return [
        m
        for m in node.body
        if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef) and m.name in PIPELINE_ONLY_METHODS
    ]


def _kept_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of ``node`` that its copy keeps (all of it, but for the dropped methods)."""
    dropped = _dropped_methods(node)
    if not dropped:
        return [node]
    assert isinstance(node, ast.ClassDef)
    return [*node.decorator_list, *node.bases, *node.keywords, *(m for m in node.body if m not in dropped)]


class _Bundler:
    def __init__(self, registry: dict[str, dict[str, tuple[Any, dict[str, Any]]]]):
        self.registry = registry
        self.imports: dict[str, None] = {}
        self.blocks: list[str] = []
        self.emitted: dict[str, str] = {}  # name defined in the bundle -> "module.name" it came from
        self.done: set[tuple[str, str]] = set()

    def _define(self, bound: str, origin: str) -> None:
        if self.emitted.get(bound, origin) != origin:
            raise BundleError(
                f"{bound!r} would be defined twice in one file ({self.emitted[bound]} and {origin})"
            )
        self.emitted[bound] = origin

    def need(self, module: str, name: str, bound: str | None = None) -> None:
        """Make ``name`` of ``module`` available in the bundle under ``bound`` (default: its own name)."""
        bound = bound or name
        key = (module, name)
        if module in OPAQUE_MODULES and name not in REGISTRY_NAMES:
            if not isinstance(_module(module).defs.get(name), ast.ClassDef):  # its error classes do travel
                raise BundleError(f"{module}.{name} is ddpm-hub plugin machinery and cannot travel")
        elif module in OPAQUE_MODULES:
            self._registry()
            if bound != name:
                self._alias(bound, name, f"{module}.{name}")
            return
        parsed = _module(module)
        if name in parsed.internal:
            target, original = parsed.internal[name]
            self.need(target, original)
            if bound != original:
                self._alias(bound, original, f"{module}.{name}")
            return
        if name in parsed.imports:
            self.imports[parsed.imports[name]] = None
            if bound != name:
                self._alias(bound, name, f"{module}.{name}")
            return
        if name not in parsed.defs:
            if hasattr(importlib.import_module(module), "__path__"):  # a submodule imported as a name
                raise BundleError(f"{module}.{name} is a module; import its names instead")
            raise BundleError(f"{module} has no top-level definition of {name!r}")
        if key in self.done:
            if bound != name:
                self._alias(bound, name, f"{module}.{name}")
            return
        self.done.add(key)
        node = parsed.defs[name]
        self._define(name, f"{module}.{name}")
        text = self._source(parsed, node)
        for used in sorted(_used_names(node)):
            known = used in parsed.defs or used in parsed.imports or used in parsed.internal
            if known and (module, used) != key:
                self.need(module, used)
        self.blocks.append(text)
        if bound != name:
            self._alias(bound, name, f"{module}.{name}")

    def _alias(self, bound: str, name: str, origin: str) -> None:
        self._define(bound, origin)
        self.blocks.append(f"{bound} = {name}")

    def _source(self, parsed: _Module, node: ast.stmt) -> str:
        """The statement's source lines, with function-level ddpm-hub imports turned into bundle names and the
        pipeline-only methods left out."""
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        lines = parsed.lines[first - 1 : node.end_lineno]
        drop: set[int] = set()
        for method in _dropped_methods(node):
            start = min([method.lineno, *(d.lineno for d in method.decorator_list)])
            drop.update(range(start, method.end_lineno + 1))
        is_package = hasattr(importlib.import_module(parsed.name), "__path__")
        package = parsed.name if is_package else parsed.name.rpartition(".")[0]
        for part in _kept_parts(node):
            for inner in ast.walk(part):
                if isinstance(inner, ast.ImportFrom):
                    target = _import_target(inner, package)
                    if inner.level or _is_internal(target):
                        for alias in inner.names:
                            self.need(target, alias.name, alias.asname)
                        drop.update(range(inner.lineno, inner.end_lineno + 1))
        kept = [line for i, line in enumerate(lines, start=first) if i not in drop]
        return "\n".join(kept)

    def _registry(self) -> None:
        if "_REGISTRY" in self.emitted:
            return
        self._define("_REGISTRY", "registry")
        rows = []
        for kind, entries in self.registry.items():
            cells = []
            for name, (obj, extra) in entries.items():
                module, qualname = obj.__module__, obj.__qualname__
                bound = f"_{kind}_{len(cells)}"
                self.need(module, qualname, bound)
                args = "".join(f", {k}={v!r}" for k, v in extra.items())
                cells.append(f"        {name!r}: _Entry({name!r}, {bound}{args}),")
            rows.append(f"    {kind!r}: {{\n" + "\n".join(cells) + "\n    },")
        for name in REGISTRY_NAMES:
            self._define(name, "registry")
        self.blocks.append(_REGISTRY_TEMPLATE.replace("{rows}", "\n".join(rows)))


_REGISTRY_TEMPLATE = '''class _Entry:
    """What ddpm-hub's plugin registry holds for one entry (the entries this file carries)."""

    builtin = True
    plugin = distribution = "ddpm-hub"

    def __init__(self, name, obj, default_steps=None, min_steps=1):
        self.name, self.obj, self.default_steps, self.min_steps = name, obj, default_steps, min_steps

    def who(self):
        return "ddpm-hub"


_REGISTRY = {
{rows}
}


def provider(kind, name):
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY.get(kind, {})))
        raise ValueError(
            f"this pipeline's code carries the {kind} {known}, not {name!r}; load it with ddpm-hub's load_pipeline "
            "for the others"
        ) from None


def get_schedule(name):
    return provider("schedules", name).obj


def get_sampler(name):
    return provider("samplers", name).obj


def get_schedules():
    return dict(_REGISTRY.get("schedules", {}))


def get_samplers():
    return dict(_REGISTRY.get("samplers", {}))


def smoke_check(kind, entry):
    """ddpm-hub checks a plugin's entry on first use; the entries here were checked when the folder was saved."""'''


def bundle(module: str, name: str, registry: dict[str, dict[str, tuple[Any, dict[str, Any]]]]) -> str:
    """One self-contained module that defines ``name`` of ``module`` (see the module docstring)."""
    bundler = _Bundler(registry)
    bundler.need(module, name)
    header = (
        f'"""{module}.{name} for diffusers\' trust_remote_code, generated by ddpm-hub {_core_version()} from its '
        "sources.\n\nLoaded by `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; ddpm-hub's own "
        '`load_pipeline` never runs this file.\n"""'
    )
    imports = sorted(bundler.imports, key=lambda line: (not line.startswith("import"), line))
    text = "\n\n".join([header, "from __future__ import annotations", "\n".join(imports), *bundler.blocks])
    _check_self_contained(text, f"{module}.{name}")
    return text + "\n"


def _check_self_contained(text: str, what: str) -> None:
    """Every global name the bundle reads is defined in it, imported by it, or a builtin."""
    tree = ast.parse(text)
    defined = set(dir(builtins)) | {"__name__", "__file__", "__doc__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            defined.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    missing = sorted(_used_names(tree) - defined)
    if missing:
        raise BundleError(f"the code of {what} uses {', '.join(missing)}, which it cannot carry")


def _registry_for(scheduler: Any, with_samplers: bool) -> dict[str, dict[str, tuple[Any, dict[str, Any]]]]:
    """The registry entries a file carries: the scheduler's schedule (and linear); for the pipeline, the
    samplers of ddpm-hub's core."""
    schedules = get_schedules()
    wanted = ["linear", scheduler.config.get("beta_schedule", "linear")]
    registry: dict[str, dict[str, tuple[Any, dict[str, Any]]]] = {
        "schedules": {n: (schedules[n].obj, {}) for n in dict.fromkeys(wanted) if n in schedules}
    }
    if with_samplers:
        registry["samplers"] = {
            n: (e.obj, {"default_steps": e.default_steps, "min_steps": e.min_steps})
            for n, e in get_samplers().items()
            if e.distribution == "ddpm-hub"
        }
    return registry


def write_remote_code(folder: str | Path, pipeline: Any) -> list[str]:
    """Write the remote-code files into a saved pipeline folder and point model_index.json at them.

    Returns the files written (relative paths). When a class cannot travel (:class:`BundleError`), nothing is
    written and model_index.json is left as diffusers wrote it; the reason is logged.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    cls = type(pipeline)
    files: dict[str, str] = {}
    try:
        files[f"{cls.__module__}.py"] = bundle(
            cls.__module__, cls.__name__, _registry_for(pipeline.scheduler, True)
        )
        for component in ("unet", "scheduler"):
            library, class_name = index[component]
            if library.split(".")[0] in DIFFUSERS_LIBRARIES:
                continue
            registry = _registry_for(pipeline.scheduler, False) if component == "scheduler" else {}
            files[f"{component}/{library}.py"] = bundle(library, class_name, registry)
    except (BundleError, OSError, TypeError) as exc:  # OSError/TypeError: no source for a class
        logging.getLogger(__name__).warning(
            "this pipeline's code cannot travel with it (%s): stock diffusers will not load %s; "
            "ddpm_hub.load_pipeline will",
            exc,
            folder,
        )
        return []
    for rel, text in files.items():
        (folder / rel).write_text(text)
    index["_class_name"] = [cls.__module__, cls.__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(files)
