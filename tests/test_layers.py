"""The layers of the package, checked on the source's import statements (every one, also inside functions).

``errors`` imports nothing of the package; ``fhir/`` imports only itself and ``errors`` (it takes its own
small ``FHIRSettings``, built by the runtime); the building blocks below the runtime never import it or
the entry points above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fhir_fax"
ENTRY_POINTS = ("fhir_fax.runtime", "fhir_fax.module", "fhir_fax.app", "fhir_fax.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, ``from x import y`` counted as ``x.y`` too."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def package_imports(folder: str) -> dict[str, set[str]]:
    """fhir_fax modules imported by each file under ``folder`` (or the one module ``folder``.py)."""
    paths = sorted((PACKAGE / folder).rglob("*.py")) if (PACKAGE / folder).is_dir() else [PACKAGE / f"{folder}.py"]
    return {module_name(p): {i for i in imports_of(p) if i.split(".")[0] == "fhir_fax"} for p in paths}


def test_the_scan_sees_relative_and_absolute_imports() -> None:
    assert "fhir_fax.fhir.context" in package_imports("z3")["fhir_fax.z3.routes"]
    assert "fhir_fax.settings" in package_imports("fax")["fhir_fax.fax.send"]
    assert "fhir_fax.__version__" in package_imports("runtime")["fhir_fax.runtime"]


def test_errors_import_nothing_of_the_package() -> None:
    assert package_imports("errors") == {"fhir_fax.errors": set()}


def test_the_fhir_layer_imports_only_itself_and_the_errors() -> None:
    outside = {
        module: sorted(i for i in imported if not i.startswith(("fhir_fax.fhir.", "fhir_fax.errors")))
        for module, imported in package_imports("fhir").items()
    }
    assert {module: found for module, found in outside.items() if found} == {}


@pytest.mark.parametrize("folder", ["fhir", "auth", "z3", "audit", "errors", "settings", "db", "subscriptions"])
def test_building_blocks_do_not_import_the_runtime_or_entry_points(folder: str) -> None:
    upward = {
        module: sorted(i for i in imported if i.startswith(ENTRY_POINTS) or i == "fhir_fax.__version__")
        for module, imported in package_imports(folder).items()
    }
    assert {module: found for module, found in upward.items() if found} == {}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("auth", ("fhir_fax.fax", "fhir_fax.z3")),  # access decides; it never reaches into the domains it guards
        ("z3", ("fhir_fax.fax",)),  # storage knows nothing of faxes
        ("audit", ("fhir_fax.fax", "fhir_fax.z3", "fhir_fax.auth")),
        # notifications are about resource versions: the gate is handed in, and a fax is a Communication like any
        ("subscriptions", ("fhir_fax.auth", "fhir_fax.fax", "fhir_fax.z3")),
    ],
)
def test_lower_layers_do_not_reach_up(folder: str, forbidden: tuple[str, ...]) -> None:
    upward = {
        module: sorted(i for i in imported if i.startswith(forbidden))
        for module, imported in package_imports(folder).items()
    }
    assert {module: found for module, found in upward.items() if found} == {}
