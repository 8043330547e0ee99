"""The layers: the runtime (`swarm.*`) never imports upward; services import only the runtime.

Above the runtime sit the services, the load test and the operator tools (`swarm.ops`); below nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "libs" / "swarm"
OPS = RUNTIME / "ops"


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module a file imports (absolute names), with its line, including imports inside functions."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def upward_imports(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line module` for each import of a forbidden package (or one of its modules)."""
    return [
        f"{path.relative_to(path.parents[1])}:{line} {module}"
        for path in files
        for line, module in imported_modules(path)
        if any(module == name or module.startswith(f"{name}.") for name in forbidden)
    ]


def runtime_files() -> list[Path]:
    return [path for path in RUNTIME.rglob("*.py") if OPS not in path.parents]


def test_the_finder_sees_imports_at_any_depth(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import os\n\ndef f():\n    from swarm.ops import cli\n    import loadtest.runner\n")
    assert upward_imports([source], ("swarm.ops", "loadtest")) == [
        f"{tmp_path.name}/module.py:4 swarm.ops",
        f"{tmp_path.name}/module.py:4 swarm.ops.cli",
        f"{tmp_path.name}/module.py:5 loadtest.runner",
    ]


@pytest.mark.parametrize(
    ("layer", "files", "forbidden"),
    [
        ("runtime", runtime_files, ("swarm.ops", "services", "loadtest")),
        ("services", lambda: sorted((ROOT / "services").rglob("*.py")), ("swarm.ops", "loadtest")),
    ],
)
def test_no_layer_imports_upward(layer: str, files, forbidden: tuple[str, ...]) -> None:
    found = upward_imports(files(), forbidden)
    assert not found, f"the {layer} imports from above it:\n" + "\n".join(found)


def test_the_engine_protocol_imports_no_backend() -> None:
    # The backends import the protocol; the factory that picks one lives with them (services.gateway.backends).
    engine = ROOT / "services" / "gateway" / "engine.py"
    assert upward_imports([engine], ("services.gateway.backends",)) == []
