"""The tree follows the data path, and imports only go one way (docs/architecture.md).

Read from the source with ``ast``: every ``import`` and ``from ... import`` anywhere in a
module, at its top or inside a function, counts. A room may import from itself and from the
rooms before it in ``ROOMS``, never from one after it; the engine-free rooms never import
bytewax (the engine can be replaced: bytewax's last release is 0.21.1).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The rooms in the order an event travels, each allowed to import the ones before it.
ROOMS: list[tuple[str, ...]] = [
    ("c360.errors", "c360.config"),  # the exception tree and the settings: used everywhere
    ("c360.model",),  # stream schemas, commands, deltas
    ("c360.topics",),  # Kafka in and out, topic admin, the changes codec
    ("c360.entity",),  # the fold: state, windows, rules, segments, analytics
    ("c360.models",),  # declared entity models: the retail one, the default
    ("c360.store",),  # the in-memory store and its replicas
    ("c360.sync",),  # the sync server and clients
    ("dataflows",),  # the graph and its bytewax steps
    ("c360.run",),  # pipeline wiring, recovery, the shared pipeline
    ("c360.dev",),  # embedded broker, simulator, Olist replay
    ("c360.cli", "c360.__main__", "c360"),  # the command and the public API
    ("dashboards",),  # the views: the app, which the library never imports
    ("benchmarks",),
]
ENGINE_FREE = ("c360.model", "c360.entity", "c360.models", "c360.store", "c360.sync")
OURS = ("c360", "dataflows", "dashboards", "benchmarks")


def room_of(module: str) -> int:
    """The index in ROOMS of the most specific room holding ``module``."""
    best, length = -1, -1
    for i, names in enumerate(ROOMS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = i, len(name)
    if best < 0:
        raise AssertionError(f"{module} is in no room: add it to ROOMS and docs/architecture.md")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from c360.entity import rules`` names a module: judge it, not the package
            base = ROOT / Path(*node.module.split("."))
            for a in node.names:
                sub = (base / f"{a.name}.py").exists() or (base / a.name).is_dir()
                found.append((node.lineno, f"{node.module}.{a.name}" if sub else node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
    return found


def library_files() -> list[Path]:
    return sorted(p for top in ("c360", "dataflows", "dashboards", "benchmarks")
                  for p in (ROOT / top).rglob("*.py"))


def violations(files: list[Path]) -> list[str]:
    """Every import against the rule, as ``file:line: a -> b (why)``."""
    found: list[str] = []
    for path in files:
        here = module_name(path)
        mine = room_of(here)
        for line, target in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}: {here} -> {target}"
            if target.split(".")[0] == "bytewax" and here.startswith(ENGINE_FREE):
                found.append(f"{where} (the fold and the store never import bytewax)")
            if target.split(".")[0] not in OURS or target in OURS[1:]:
                continue
            if room_of(target) > mine:
                found.append(f"{where} ({ROOMS[mine][0]} may not import the later "
                             f"{ROOMS[room_of(target)][0]})")
    return found


def cycles(files: list[Path]) -> list[list[str]]:
    """Import cycles between modules (depth-first: each back edge found is one)."""
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in files}
    for path in files:
        graph[module_name(path)] = {t for _, t in imports_of(path) if t in names
                                    and t != module_name(path)}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_follows_the_data_path_one_way() -> None:
    bad = violations(library_files())
    assert bad == [], "imports against docs/architecture.md's rule:\n" + "\n".join(bad)


def test_no_module_imports_itself_back_through_another() -> None:
    # The package's own lazy __init__ (``c360``) reaches every room on attribute access:
    # that is the public API, not a cycle of the rooms, so it is left out here.
    files = [p for p in library_files() if module_name(p) != "c360"]
    found = cycles(files)
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_rule_catches_a_wrong_import(tmp_path: Path) -> None:
    # The checks above would pass on a rule that sees nothing: the fold importing the
    # pipeline, or bytewax, must be caught.
    wrong = ROOT / "c360" / "entity" / "_wrong_import_probe.py"
    wrong.write_text("from c360.run.pipeline import Pipeline\nimport bytewax.operators\n")
    try:
        bad = violations([wrong])
    finally:
        wrong.unlink()
    assert len(bad) == 2
    assert "c360.entity may not import the later c360.run" in bad[0]
    assert "never import bytewax" in bad[1]


def test_the_tree_and_the_architecture_doc_show_the_same_rooms() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rooms = sorted(p.name for p in (ROOT / "c360").iterdir()
                   if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py"))
    missing = [r for r in rooms if f"c360/{r}" not in doc]
    assert missing == [], f"docs/architecture.md does not show {missing}"
    for names in ROOMS:
        for name in names:
            if name not in ("c360", "c360.__main__"):
                assert name.replace(".", "/") in doc, f"{name} is a room the doc does not draw"


@pytest.mark.parametrize("module", ["c360.entity.state", "c360.topics.admin", "dashboards.app"])
def test_rooms_are_found_for_nested_modules(module: str) -> None:
    assert ROOMS[room_of(module)][0].split(".")[0] == module.split(".")[0]
