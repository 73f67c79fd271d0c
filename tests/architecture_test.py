"""The house's rules, read from the source: which room may import which, no import circles.

Imports are read with `ast` from every module of `prompt_tuning/` and `tasks/` (module-level and
function-level imports alike), so the rules hold whatever a test happens to import first.
"""

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("prompt_tuning", "tasks")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from a.b import c` counts as `a.b.c` when
    `a/b/c.py` exists, else as `a.b`)."""
    modules = {_module_name(p): p for top in LIBRARY for p in (ROOT / top).rglob("*.py")}
    graph = collections.defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            for target in targets:
                if target.split(".")[0] in LIBRARY and target != name:
                    graph[name].add(target)
    return graph


GRAPH = _imports()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] == "tasks" else ".".join(parts[:2])


def _imported_rooms(prefix: str) -> dict[str, set[str]]:
    """Room -> the modules of that room imported by modules under `prefix`."""
    found = collections.defaultdict(set)
    for module, targets in GRAPH.items():
        if module == prefix or module.startswith(prefix + "."):
            for target in targets:
                found[_room(target)].add(f"{module} -> {target}")
    return found


# Each room and the rooms it may import (besides itself).
ALLOWED = {
    "prompt_tuning.t5": set(),
    "prompt_tuning.prompts": {"prompt_tuning.t5"},
    "prompt_tuning.faults": set(),
    "prompt_tuning.parallel": {"prompt_tuning.t5", "prompt_tuning.faults"},
    "prompt_tuning.model_dir": {"prompt_tuning.faults", "prompt_tuning.prompts"},
    "tasks": set(),
}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_lower_rooms_import_only_the_rooms_below_them(room):
    wrong = {
        r: edges
        for r, edges in _imported_rooms(room).items()
        if r != room and r not in ALLOWED[room]
    }
    assert not wrong, f"{room} may import only {sorted(ALLOWED[room])}; found {wrong}"


def test_the_library_never_imports_tasks_or_tools():
    # Training reaches tasks through seqio's registry only (docs/DESIGN.md, "Data flow").
    wrong = [
        f"{m} -> {t}"
        for m, ts in GRAPH.items()
        if m.startswith("prompt_tuning")
        for t in ts
        if t.split(".")[0] in ("tasks", "tools")
    ]
    assert not wrong


def test_only_entry_points_and_tools_import_the_server():
    wrong = [
        f"{m} -> {t}"
        for m, ts in GRAPH.items()
        if not m.startswith("prompt_tuning.serve")
        for t in ts
        if t.startswith("prompt_tuning.serve")
    ]
    assert not wrong


def test_prediction_never_imports_the_training_loop():
    loop = ("prompt_tuning.train.trainer", "prompt_tuning.train.steps", "prompt_tuning.train.setup")
    wrong = [
        f"{m} -> {t}"
        for room in ("prompt_tuning.predict", "prompt_tuning.serve", "prompt_tuning.export")
        for m, ts in GRAPH.items()
        if m.startswith(room)
        for t in ts
        if t in loop
    ]
    assert not wrong, f"prediction and serving must not import the training loop: {wrong}"


def test_no_import_circles():
    state: dict[str, int] = {}
    cycles = []

    def visit(module, stack):
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH and target not in state:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_library_code_never_imports_gin_outside_the_entry_points():
    wrong = []
    for top in LIBRARY:
        for path in (ROOT / top).rglob("*.py"):
            if path.name == "gin_utils.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "gin" or n.startswith("gin.") for n in names):
                    wrong.append(str(path.relative_to(ROOT)))
    assert not wrong, f"only train/gin_utils.py imports gin: {wrong}"


def test_tools_stay_thin():
    # Issue 23: logic lives in the library; tools/ is command lines (at most 15% of the code).
    def lines(top):
        return sum(len(p.read_text().splitlines()) for p in (ROOT / top).rglob("*.py"))

    tools, total = lines("tools"), sum(lines(top) for top in ("prompt_tuning", "tasks", "tools"))
    assert tools <= 0.15 * total, f"tools/ holds {tools} of {total} lines ({tools / total:.0%})"
