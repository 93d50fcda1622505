"""The package's shape, checked from the source: layers, import cycles, private imports, global JAX
switches and file sizes (docs/architecture.md describes the rules)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmat"

# a module under the key may not import anything under these prefixes
FORBIDDEN = {
    "jaxmat.data": ("jaxmat.forcefields", "jaxmat.relax", "jaxmat.polysrl", "jaxmat.heo"),
    "jaxmat.forcefields": ("jaxmat.relax", "jaxmat.polysrl", "jaxmat.heo"),
    "jaxmat.relax": ("jaxmat.polysrl", "jaxmat.heo"),
    "jaxmat.polysrl": ("jaxmat.relax", "jaxmat.heo", "jaxmat.forcefields.mace", "jaxmat.forcefields.registry",
                       "jaxmat.forcefields.classical", "jaxmat.forcefields.mace_torch", "jaxmat.forcefields.chgnet"),
    "jaxmat.heo": ("jaxmat.polysrl",),
}
SHARED = ("jaxmat.errors", "jaxmat.files", "jaxmat.cli", "jaxmat.precision", "jaxmat.plotting", "jaxmat.padding",
          "jaxmat.config", "jaxmat.compile_cache", "jaxmat.resources", "jaxmat.fingerprint")
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in the file, at any depth (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def internal_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for module, names in imports(path):
            if not module.startswith("jaxmat"):
                continue
            for imported in names:  # `from jaxmat.x import y` where y is a submodule imports jaxmat.x.y
                if f"{module}.{imported}" in known:
                    targets.add(f"{module}.{imported}")
            targets.add(module)
        graph[name] = {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(internal_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer):
    offences = [f"{name} imports {target}" for name, targets in internal_graph().items()
                if name == layer or name.startswith(layer + ".")
                for target in targets if target.startswith(FORBIDDEN[layer])]
    assert not offences, offences


def test_shared_plumbing_imports_no_application():
    offences = [f"{name} imports {target}" for name, targets in internal_graph().items() if name in SHARED
                for target in targets if target.startswith(("jaxmat.relax", "jaxmat.polysrl", "jaxmat.heo", "jaxmat.forcefields"))]
    assert not offences, offences


def test_no_private_names_imported_across_modules():
    offences = []
    for name, path in modules().items():
        for module, names in imports(path):
            if module.startswith("jaxmat") and module != name:
                offences += [f"{name}: from {module} import {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not offences, offences


def test_only_the_precision_module_switches_float64_globally():
    offences = [name for name, path in modules().items()
                if "jax_enable_x64" in path.read_text() and name != "jaxmat.precision"]
    assert not offences, offences


def test_files_stay_small_or_say_why():
    long = [f"{name} ({n} lines)" for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and "longer than" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not long, f"over {MAX_LINES} lines without a reason in the docstring ('longer than ... because'): {long}"


def test_test_helpers_live_outside_the_library():
    users = [name for name, path in modules().items() if name != "jaxmat.testing"
             for module, _ in imports(path) if module == "jaxmat.testing"]
    assert not users, f"library modules import jaxmat.testing: {users}"
