"""The layout's rules, read from the source: no import circle, imports only downward through the
layers (data flows sim -> data -> models -> diffusion/rollout -> rl -> pipeline), no library module
imports the CLI or a preset, and no source file over 500 lines. See docs/architecture.md."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# Import layers, lowest first: a module may import its own layer or lower ones, never a higher one.
# The record formats (Episode, the HDF5 store) are the ground floor that the simulator writes and
# every consumer reads; the rest of `data` (batches, groups, loaders, datasets) sits above `sim`.
LAYERS: list[set[str]] = [
    {"wmpo", "build_info", "info", "utils", "ops", "accel", "dist", "data.episode", "data.episode_file", "data.integrity",
     "data.store", "data.writer_lock"},
    {"sim"},
    {"data"},
    {"models", "nn"},
    {"diffusion"},
    {"rollout"},
    {"rl", "train"},
    {"config"},
    {"pipeline"},
    {"bench"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "wmpo").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> wmpo modules it imports (anywhere in the file, lazy imports included)."""
    edges: dict[str, set[str]] = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        edges[m] = {e for e in out if e in mods and e != m}
    return edges


def _layer(module: str) -> int:
    rest = module.split(".", 1)[1] if "." in module else "wmpo"
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if rest == n or rest.startswith(n + "."):
                if best is None or len(n) > best[1]:
                    best = (i, len(n))
    if best is None:
        raise AssertionError(f"{module}: not placed in any layer of tests/test_architecture.py LAYERS")
    return best[0]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _imports(_modules())


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_imports_go_down_the_layers(graph):
    upward = [f"{m} -> {e}" for m, es in graph.items() for e in es if _layer(e) > _layer(m)]
    assert upward == []


def test_library_imports_no_cli_and_no_preset(graph):
    cli = [f"{m} -> {e}" for m, es in graph.items() for e in es
           if e.startswith("wmpo.cli") and not (m.startswith("wmpo.cli") or m == "wmpo.__main__")]
    assert cli == []
    presets = [m for m, p in _modules().items()
               if not m.startswith("wmpo.cli") and m != "wmpo.config" and ("get_preset" in p.read_text() or "PRESETS" in p.read_text())]
    assert presets == []


def test_checker_sees_cycles_and_upward_imports():
    """The checks above can fail: a planted circle and an upward import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("wmpo.rl.grpo") > _layer("wmpo.rollout.engine") > _layer("wmpo.models.policy") > _layer("wmpo.data.groups")
    assert _layer("wmpo.data.groups") > _layer("wmpo.sim.collect") > _layer("wmpo.data.store")


def _source_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        files = [p for d in ("wmpo", "kernels", "csrc", "bench", "tests") for p in (ROOT / d).rglob("*")]
    return [p for p in files if p.suffix in (".py", ".cpp", ".cu", ".h", ".cuh") and p.is_file()]


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
