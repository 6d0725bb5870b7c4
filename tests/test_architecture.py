"""The import rules of docs/architecture.md, checked on the source: no module of src/ddim imports
a private name (`_x`) of another, and the modules import each other without a circle (imports
inside functions count: they only hide a circle)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((SRC / "ddim").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = modules()


def imports(name: str, tree: ast.Module) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every ddim import of module `name`, anywhere in it."""
    out = []
    package = name if (SRC / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("ddim")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            if base.startswith("ddim"):
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub, None) if sub in MODULES else (base, a.name))
    return out


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{name} imports {imported} from {module}"
        for name, tree in MODULES.items()
        for module, imported in imports(name, tree)
        if imported is not None
        and imported.startswith("_")
        and not imported.startswith("__")
        and module != name
    ]
    assert private == []


# The one circle left (issue 23, item 4: `load` is to move above convert/); remove it from here
# when it is broken. Any other circle fails.
KNOWN_CIRCLES: list[str] = []


def test_no_import_circle_in_src():
    graph = {
        name: {m for m, _ in imports(name, tree) if m in MODULES and m != name}
        for name, tree in MODULES.items()
    }
    # a package's __init__ importing its own submodules is how a package is built, not a circle
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == KNOWN_CIRCLES
