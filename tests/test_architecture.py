"""The import rules of ARCHITECTURE.md, read from the source with ``ast`` (function-level imports included).

- the core (schedules, scheduler, samplers, backbones, pipeline, loading, plugins) never imports training,
  the CLI, the Space, pushing or evaluation, and never gradio or accelerate;
- every layer imports only the layers its row of ARCHITECTURE.md allows;
- imports sit at module level, except the optional or heavy ones (gradio, matplotlib, tensorboard);
- no module imports a ddpm_hub module by a string name, and there is no import cycle among the modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddpm_hub"

#: module -> layer; every module of the package must be listed (a new module needs a decision)
LAYERS = {
    "ddpm_hub": "api",
    "ddpm_hub.hookspecs": "core",
    "ddpm_hub.plugins": "core",
    "ddpm_hub.schedules": "core",
    "ddpm_hub.scheduler": "core",
    "ddpm_hub.samplers": "core",
    "ddpm_hub.models": "core",
    "ddpm_hub.models.unet": "core",
    "ddpm_hub.pipeline": "core",
    "ddpm_hub.remote_code": "core",
    "ddpm_hub.loading": "core",
    "ddpm_hub.images": "core",
    "ddpm_hub.devices": "core",
    "ddpm_hub.conditioning": "core",
    "ddpm_hub.datasets": "core",
    "ddpm_hub.datasets.make_mnist5k": "tools",
    "ddpm_hub.hub": "pushing",
    "ddpm_hub.evaluate": "evaluation",
    "ddpm_hub.config": "training",
    "ddpm_hub.data": "training",
    "ddpm_hub.checkpoints": "training",
    "ddpm_hub.train": "training",
    "ddpm_hub.cli": "cli",
}
#: layer -> the layers it may import (besides its own)
MAY_IMPORT = {
    "core": set(),
    "api": {"core"},
    "tools": set(),
    "pushing": {"api", "core"},
    "evaluation": {"core"},
    "training": {"api", "core", "pushing"},
    "cli": {"api", "core", "pushing", "evaluation", "training"},
}
#: third-party packages a layer must never import
FORBIDDEN_THIRD_PARTY = {
    "core": {"gradio", "accelerate", "matplotlib", "tensorboard"},
    "api": {"gradio", "accelerate"},
    "pushing": {"gradio", "accelerate"},
    "evaluation": {"gradio", "accelerate"},
    "training": {"gradio"},
}
#: optional or heavy packages that may be imported inside a function (everything else: at module level)
LAZY_OK = {"gradio", "matplotlib", "tensorboard"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (for ``from X import name``: X.name when that is a module)
    line: int
    function_level: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, name: str | None = None) -> list[Import]:
    """Every import statement in the file at ``path`` (read as module ``name``), at any depth."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        function_level = id(node) not in top_level
        if isinstance(node, ast.Import):
            found += [Import(name, a.name, node.lineno, function_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if source.startswith("ddpm_hub") and is_module(sub) else source
                found.append(Import(name, target, node.lineno, function_level))
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted(PACKAGE.rglob("*.py")) for i in imports_of(path)]


def internal(target: str) -> str | None:
    """The ddpm_hub module that ``target`` names (a package module for ``ddpm_hub.x.y`` attributes)."""
    if not (target == "ddpm_hub" or target.startswith("ddpm_hub.")):
        return None
    while not is_module(target):
        target = target.rpartition(".")[0]
    return target


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules == set(LAYERS), "add the new module to LAYERS here and to ARCHITECTURE.md"


def test_each_layer_imports_only_what_architecture_md_allows():
    bad = []
    for imp in all_imports():
        target = internal(imp.target)
        if target is None or target == imp.module:
            continue
        layer, other = LAYERS[imp.module], LAYERS[target]
        if other != layer and other not in MAY_IMPORT[layer]:
            bad.append(f"{imp.module}:{imp.line} ({layer}) imports {target} ({other})")
    assert not bad, "\n".join(bad)


def test_the_core_never_imports_gradio_or_accelerate():
    bad = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in all_imports()
        if imp.target.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(LAYERS[imp.module], set())
    ]
    assert not bad, "\n".join(bad)


def test_imports_are_at_module_level_except_optional_or_heavy_ones():
    bad = [
        f"{imp.module}:{imp.line} imports {imp.target} inside a function"
        for imp in all_imports()
        if imp.function_level and imp.target.split(".")[0] not in LAZY_OK
    ]
    assert not bad, "\n".join(bad)


def test_no_module_is_imported_by_a_string_name():
    """importlib.import_module("ddpm_hub....") would hide an edge (and a cycle) from these tests."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = ast.unparse(node.func)
                value = node.args[0].value
                if func.endswith(("import_module", "__import__")) and str(value).startswith(
                    ("ddpm_hub", ".")
                ):
                    bad.append(f"{module_name(path)}:{node.lineno} {func}({value!r})")
    assert not bad, "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in LAYERS}
    for imp in all_imports():
        target = internal(imp.target)
        if target is not None and target != imp.module:
            graph[imp.module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_there_is_no_import_cycle_among_ddpm_hub_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The scanner itself: a function-level import is found, and a three-module cycle is reported."""
    source = tmp_path / "mod.py"
    source.write_text("import os\n\ndef f():\n    from ddpm_hub import hub\n    import gradio\n")
    found = {(i.target, i.function_level) for i in imports_of(source, "ddpm_hub.pipeline")}
    assert found == {("os", False), ("ddpm_hub.hub", True), ("gradio", True)}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["ddpm_hub.pipeline", "ddpm_hub.loading", "ddpm_hub.scheduler"])
def test_core_modules_import_in_a_fresh_interpreter_without_training_or_gradio(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'gradio' "
        "or m in ('ddpm_hub.train', 'ddpm_hub.checkpoints', 'ddpm_hub.cli', 'ddpm_hub.hub', 'ddpm_hub.config', "
        "'ddpm_hub.evaluate')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


#: the training run reads top to bottom (ARCHITECTURE.md): no function of these files grows past this
MAX_FUNCTION_LINES = {"train.py": 80, "checkpoints.py": 80}


def test_the_training_files_have_no_function_over_80_lines():
    too_long = []
    for name, limit in MAX_FUNCTION_LINES.items():
        tree = ast.parse((PACKAGE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    too_long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split these, as train.py's _train calls one step after another: " + ", ".join(
        too_long
    )
