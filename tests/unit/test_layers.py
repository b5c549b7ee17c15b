"""The one import the layers contract cannot see: listeners/ is installed as protea_supervisor.listeners, and
lint-imports reads it from the checkout as `listeners`, so an import of `protea_supervisor.listeners.*` from
the core would slip past it. Only the CLI (the top) may import a listener module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "protea_supervisor"


def listener_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [
            n
            for n in names
            if n == "protea_supervisor.listeners" or n.startswith("protea_supervisor.listeners.")
        ]
    return found


def test_only_the_cli_imports_a_listener_module() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): imports
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "cli" and (imports := listener_imports(path))
    }
    assert offenders == {}


def test_the_check_sees_a_listener_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from protea_supervisor.listeners.gate import main\nimport protea_supervisor.listeners.edge\n"
    )
    assert listener_imports(module) == [
        "protea_supervisor.listeners.gate",
        "protea_supervisor.listeners.gate.main",
        "protea_supervisor.listeners.edge",
    ]
