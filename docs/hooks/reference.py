"""The reference pages, generated from the code at every `mkdocs build`, so that they cannot drift: commands
and options from click, stack keys from schema.py (types, defaults, bounds with their reasons) and
keydocs.py (meanings), exit codes from exitcodes.py, metrics from the metrics catalogue, alert rules from
deploy/prometheus/protea-alerts.yml, and the `protea.*` XML-RPC methods from the extension.

`pages()` is pure (text in, text out) and tested in tests/unit/test_reference.py; `on_files` is the MkDocs
hook that adds the pages to the build. None of them is in the repository.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from protea_supervisor import exitcodes
from protea_supervisor.stackfile import schema
from protea_supervisor.stackfile.files import builtin_stack_text, parse_toml
from protea_supervisor.stackfile.keydocs import MEANING

REPO = Path(__file__).resolve().parents[2]
GENERATED = "Generated from the code at build time (docs/hooks/reference.py); edit the code, not this page."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _toml(value: Any) -> str:
    """A value as a stack file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- commands ------------------------------------------------------------------------------------------


def _commands(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        yield [*path, name], command
        if isinstance(command, click.Group):
            yield from _commands(command, [*path, name])


def commands_page() -> str:
    from protea_supervisor.cli.main import cli

    out = ["# Commands", "", GENERATED, ""]
    out.append("Every command takes the group's options: `--stack PATH|demo` and `--lock-wait SECONDS`.")
    out.append("")
    for path, command in [(["protea-supervisor"], cli), *_commands(cli, ["protea-supervisor"])]:
        ctx = click.Context(command, info_name=" ".join(path))
        out += [f"## `{' '.join(path)}`", "", "```text", command.get_usage(ctx).strip(), "```", ""]
        help_text = inspect.cleandoc(command.help or "").replace("\b\n", "")
        if help_text:
            out += ["```text", help_text, "```", ""]
        options = [p for p in command.get_params(ctx) if isinstance(p, click.Option) and p.help is not None]
        if options:
            out += ["| option | meaning |", "|---|---|"]
            for option in options:
                record = option.get_help_record(ctx)
                if record:
                    out.append(f"| `{_cell(record[0])}` | {_cell(record[1])} |")
            out.append("")
    return "\n".join(out)


# --- stack keys ----------------------------------------------------------------------------------------


def _protea_value(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    parts = key.split(".")
    if parts[0] in ("programs", "queues"):
        return None  # per program / per queue: see the shipped stack file
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _bounds(spec: Any) -> str:
    number = spec[1] if isinstance(spec, tuple) and spec[0] == "list" else spec
    if not isinstance(number, schema.Num):
        return ""
    return number.describe() + (f" ({number.why})" if number.why else "")


def stack_keys_page() -> str:
    protea = parse_toml(builtin_stack_text("protea"), "protea.toml")
    out = ["# Stack keys", "", GENERATED, ""]
    out += [
        "Every key a stack file may set. *default* is what a stack gets when no layer sets the key "
        "(`schema.DEFAULTS`); *PROTEA* is the shipped PROTEA stack's value where it differs "
        "(`protea_supervisor/stacks/protea.toml`, a layer over the defaults; per program and per queue "
        "values are in that file). `*` stands for a program's role (`migrate`, `api`, `web`, `tunnel`) or a "
        "queue's name. A number outside its bounds is refused in one line naming the file, the key and the "
        "bounds.",
        "",
    ]
    section = ""
    for key, spec in schema.dotted_keys():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            out += ["", f"## `{section}`" if section != "(top level)" else "## top level", ""]
            out += ["| key | type | default | PROTEA | bounds | meaning |", "|---|---|---|---|---|---|"]
        if key in schema.DEFAULTS:
            default = f"`{_cell(_toml(schema.DEFAULTS[key]))}`"
        elif key in schema.DERIVED:
            default = _cell(schema.DERIVED[key])
        else:
            default = "required"
        value = _protea_value(protea, key)
        shipped = "" if value is None or value == schema.DEFAULTS.get(key) else f"`{_cell(_toml(value))}`"
        kind = schema._type_word(spec)  # the word a refusal uses
        bounds, meaning = _cell(_bounds(spec)), _cell(MEANING[key])
        out.append(f"| `{_cell(key)}` | {kind} | {default} | {shipped} | {bounds} | {meaning} |")
    return "\n".join(out) + "\n"


# --- exit codes ----------------------------------------------------------------------------------------


def exit_codes_page() -> str:
    out = ["# Exit codes", "", GENERATED, "", "## Every command", "", "| code | meaning |", "|---|---|"]
    out += [f"| {c.code} | {_cell(c.meaning)} |" for c in exitcodes.COMMANDS]
    out += ["", "## `tick` and `rollback`", "", "`tick` has its own codes, deploy-keeper's plus two.", ""]
    out += ["| code | meaning |", "|---|---|"]
    out += [f"| {c.code} | {_cell(c.meaning)} |" for c in exitcodes.TICK]
    out += [
        "",
        "Only a failure that is the revision's own (its migration, its frontend build, its programs failing "
        "to start, its probes after start) gives 20 and puts the revision on the failed list. Errors are one "
        "line on stderr, starting with `error:`; an unexpected internal error is one line too "
        "(`PROTEA_DEBUG=1` shows its traceback).",
    ]
    return "\n".join(out) + "\n"


# --- metrics -------------------------------------------------------------------------------------------


def metrics_page() -> str:
    from protea_supervisor.listeners.families import CATALOGUE

    out = ["# Metrics", "", GENERATED, ""]
    out += [
        "Served by the metrics listener on `metrics.host:metrics.port` (`/metrics`). Counters carry "
        "Prometheus's `_total` suffix. No env-file value is ever a label or a value.",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for name, spec in CATALOGUE.items():
        shown = f"{name}_total" if spec.kind == "counter" else name
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        out.append(f"| `{shown}` | {spec.kind} | {labels} | {_cell(spec.help)} |")
    return "\n".join(out) + "\n"


# --- alert rules ---------------------------------------------------------------------------------------


def alert_rules_page() -> str:
    rules_file = REPO / "deploy" / "prometheus" / "protea-alerts.yml"
    rules = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    out = ["# Alert rules", "", GENERATED, ""]
    out += [
        "From `deploy/prometheus/protea-alerts.yml` (load it with `rule_files:` in Prometheus; checked by "
        "`promtool check rules` and unit-tested by `promtool test rules protea-alerts.test.yml` in the "
        "suite). The thresholds are PROTEA's and are meant to be edited.",
        "",
    ]
    for group in rules["groups"]:
        for rule in group["rules"]:
            annotations = rule.get("annotations", {})
            out += [f"## {rule['alert']}", ""]
            out += [f"- **severity**: {rule.get('labels', {}).get('severity', '')}"]
            out += [f"- **for**: {rule.get('for', 'at once')}"]
            out += [f"- **summary**: {annotations.get('summary', '')}"]
            out += [f"- **what to do**: {annotations.get('runbook', '')}", ""]
            out += ["```promql", str(rule["expr"]).strip(), "```", ""]
    return "\n".join(out)


# --- XML-RPC -------------------------------------------------------------------------------------------


def xmlrpc_page() -> str:
    from protea_supervisor.extension.rpcinterface import ProteaNamespace

    out = ["# The `protea.*` XML-RPC methods", "", GENERATED, ""]
    out += [
        "Loaded into supervisord by the rendered `[rpcinterface:protea]` section "
        "(`protea_supervisor/extension/rpcinterface.py`), beside supervisor's own `supervisor.*` methods, on "
        "the same socket.",
        "",
    ]
    for name, method in inspect.getmembers(ProteaNamespace, inspect.isfunction):
        if name.startswith("_"):
            continue
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        doc = inspect.cleandoc(method.__doc__ or "")
        text = "\n".join(line for line in doc.splitlines() if not line.startswith("@"))
        tags = [line[1:] for line in doc.splitlines() if line.startswith("@")]
        out += [f"## `protea.{name}({', '.join(params)})`", "", text.strip(), ""]
        out += [f"- `{_cell(tag)}`" for tag in tags]
        out.append("")
    return "\n".join(out)


def pages() -> dict[str, str]:
    """Every generated page, by its path under docs/."""
    return {
        "reference/commands.md": commands_page(),
        "reference/stack-keys.md": stack_keys_page(),
        "reference/exit-codes.md": exit_codes_page(),
        "reference/metrics.md": metrics_page(),
        "reference/alert-rules.md": alert_rules_page(),
        "reference/xmlrpc.md": xmlrpc_page(),
    }


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the build."""
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files
