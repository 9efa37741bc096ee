"""The folders are the architecture: imports run one way, and each stage is one file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGES = ("search", "spaces")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, lazily inside functions too."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it (first == last), or None. A package's
    ``__init__`` importing its own submodules is how packages work, not a cycle."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt.startswith(path[-1] + ".") or path[-1].startswith(nxt + "."):
                continue
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (cycle := visit(path + [nxt])):
                return cycle
        done.add(path[-1])
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit([start])):
            return cycle
    return None


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert "search.study.objective" in graph and "search.stages" in graph["search.study.objective"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_lazy_import_cycle():
    graph = import_graph()
    graph["search.stages.train"] = graph["search.stages.train"] | {"search.study.objective"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_the_cycle_finder_reads_absolute_relative_and_lazy_imports():
    graph = import_graph()
    assert {"search.study.loop", "search.stages.measure", "spaces"} <= graph["search.runner"]
    assert "search.runner" in graph["search.cli"]  # imported inside cmd_search only


def test_each_stage_of_the_one_trial_diagram_is_one_file():
    readme = (ROOT / "README.md").read_text()
    diagram = readme.split("## One trial", 1)[1].split("```")[1]
    stages = re.findall(r"[a-z]+", diagram.splitlines()[1])
    stages = [s for s in stages if s not in ("kd", "fine", "tune")]
    assert stages[0] == "sample" and "measure" in stages
    for stage in stages[1:]:
        assert (ROOT / "search" / "stages" / f"{stage}.py").is_file(), f"stage {stage!r} has no search/stages/{stage}.py"
    assert "def sample_arch" in (ROOT / "spaces" / "mobilenetv3.py").read_text()
