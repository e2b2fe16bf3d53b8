"""The structure's rules, read from the code's own imports and definitions (no app is run).

- Only the web layer reads Flask's request: services, handlers and jobs take
  plain arguments, so a job, the CLI and a test call them as a view does.
- `messaging` (contacts, templates, providers) knows nothing of `recoveries`.
- The product never imports the Stripe sandbox (a development and test tool),
  and the sandbox imports nothing of the product.
- No import cycles between the product's modules (imports inside functions
  included: a lazy import that closes a cycle is still a cycle).
- Modules stay readable: at most MODULE_LINES lines; a function over
  FUNCTION_LINES lines says in its docstring, after the summary line, why it
  is one function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES = 500
FUNCTION_LINES = 60

# Modules that answer HTTP: they may read the request. Named so: views, api,
# forms, or ending in _views or _hooks (callbacks from a provider).
WEB_MODULE_NAMES = {"views", "api", "forms"}
WEB_SUFFIXES = ("_views", "_hooks")
WEB_MODULES = {
    "recovery.boundary",
    "recovery.errors",
    "recovery.security",
    "recovery.templating",
    "recovery.logs",
    "recovery.recoveries.twilio_hooks",  # Twilio's status callbacks: views
}
WEB_PACKAGES = ("recovery.api.",)


@dataclass(frozen=True)
class Import:
    target: str  # the module imported from
    names: tuple[str, ...]  # the names taken from it (empty for `import x`)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node` except those under `if TYPE_CHECKING:` (type hints only, never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for orelse in child.orelse for n in (orelse, *runtime_nodes(orelse)))
            continue
        yield child
        yield from runtime_nodes(child)


def imports(name: str, path: Path) -> list[Import]:
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in runtime_nodes(tree(path)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, tuple(alias.name for alias in node.names), node.lineno))
    return found


def is_web(name: str) -> bool:
    last = name.rpartition(".")[2]
    return (
        last in WEB_MODULE_NAMES
        or last.endswith(WEB_SUFFIXES)
        or name in WEB_MODULES
        or name.startswith(WEB_PACKAGES)
    )


def product_edges() -> Iterator[tuple[str, str, int]]:
    """(importer, imported product module, line) for every import inside recovery/."""
    known = modules("recovery")
    for name, path in known.items():
        for found in imports(name, path):
            candidates = [f"{found.target}.{n}" for n in found.names] + [found.target]
            for candidate in candidates:
                if candidate in known and candidate != name:
                    yield name, candidate, found.line
                    break


def test_only_the_web_layer_reads_the_request() -> None:
    readers = [
        f"{name}:{found.line}"
        for name, path in modules("recovery").items()
        if not is_web(name)
        for found in imports(name, path)
        if found.target == "flask" and "request" in found.names
    ]
    assert not readers, "these read Flask's request; pass them plain values instead:\n" + "\n".join(readers)


def test_messaging_knows_nothing_of_recoveries() -> None:
    reaching = [
        f"{importer}:{line} imports {imported}"
        for importer, imported, line in product_edges()
        if importer.startswith("recovery.messaging") and imported.startswith("recovery.recoveries")
    ]
    assert not reaching, "\n".join(reaching)


@pytest.mark.parametrize(
    ("package", "forbidden"), [("recovery", "stripe_sandbox"), ("stripe_sandbox", "recovery")]
)
def test_the_product_and_the_sandbox_are_apart(package: str, forbidden: str) -> None:
    crossing = [
        f"{name}:{found.line} imports {found.target}"
        for name, path in modules(package).items()
        for found in imports(name, path)
        if found.target == forbidden or found.target.startswith(forbidden + ".")
    ]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in product_edges():
        # A package's __init__ re-exporting its modules is not a cycle with them.
        if not imported.startswith(importer + "."):
            graph.setdefault(importer, set()).add(imported)
    cycles = sorted({" → ".join(cycle) for cycle in find_cycles(graph)})
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def find_cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each strongly connected group of more than one module, as a sorted list (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    yield from groups


def test_modules_stay_readable() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in modules("recovery").values()
        if (lines := len(path.read_text().splitlines())) > MODULE_LINES
    ]
    assert not long, f"split these by what they do (at most {MODULE_LINES} lines):\n" + "\n".join(long)


def test_long_functions_say_why() -> None:
    unexplained = []
    for path in modules("recovery").values():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES and "\n\n" not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not unexplained, "split these, or say in the docstring why each is one function:\n" + "\n".join(
        unexplained
    )
