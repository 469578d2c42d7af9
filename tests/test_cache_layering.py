"""cache_schema is built in floors: the format's names (``spec``) at the bottom, each module importing only modules
below it, and the package ``__init__`` on top re-exporting them. A submodule that imports the package, or two
modules that import each other (at module level or inside a function), make the import order decide what exists."""

import ast
from pathlib import Path

import cache_schema
import cache_schema.spec
from tests.conftest import REPO

PACKAGE = "cache_schema"
MODULES = {path.stem: path for path in sorted((REPO / PACKAGE).glob("*.py"))}


def _imported(path: Path) -> set[str]:
    """The modules of cache_schema that ``path`` imports anywhere in it, functions included, by dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # a relative import names its module from the package it stands in
            targets = [PACKAGE + (f".{node.module}" if node.module else "") if node.level else node.module or ""]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(f"{PACKAGE}."))
    return found


def _graph() -> dict[str, set[str]]:
    name = {stem: PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}" for stem in MODULES}
    return {name[stem]: _imported(path) for stem, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as the path that closes it, or None."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if (found := visit(target)) is not None:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (found := visit(node)) is not None:
            return found
    return None


def test_no_submodule_imports_the_package_that_imports_it_back():
    importers = sorted(module for module, targets in _graph().items() if module != PACKAGE and PACKAGE in targets)
    assert not importers, f"import the module that defines the name, not {PACKAGE}: {importers}"


def test_the_imports_inside_cache_schema_have_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_spec_is_the_bottom_floor():
    assert _graph()[f"{PACKAGE}.spec"] == set()


def test_the_package_re_exports_every_name_of_the_format():
    missing = [
        n for n in _defined(MODULES["spec"]) if getattr(cache_schema, n, None) is not getattr(cache_schema.spec, n)
    ]
    assert not missing, f"cache_schema does not re-export {missing} from cache_schema.spec"


def _defined(path: Path) -> list[str]:
    """The public names a module defines at its top level (its constants, classes and functions)."""
    names = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]
