"""The reference pages are generated from the code (docs/hooks/reference.py): each names everything its
source holds, and a change in the source is a change in the page, with nothing else to edit."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from protea_supervisor.listeners.families import CATALOGUE

from protea_supervisor import exitcodes
from protea_supervisor.cli.main import COMMAND_MODULES
from protea_supervisor.stackfile import schema

ROOT = Path(__file__).parents[2]


def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_page_is_in_the_sites_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in reference().pages():
        assert path in nav


def test_the_stack_keys_page_has_every_key_with_its_default() -> None:
    ref = reference()
    page = ref.pages()["reference/stack-keys.md"]
    for key, _ in schema.dotted_keys():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{key}` |"))
        if key in schema.DEFAULTS:
            assert f"`{ref._toml(schema.DEFAULTS[key])}`" in row
        elif key in schema.DERIVED:
            assert schema.DERIVED[key] in row
        else:
            assert "| required |" in row
    assert "| 0 to 100 (each worker is a process holding its model and connections) |" in page


def test_a_changed_default_in_the_schema_changes_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = reference()
    row = "| `tunnel_watch.max_restarts_per_hour` | an integer | `{}` |"
    assert row.format(6) in ref.stack_keys_page()
    monkeypatch.setitem(schema.DEFAULTS, "tunnel_watch.max_restarts_per_hour", 9)
    assert row.format(9) in ref.stack_keys_page()


def test_exit_codes_metrics_alerts_methods_and_commands_are_all_there() -> None:
    pages = reference().pages()
    for code in (*exitcodes.COMMANDS, *exitcodes.TICK):
        assert f"| {code.code} | " in pages["reference/exit-codes.md"]
    for name, spec in CATALOGUE.items():
        assert (
            f"| `{name}{'_total' if spec.kind == 'counter' else ''}` | {spec.kind} |"
            in pages["reference/metrics.md"]
        )
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "protea-alerts.yml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert alerts and all(f"## {alert}\n" in pages["reference/alert-rules.md"] for alert in alerts)
    for method in ("syncGroup", "planReload", "getDraining", "beginSwitch", "finishSwitch", "abortSwitch"):
        assert f"## `protea.{method}(" in pages["reference/xmlrpc.md"]
    for command in COMMAND_MODULES:
        assert f"## `protea-supervisor {command}`" in pages["reference/commands.md"]
    assert "## `protea-supervisor lock acquire`" in pages["reference/commands.md"]
