"""The import rules of the layers, read from every module's source with ``ast``.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``: a
layer that reaches up "only lazily" still depends on what it reaches. The rules:

- ``pipelines`` (the base, with its subpackages) imports nothing from ``blaze``,
  ``consumers``, ``engines``, ``infra`` or ``dags``;
- the base proper (``pipelines`` outside ``pipelines.openai`` and ``pipelines.templates``)
  imports neither of those optional layers;
- ``consumers`` and ``engines`` never import each other, nor ``blaze``, ``infra``, ``dags``;
- ``dags`` reaches Blaze only through ``pipelines`` (the SDK and the template layer);
- ``infra`` imports only ``pipelines`` of Blaze;
- Airflow is imported only in ``pipelines.templates.operators`` and ``dags``;
- no module imports another that (directly or through others) imports it back;
- no file under ``bench/`` is named like a package or edits ``sys.path``.

import-linter would state the layer rules as contracts, but ``dags/`` is Airflow's DAG
folder, not a package it can graph, and it has no contract for module-level cycles; this
reads both in a hundred lines without a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("blaze", "pipelines", "consumers", "engines", "infra", "dags")
OPTIONAL = ("pipelines.openai", "pipelines.templates")
AIRFLOW_HOMES = ("pipelines.templates.operators", "dags")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "pipelines": ("blaze", "consumers", "engines", "infra", "dags"),
    "consumers": ("blaze", "engines", "infra", "dags"),
    "engines": ("blaze", "consumers", "infra", "dags"),
    "dags": ("blaze", "consumers", "engines", "infra"),
    "infra": ("blaze", "consumers", "engines", "dags"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or module.name for ``from m import name``)
    line: int


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool = False) -> Iterator[Import]:
    """Every import in ``source`` (at any depth), with relative ones made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}", node.lineno)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            found[module_name(path)] = path
    return found


def all_imports(modules: dict[str, Path]) -> list[Import]:
    return [
        imp
        for name, path in modules.items()
        for imp in imports_of(name, path.read_text(encoding="utf-8"), path.stem == "__init__")
    ]


def violations(imports: Iterable[Import]) -> list[str]:
    """Each import that breaks a layer rule, as ``module:line imports target (rule)``."""
    out = []
    for imp in imports:
        src, dst = imp.module, imp.target
        where = f"{src}:{imp.line} imports {dst}"
        layer = src.split(".")[0]
        for banned in FORBIDDEN.get(layer, ()):
            if _within(dst, banned):
                out.append(f"{where} ({layer} must not import {banned})")
        in_base = _within(src, "pipelines") and not any(_within(src, o) for o in OPTIONAL)
        if in_base and any(_within(dst, o) for o in OPTIONAL):
            out.append(f"{where} (the base must not import its optional layers)")
        if _within(dst, "airflow") and not any(_within(src, h) for h in AIRFLOW_HOMES):
            out.append(f"{where} (Airflow only where Airflow runs)")
    return out


def resolve(target: str, modules: Iterable[str]) -> str | None:
    """The project module an import loads: the longest module name that prefixes it."""
    known = set(modules)
    name = target
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def cycles(imports: Iterable[Import], modules: Iterable[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each a loop of imports."""
    names = list(modules)
    graph: dict[str, set[str]] = {m: set() for m in names}
    for imp in imports:
        dst = resolve(imp.target, names)
        if dst is not None and dst != imp.module:
            graph[imp.module].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in names:
        if v not in index:
            visit(v)
    return found


def test_no_import_crosses_a_layer_boundary() -> None:
    modules = project_modules()
    assert len(modules) > 50  # the walk found the tree
    assert violations(all_imports(modules)) == []


def test_there_are_no_import_loops() -> None:
    modules = project_modules()
    assert cycles(all_imports(modules), modules) == []


def test_the_checks_see_imports_inside_functions_and_loops() -> None:
    lazy = "def run():\n    from engines.worker import run_worker\n    import airflow.sdk\n"
    found = violations(imports_of("pipelines.cli", lazy))
    assert found == [
        "pipelines.cli:2 imports engines.worker.run_worker (pipelines must not import engines)",
        "pipelines.cli:3 imports airflow.sdk (Airflow only where Airflow runs)",
    ]
    assert violations(imports_of("pipelines.client", "from .openai import service\n")) == [
        "pipelines.client:1 imports pipelines.openai.service "
        "(the base must not import its optional layers)"
    ]
    loop = [
        *imports_of("pipelines.status", "def f():\n    from pipelines.events import sink\n"),
        *imports_of("pipelines.events", "from pipelines.status import StatusUpdate\n"),
    ]
    names = ["pipelines.status", "pipelines.events"]
    assert cycles(loop, names) == [["pipelines.events", "pipelines.status"]]


def test_no_bench_script_shadows_a_package_or_edits_sys_path() -> None:
    for path in (ROOT / "bench").glob("*.py"):
        assert path.stem not in LAYERS, f"{path.name} shadows the {path.stem} package"
        assert "sys.path" not in path.read_text(encoding="utf-8"), f"{path.name} edits sys.path"
