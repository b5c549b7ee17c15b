"""The stack file's schema: every key, its type, and the bounds of every number (with the reason), checked
layer by layer so a refusal names the file that holds the value; and the merged view the parser reads.

Dotted keys are spelled one way everywhere: parts that are not bare TOML keys are double-quoted
(`queues."protea.ping".processes`), as TOML itself would write them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protea_supervisor.errors import StackError

ROLES = ("migrate", "api", "web", "tunnel")
DAY = 86400


@dataclass(frozen=True)
class Num:
    """A number in [low, high]: `kind` int, or float (ints accepted); `why` is the reason for the bounds."""

    kind: type
    low: float
    high: float
    why: str = ""

    def describe(self) -> str:
        return f"{_number(self.low)} to {_number(self.high)}"


def _number(value: float) -> str:
    """A bound as a person writes it: 1000000, not 1e+06; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def seconds(low: float, high: float, why: str = "", kind: type = int) -> Num:
    return Num(kind, low, high, why)


GRACE = seconds(1, DAY, "at least a second; a grace beyond a day is a mistake, not a job")
PORT = Num(int, 1, 65535, "a TCP port")
PROGRAM_SCHEMA: dict[str, Any] = {
    "command": str,
    "directory": str,
    "environment": ("table", str),
    "stop_signal": str,
    "stop_grace": GRACE,
    "startsecs": seconds(0, 3600, "supervisord's time before RUNNING"),
    "enabled": bool,
    "requires_file": str,
    "fallback_command": str,
    "socket": str,
}
QUEUE_SCHEMA: dict[str, Any] = {
    "program": str,
    "processes": Num(int, 0, 100, "each worker is a process holding its model and connections"),
    "numbered": bool,
    "stop_grace": GRACE,
    "command": str,
    "starved_after": seconds(1, 30 * DAY, "a month without an ack is not starving, it is dead"),
    "singleton": bool,
    "autoscale": {
        "min": Num(int, 1, 100, "at least one worker: a queue without a consumer is stalled"),
        "max": Num(int, 1, 100, "the bound of processes"),
        "target_backlog": Num(int, 1, 1_000_000, "messages waiting or in hand per process"),
        "scale_up_delay": seconds(0, 3600, "an hour at most: a burst waits no longer for workers"),
        "scale_down_window": seconds(0, DAY, "at most a day"),
        "cooldown": seconds(0, 3600, "an hour at most"),
    },
}
TIMEOUT = seconds(1, 3600, "an hour at most: a wait longer than that is a hang")
SCHEMA: dict[str, Any] = {
    "name": str,
    "paths": {"root": str, "venv": str, "logs": str, "run": str, "create_root": bool},
    "env": {"files": ("list", str), "required": ("list", str), "require_jwt_secret": bool},
    "control": {
        "inet_port": Num(int, 0, 65535, "0 turns the inet server off"),
        "inet_host": str,
        "username": str,
        "password_sha": str,
        "fast_reactions": bool,
        "operation_wait": seconds(0, DAY, "a command waits at most a day for another", float),
        "log_retention_days": Num(int, 0, 3650, "days; 0 keeps the logs of removed processes"),
    },
    "programs": ("roles", PROGRAM_SCHEMA),
    "workers": {
        "command": str,
        "stop_signal": str,
        "stop_grace": GRACE,
        "startsecs": PROGRAM_SCHEMA["startsecs"],
        "directory": str,
        "restart_delay": seconds(0, 3600, "0 leaves restarts to supervisord"),
    },
    "queues": ("queues", QUEUE_SCHEMA),
    "probes": {
        "api_ready_url": str,
        "api_ready_timeout": TIMEOUT,
        "web_url": str,
        "web_timeout": TIMEOUT,
        "public_url": str,
        "ngrok_api_url": str,
        "infra_from_env": ("list", str),
        "infra_timeout": TIMEOUT,
        "start_timeout": TIMEOUT,
    },
    "deploy": {
        "repository": str,
        "remote": str,
        "ref": str,
        "poll_interval": seconds(5, DAY, "TICK_5 paces the timer; at least daily"),
        "jitter": seconds(0, DAY),
        "retry_ladder": ("list", seconds(0, DAY)),
        "pause_after_escalation": seconds(0, 7 * DAY, "a week at most"),
        "escalation_command": str,
        "lock_files": ("list", str),
        "install_command": str,
        "post_install_command": str,
        "web_dir": str,
        "build_command": str,
        "web_current": str,
        "enabled": bool,
        "check_interval": seconds(0, DAY, "0 turns the new-commit check off"),
        "prerequisite_timeout": seconds(0, 3600, "", float),
        "api_canary_command": str,
        "api_canary_url": str,
    },
    "host": {
        "role": str,
        "name": str,
        "declare_revision": bool,
        "revision_guard": bool,
        "db_url_env": str,
        "amqp_url_env": str,
        "migrations_dir": str,
        "heartbeat": bool,
        "stale_after": seconds(15, 3600, "a heartbeat comes every 10 s"),
    },
    "lock": {"file": str, "flock_timeout": Num(float, 0.001, 3600, "the shell tool's flock -w")},
    "metrics": {"enabled": bool, "host": str, "port": PORT},
    "monitor": {
        "rabbit_api": str,
        "queue_prefix": str,
        "exempt": ("list", str),
        "starved_after": QUEUE_SCHEMA["starved_after"],
    },
    "notify": {
        "slack_url_env": ("list", str),
        "json_url_env": ("list", str),
        "events": ("list", str),
        "timeout": Num(float, 0.5, 60, "seconds one webhook call may take"),
        "retries": Num(int, 0, 10, "attempts after the first"),
    },
    "backup": {
        "dir": str,
        "keep": Num(int, 1, 1000, "dumps kept"),
        "min_free_gb": Num(float, 0, 1_000_000, "GB free in backup.dir"),
        "database_url_env": str,
        "extensions": ("list", str),
        "check_tables": ("list", str),
        "min_tables": Num(int, 0, 1_000_000),
        "jobs": Num(int, 1, 64, "pg_restore --jobs"),
    },
    "tunnel_watch": {
        "enabled": bool,
        "probe_interval": seconds(1, 3600),
        "probe_timeout": Num(float, 0.1, 60, "seconds"),
        "failures": Num(int, 1, 100),
        "confirm_interval": Num(float, 0, 60, "seconds"),
        "grace": seconds(0, 3600),
        "backoff_initial": seconds(0, 3600),
        "backoff_max": seconds(0, DAY),
        "max_restarts_per_hour": Num(int, 1, 3600),
        "down_statuses": ("list", Num(int, 100, 599, "HTTP status codes")),
    },
}


# Every key's default: what a stack gets for a key no layer sets (the shipped PROTEA stack,
# stacks/protea.toml, is a layer over these). The parser reads them through `Reader.get`, and the reference
# (docs: Stack keys) is generated from them. Queue and program keys are spelled with `*` for the name.
DEFAULTS: dict[str, Any] = {
    "name": "protea",
    "paths.create_root": False,
    "env.files": [],
    "env.required": [],
    "env.require_jwt_secret": False,
    "control.inet_port": 0,
    "control.inet_host": "127.0.0.1",
    "control.username": "",
    "control.password_sha": "",
    "control.fast_reactions": True,
    "control.operation_wait": 900,
    "control.log_retention_days": 7,
    "programs.*.command": "",
    "programs.*.directory": "{root}",
    "programs.*.environment": {},
    "programs.*.stop_signal": "TERM",
    "programs.*.stop_grace": 10,
    "programs.*.enabled": True,
    "programs.*.requires_file": "",
    "programs.*.fallback_command": "",
    "programs.*.socket": "",
    "workers.stop_signal": "TERM",
    "workers.stop_grace": 300,
    "workers.startsecs": 1,
    "workers.directory": "{root}",
    "workers.restart_delay": 0,
    "queues.*.processes": 1,
    "queues.*.numbered": False,
    "queues.*.singleton": False,
    "queues.*.autoscale.min": 1,
    "queues.*.autoscale.max": 4,
    "queues.*.autoscale.target_backlog": 10,
    "queues.*.autoscale.scale_up_delay": 10,
    "queues.*.autoscale.scale_down_window": 300,
    "queues.*.autoscale.cooldown": 30,
    "probes.api_ready_url": "",
    "probes.api_ready_timeout": 120,
    "probes.web_url": "",
    "probes.web_timeout": 60,
    "probes.public_url": "",
    "probes.ngrok_api_url": "",
    "probes.infra_from_env": [],
    "probes.infra_timeout": 180,
    "probes.start_timeout": 60,
    "deploy.repository": "{root}",
    "deploy.remote": "origin",
    "deploy.ref": "develop",
    "deploy.poll_interval": 300,
    "deploy.jitter": 0,
    "deploy.retry_ladder": [30, 120, 300],
    "deploy.pause_after_escalation": 1800,
    "deploy.escalation_command": "",
    "deploy.lock_files": ["pyproject.toml", "poetry.lock"],
    "deploy.install_command": "",
    "deploy.post_install_command": "",
    "deploy.web_dir": "apps/web",
    "deploy.build_command": "",
    "deploy.web_current": "{run}/web-current",
    "deploy.enabled": True,
    "deploy.check_interval": 60,
    "deploy.prerequisite_timeout": 15,
    "deploy.api_canary_command": "",
    "deploy.api_canary_url": "",
    "host.role": "server",
    "host.declare_revision": False,
    "host.revision_guard": False,
    "host.db_url_env": "PROTEA_DB_URL",
    "host.amqp_url_env": "PROTEA_AMQP_URL",
    "host.migrations_dir": "alembic/versions",
    "host.heartbeat": False,
    "host.stale_after": 30,
    "lock.flock_timeout": 5,
    "metrics.enabled": True,
    "metrics.host": "127.0.0.1",
    "metrics.port": 9108,
    "monitor.rabbit_api": "http://127.0.0.1:15672",
    "monitor.queue_prefix": "protea.",
    "monitor.exempt": ["protea.dead-letter"],
    "monitor.starved_after": 1800,
    "notify.slack_url_env": [],
    "notify.json_url_env": [],
    "notify.timeout": 5.0,
    "notify.retries": 3,
    "backup.dir": "~/Thesis2/backups",
    "backup.keep": 3,
    "backup.min_free_gb": 60,
    "backup.database_url_env": "PROTEA_DB_URL",
    "backup.extensions": ["vector"],
    "backup.check_tables": [],
    "backup.min_tables": 1,
    "backup.jobs": 4,
    "tunnel_watch.enabled": True,
    "tunnel_watch.probe_interval": 5,
    "tunnel_watch.probe_timeout": 2,
    "tunnel_watch.failures": 3,
    "tunnel_watch.confirm_interval": 0.5,
    "tunnel_watch.grace": 20,
    "tunnel_watch.backoff_initial": 15,
    "tunnel_watch.backoff_max": 300,
    "tunnel_watch.max_restarts_per_hour": 6,
    "tunnel_watch.down_statuses": [402],
}
# Defaults computed from the stack or the machine, in words (the parser computes them).
DERIVED: dict[str, str] = {
    "programs.*.startsecs": "0 for migrate (a one-shot), 1 for the others",
    "queues.*.program": "worker-<the queue's name without `protea.`, dots as dashes>",
    "queues.*.stop_grace": "workers.stop_grace",
    "queues.*.command": "workers.command",
    "queues.*.starved_after": "monitor.starved_after",
    "host.name": "the machine's hostname, its first label",
    "notify.events": "every event: succeeded, failed, rollback_failed, escalated, paused, resumed",
}
# Keys without a default: every stack must set them (the shipped stacks do).
REQUIRED = frozenset({"paths.root", "paths.venv", "paths.logs", "paths.run", "workers.command", "lock.file"})


def dotted_keys() -> list[tuple[str, Any]]:
    """Every key a stack file may set, as DEFAULTS spells it (`*` for a program's role or a queue's name),
    with its spec, in the schema's order."""
    keys: list[tuple[str, Any]] = []

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, spec in table.items():
            if isinstance(spec, dict):
                walk(spec, f"{prefix}{key}.")
            elif isinstance(spec, tuple) and spec[0] in ("roles", "queues"):
                walk(PROGRAM_SCHEMA if spec[0] == "roles" else QUEUE_SCHEMA, f"{prefix}{key}.*.")
            else:
                keys.append((f"{prefix}{key}", spec))

    walk(SCHEMA, "")
    return keys


TYPE_WORDS = {str: "a string", bool: "true or false"}
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def quoted(part: str) -> str:
    """A key as a dotted key spells it: bare when TOML allows, else double-quoted, with `"`, `\\` and
    unprintable characters escaped (so a message stays one line)."""
    if _BARE.fullmatch(part):
        return part
    body = part.replace("\\", "\\\\").replace('"', '\\"')
    body = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in body)
    return f'"{body}"'


def key_parts(dotted: str) -> list[str]:
    """The parts of a dotted key as spelled (quoted parts keep their quotes)."""
    return re.findall(r'"(?:[^"\\]|\\.)*"|[^.]+', dotted)


def unquoted(part: str) -> str:
    if not part.startswith('"'):
        return part
    return re.sub(r"\\(.)", r"\1", part[1:-1])


def _table_kind(spec: Any) -> bool:
    return isinstance(spec, dict) or (isinstance(spec, tuple) and spec[0] in ("table", "roles", "queues"))


def _type_word(spec: Any) -> str:
    if _table_kind(spec):
        return "a table"
    if isinstance(spec, tuple) and spec[0] == "list":
        return f"a list of {_type_word(spec[1]).split(' ', 1)[1]}s"
    if isinstance(spec, Num):
        return "an integer" if spec.kind is int else "a number"
    return TYPE_WORDS[spec]


def _is_type(value: Any, spec: Any) -> bool:
    if isinstance(spec, Num):
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if spec.kind is int else isinstance(value, (int, float))
    return isinstance(value, spec)


def _shown(key: str, value: Any) -> str:
    from protea_supervisor.stackfile.placeholders import shown

    if re.search(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^KEY$|CREDENTIAL", key, re.IGNORECASE):
        return "a secret-looking value"
    return shown(repr(value), 60)


def _check_number(source: str, dotted: str, value: Any, spec: Num) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise StackError(f"{source}: {dotted} must be a finite number, got {value}.")
    if not spec.low <= value <= spec.high:
        why = f" ({spec.why})" if spec.why else ""
        raise StackError(f"{source}: {dotted} must be {spec.describe()}{why}, got {value}.")


def check_layer(data: Mapping[str, Any], source: str, schema: Any = None, prefix: str = "") -> None:
    """Unknown keys, wrong types and numbers out of bounds, per layer, so the message names the file."""
    schema = SCHEMA if schema is None else schema
    for key, value in data.items():
        dotted = f"{prefix}{quoted(key)}"
        if isinstance(schema, tuple) and schema[0] in ("table", "roles", "queues"):
            kind, sub = schema
            if kind == "roles" and key not in ROLES:
                raise StackError(
                    f"{source}: unknown program {dotted}; expected one of {', '.join(ROLES)} "
                    "(queue workers go under [queues])."
                )
            spec = sub
        elif key not in schema:
            raise StackError(f"{source}: unknown key {dotted}; expected one of: {', '.join(sorted(schema))}.")
        else:
            spec = schema[key]
        if _table_kind(spec):
            if not isinstance(value, dict):
                raise StackError(f"{source}: {dotted} must be a table, got {type(value).__name__}.")
            check_layer(value, source, spec, dotted + ".")
        elif isinstance(spec, tuple) and spec[0] == "list":
            if not isinstance(value, list) or not all(_is_type(item, spec[1]) for item in value):
                raise StackError(f"{source}: {dotted} must be {_type_word(spec)}, got {_shown(key, value)}.")
            if isinstance(spec[1], Num):
                for item in value:
                    _check_number(source, dotted, item, spec[1])
            if len(value) > 100:
                raise StackError(f"{source}: {dotted} must hold at most 100 items, got {len(value)}.")
        elif not _is_type(value, spec):
            raise StackError(f"{source}: {dotted} must be {_type_word(spec)}, got {_shown(key, value)}.")
        elif isinstance(spec, Num):
            _check_number(source, dotted, value, spec)


def merge(
    base: dict[str, Any], layer: Mapping[str, Any], source: str, origin: dict[str, str], prefix: str = ""
) -> None:
    """Overlay `layer` on `base`; `origin` records which file set each dotted key."""
    for key, value in layer.items():
        dotted = f"{prefix}{quoted(key)}"
        if isinstance(value, dict):
            target = base.setdefault(key, {})
            merge(target, value, source, origin, dotted + ".")
            origin.setdefault(dotted, source)
        else:
            base[key] = value
            origin[dotted] = source


class Reader:
    """Typed access to the merged mapping, with errors that name the file a key came from."""

    def __init__(self, data: dict[str, Any], origin: dict[str, str], sources: tuple[str, ...]) -> None:
        self.data = data
        self.origin = origin
        self.sources = sources

    def where(self, dotted: str) -> str:
        """The last file that set `dotted` or anything under it (else the nearest enclosing table)."""
        parts = key_parts(dotted)
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            found = [src for key, src in self.origin.items() if key == prefix or key.startswith(prefix + ".")]
            if found:
                return max(found, key=self.sources.index)
        return self.sources[-1]

    def fail(self, dotted: str, expected: str, blame: str = "") -> StackError:
        return StackError(f"{self.where(blame or dotted)}: {dotted} {expected}.")

    def get(self, dotted: str, default: Any = None) -> Any:
        """The merged value of `dotted`; else `default`, else the key's default in DEFAULTS."""
        node: Any = self.data
        for part in map(unquoted, key_parts(dotted)):
            if not isinstance(node, dict) or part not in node:
                if default is None:
                    default = default_of(dotted)
                if default is None:
                    raise StackError(f"{self.sources[-1]}: missing required key {dotted}.")
                return default
            node = node[part]
        return node


def default_of(dotted: str) -> Any:
    """The default of a key as DEFAULTS spells it (`queues.*.processes` for any queue), a fresh copy; None
    when the key has none."""
    parts = key_parts(dotted)
    if len(parts) >= 3 and parts[0] in ("programs", "queues"):
        parts[1] = "*"
    value = DEFAULTS.get(".".join(parts))
    return copy.deepcopy(value)
