"""Layers point down only: every import in metax/ and launch/ (module level or inside a
function) goes to the same layer or one below, and the modules import no cycle."""

import ast
import pathlib

from tests.helpers.runs import REPO as REPO_PATH

REPO = pathlib.Path(REPO_PATH)
# Bottom to top; a module may import its own layer and those below.
LAYERS = (
    ("metax.types", "metax.mesh", "metax.validate"),
    ("metax.nn", "metax.energy", "metax.data"),
    ("metax.meta_models", "metax.module", "metax.checks"),
    ("metax.learner",),
    ("metax.testing", "metax.train"),
    ("launch",),
)
# `metax` itself is the facade of the functional core (nn ... learner).
FACADE = "metax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    files = [*REPO.glob("metax/**/*.py"), *REPO.glob("launch/**/*.py")]
    return {module_name(p): p for p in files if "configs" not in p.parts}


def imported(path: pathlib.Path, known: set[str]) -> set[str]:
    """The metax and launch modules ``path`` imports, anywhere in it (``from metax import nn``
    counts as ``metax.nn``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in known else node.module)
    return {n for n in names if n.split(".")[0] in ("metax", "launch")}


def layer(name: str) -> int:
    if name == FACADE:
        return 3  # As high as the learners it exports.
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_import_points_down_or_sideways():
    known = set(modules())
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, path in modules().items()
        for target in imported(path, known)
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Between modules (packages' __init__ files, which gather their own modules, aside)."""
    files = modules()
    plain = {name for name, path in files.items() if path.name != "__init__.py"}
    graph = {name: imported(files[name], set(files)) & plain - {name} for name in plain}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_test_modules_share_code_through_tests_helpers_only():
    """No test module imports another: what tests share lives in tests/helpers."""
    offending = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in REPO.glob("tests/**/test_*.py")
        for name in imported_names(path)
        if (name.startswith("test_") or name.startswith("tests."))
        and not name.startswith("tests.helpers")
    ]
    assert not offending, "\n".join(offending)


def imported_names(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
