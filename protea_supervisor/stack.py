"""The stack description: typed records, and the pure parser that builds them from TOML layers.

A stack is the shipped PROTEA default overlaid by zero or more host files. Every error names the file that
supplied the offending key, the dotted key, and what was expected.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor.errors import StackError

ROLES = ("migrate", "api", "web", "tunnel")
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
# Names that say "this is a secret": such values belong in an env file, never in the rendered config.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^KEY$|CREDENTIAL", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROGRAM_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Processes per queue. Each worker is a Python process holding its model and connections (PROTEA's use
# hundreds of MB), and supervisord's getAllProcessInfo grows with the count (75 ms at 200).
MAX_PROCESSES = 100


@dataclass(frozen=True)
class HostFacts:
    """What the parser needs from the machine, passed in so parsing stays pure."""

    home: Path
    python: str


@dataclass(frozen=True)
class Paths:
    root: Path
    venv: Path
    logs: Path
    run: Path
    create_root: bool


@dataclass(frozen=True)
class EnvSettings:
    files: tuple[Path, ...]
    required: tuple[str, ...]
    require_jwt_secret: bool


@dataclass(frozen=True)
class Control:
    inet_port: int
    inet_host: str
    username: str
    password_sha: str
    fast_reactions: bool
    operation_wait: float  # how long a command waits for another to release the host's operation lock


@dataclass(frozen=True)
class Program:
    role: str
    command: str
    directory: Path
    environment: tuple[tuple[str, str], ...]
    stop_signal: str
    stop_grace: int
    startsecs: int
    enabled: bool
    requires_file: str
    fallback_command: str

    @property
    def name(self) -> str:
        return self.role


@dataclass(frozen=True)
class Queue:
    name: str
    program: str
    processes: int
    numbered: bool
    stop_grace: int
    command: str
    starved_after: int

    def process_names(self) -> tuple[str, ...]:
        if self.numbered:
            return tuple(f"{self.program}-{n}" for n in range(1, self.processes + 1))
        return (self.program,) if self.processes else ()


@dataclass(frozen=True)
class Workers:
    command: str
    stop_signal: str
    stop_grace: int
    startsecs: int
    directory: Path


@dataclass(frozen=True)
class Probes:
    api_ready_url: str
    api_ready_timeout: int
    web_url: str
    web_timeout: int
    public_url: str
    ngrok_api_url: str
    infra_from_env: tuple[str, ...]
    infra_timeout: int
    start_timeout: int  # how long the gate waits for started workers and the tunnel to reach RUNNING


@dataclass(frozen=True)
class TunnelWatch:
    """The tunnel watchdog's rules (probes.public_url and probes.ngrok_api_url say what it probes)."""

    enabled: bool
    probe_interval: int
    probe_timeout: float
    failures: int
    confirm_interval: float
    grace: int
    backoff_initial: int
    backoff_max: int
    max_restarts_per_hour: int
    down_statuses: tuple[int, ...]


@dataclass(frozen=True)
class Deploy:
    repository: Path
    remote: str
    ref: str
    poll_interval: int
    jitter: int
    retry_ladder: tuple[int, ...]
    pause_after_escalation: int
    escalation_command: str
    lock_files: tuple[str, ...]
    install_command: str
    post_install_command: str
    web_dir: str
    build_command: str
    # The served frontend build: a symlink the tick swaps in one rename; the web program runs from it.
    web_current: Path
    enabled: bool  # the deploy-timer listener runs
    check_interval: int  # seconds between `git ls-remote` checks for a new commit (0: none)
    prerequisite_timeout: float  # how long a tick waits for Postgres and RabbitMQ to accept connections


@dataclass(frozen=True)
class LockSettings:
    file: Path
    flock_timeout: float


@dataclass(frozen=True)
class Metrics:
    enabled: bool
    host: str
    port: int


@dataclass(frozen=True)
class Monitor:
    rabbit_api: str
    queue_prefix: str
    exempt: tuple[str, ...]
    starved_after: int


@dataclass(frozen=True)
class BackupSettings:
    dir: Path
    keep: int
    min_free_gb: float
    database_url_env: str
    extensions: tuple[str, ...]
    check_tables: tuple[str, ...]
    min_tables: int
    jobs: int


@dataclass(frozen=True)
class Stack:
    name: str
    sources: tuple[str, ...]
    paths: Paths
    env: EnvSettings
    control: Control
    programs: tuple[Program, ...]
    workers: Workers
    queues: tuple[Queue, ...]
    probes: Probes
    deploy: Deploy
    lock: LockSettings
    tunnel_watch: TunnelWatch
    metrics: Metrics
    monitor: Monitor
    backup: BackupSettings
    python: str = field(default="")
    # How the stack was chosen (--stack): a host file path, `demo`, or "" for the PROTEA defaults.
    choice: str = field(default="")
    # Which file set each dotted key (queues."protea.ping".processes -> /etc/protea/stack.toml).
    origins: tuple[tuple[str, str], ...] = field(default=())

    def origin(self, dotted: str) -> str:
        """The file that set `dotted`, or "the default" when no file did."""
        return dict(self.origins).get(dotted, "the default")

    def program(self, role: str) -> Program:
        for program in self.programs:
            if program.role == role:
                return program
        raise KeyError(role)

    @property
    def config_path(self) -> Path:
        return self.paths.run / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.paths.run / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.paths.run / "supervisord.pid"

    def queue(self, name: str) -> Queue:
        """A queue by its name (`protea.ping`) or its program name (`worker-ping`)."""
        for queue in self.queues:
            if name in (queue.name, queue.program):
                return queue
        known = ", ".join(q.name for q in self.queues)
        raise StackError(f"unknown queue {name!r}; expected one of: {known}.")


# --- schema -------------------------------------------------------------------------------------------

# A type spec is a Python type, ("list", item type), ("table", value type) for free-form string keys,
# or a dict (a fixed sub-schema). ("roles", spec) and ("queues", spec) are tables with checked keys.
Spec = Any

PROGRAM_SCHEMA: dict[str, Spec] = {
    "command": str,
    "directory": str,
    "environment": ("table", str),
    "stop_signal": str,
    "stop_grace": int,
    "startsecs": int,
    "enabled": bool,
    "requires_file": str,
    "fallback_command": str,
}
QUEUE_SCHEMA: dict[str, Spec] = {
    "program": str,
    "processes": int,
    "numbered": bool,
    "stop_grace": int,
    "command": str,
    "starved_after": int,
}
SCHEMA: dict[str, Spec] = {
    "name": str,
    "paths": {"root": str, "venv": str, "logs": str, "run": str, "create_root": bool},
    "env": {"files": ("list", str), "required": ("list", str), "require_jwt_secret": bool},
    "control": {
        "inet_port": int,
        "inet_host": str,
        "username": str,
        "password_sha": str,
        "fast_reactions": bool,
        "operation_wait": (int, float),
    },
    "programs": ("roles", PROGRAM_SCHEMA),
    "workers": {"command": str, "stop_signal": str, "stop_grace": int, "startsecs": int, "directory": str},
    "queues": ("queues", QUEUE_SCHEMA),
    "probes": {
        "api_ready_url": str,
        "api_ready_timeout": int,
        "web_url": str,
        "web_timeout": int,
        "public_url": str,
        "ngrok_api_url": str,
        "infra_from_env": ("list", str),
        "infra_timeout": int,
        "start_timeout": int,
    },
    "deploy": {
        "repository": str,
        "remote": str,
        "ref": str,
        "poll_interval": int,
        "jitter": int,
        "retry_ladder": ("list", int),
        "pause_after_escalation": int,
        "escalation_command": str,
        "lock_files": ("list", str),
        "install_command": str,
        "post_install_command": str,
        "web_dir": str,
        "build_command": str,
        "web_current": str,
        "enabled": bool,
        "check_interval": int,
        "prerequisite_timeout": (int, float),
    },
    "lock": {"file": str, "flock_timeout": (int, float)},
    "metrics": {"enabled": bool, "host": str, "port": int},
    "monitor": {"rabbit_api": str, "queue_prefix": str, "exempt": ("list", str), "starved_after": int},
    "backup": {
        "dir": str,
        "keep": int,
        "min_free_gb": (int, float),
        "database_url_env": str,
        "extensions": ("list", str),
        "check_tables": ("list", str),
        "min_tables": int,
        "jobs": int,
    },
    "tunnel_watch": {
        "enabled": bool,
        "probe_interval": int,
        "probe_timeout": (int, float),
        "failures": int,
        "confirm_interval": (int, float),
        "grace": int,
        "backoff_initial": int,
        "backoff_max": int,
        "max_restarts_per_hour": int,
        "down_statuses": ("list", int),
    },
}

TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", (int, float): "a number"}


def _type_word(spec: Spec) -> str:
    if isinstance(spec, dict) or (isinstance(spec, tuple) and spec[0] in ("table", "roles", "queues")):
        return "a table"
    if isinstance(spec, tuple) and spec[0] == "list":
        return f"a list of {_type_word(spec[1]).split(' ', 1)[1]}s"
    return TYPE_WORDS[spec]


def _is_type(value: Any, spec: Spec) -> bool:
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if spec == (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, spec)


def _check_layer(data: Mapping[str, Any], schema: Spec, source: str, prefix: str = "") -> None:
    """Unknown keys and wrong types, per layer, so the message names the file that has them."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(schema, tuple) and schema[0] in ("table", "roles", "queues"):
            kind, sub = schema
            if kind == "roles" and key not in ROLES:
                raise StackError(
                    f"{source}: unknown program {dotted!r}; expected one of {', '.join(ROLES)} "
                    "(queue workers go under [queues])."
                )
            spec = sub
        elif key not in schema:
            known = ", ".join(sorted(schema))
            raise StackError(f"{source}: unknown key {dotted!r}; expected one of: {known}.")
        else:
            spec = schema[key]
        if isinstance(spec, dict) or (isinstance(spec, tuple) and spec[0] in ("table", "roles", "queues")):
            if not isinstance(value, dict):
                raise StackError(f"{source}: {dotted} must be a table, got {type(value).__name__}.")
            _check_layer(value, spec, source, dotted + ".")
        elif isinstance(spec, tuple) and spec[0] == "list":
            if not isinstance(value, list) or not all(_is_type(item, spec[1]) for item in value):
                raise StackError(f"{source}: {dotted} must be {_type_word(spec)}, got {value!r}.")
        elif not _is_type(value, spec):
            shown = "a secret-looking value" if SECRET_NAME.search(key) else repr(value)
            raise StackError(f"{source}: {dotted} must be {_type_word(spec)}, got {shown}.")


def _merge(
    base: dict[str, Any], layer: Mapping[str, Any], source: str, origin: dict[str, str], prefix: str = ""
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{_quoted(key)}"
        if isinstance(value, dict):
            target = base.setdefault(key, {})
            _merge(target, value, source, origin, dotted + ".")
            origin.setdefault(dotted, source)
        else:
            base[key] = value
            origin[dotted] = source


class _Reader:
    """Typed access to the merged mapping, with errors that name the file a key came from."""

    def __init__(self, data: dict[str, Any], origin: dict[str, str], sources: tuple[str, ...]) -> None:
        self.data = data
        self.origin = origin
        self.sources = sources

    def where(self, dotted: str) -> str:
        """The last file that set `dotted` or anything under it (else the nearest enclosing table)."""
        parts = _split_key(dotted)
        for end in range(len(parts), 0, -1):
            prefix = ".".join(_quoted(p) for p in parts[:end])
            found = [src for key, src in self.origin.items() if key == prefix or key.startswith(prefix + ".")]
            if found:
                return max(found, key=self.sources.index)
        return self.sources[-1]

    def fail(self, dotted: str, expected: str, blame: str = "") -> StackError:
        return StackError(f"{self.where(blame or dotted)}: {dotted} {expected}.")

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in _split_key(dotted):
            if not isinstance(node, dict) or part not in node:
                if default is None:
                    raise StackError(f"{self.sources[-1]}: missing required key {dotted!r}.")
                return default
            node = node[part]
        return node


def _split_key(dotted: str) -> list[str]:
    # Queue names contain dots; they are quoted in dotted keys as queues."protea.ping".processes.
    return [part.strip('"') for part in re.findall(r'"[^"]*"|[^.]+', dotted)]


def quoted(name: str) -> str:
    """A key as it appears in a dotted key: queue names with dots are quoted (queues."protea.ping")."""
    return f'"{name}"' if "." in name else name


_quoted = quoted


class _Expander:
    """Expands {root}-style placeholders and a leading ~ with the host's home directory."""

    def __init__(self, reader: _Reader, home: Path, values: dict[str, str]) -> None:
        self.reader = reader
        self.home = home
        self.values = values

    def text(self, dotted: str, raw: str, extra: Mapping[str, str] | None = None) -> str:
        names = dict(self.values)
        if extra:
            names.update(extra)
        try:
            return raw.format_map(names)
        except KeyError as missing:
            allowed = ", ".join("{" + n + "}" for n in sorted(names))
            raise self.reader.fail(
                dotted, f"uses unknown placeholder {{{missing.args[0]}}}; expected one of {allowed}"
            ) from None
        except (ValueError, IndexError):
            raise self.reader.fail(
                dotted, "has an unbalanced '{' or '}' (write {{ and }} for literal braces)"
            ) from None

    def path(self, dotted: str, raw: str, base: Path | None = None) -> Path:
        expanded = self.text(dotted, raw)
        if expanded == "~" or expanded.startswith("~/"):
            expanded = str(self.home) + expanded[1:]
        path = Path(expanded)
        if not path.is_absolute():
            if base is None:
                raise self.reader.fail(
                    dotted, f"must be an absolute path (or start with ~ or a placeholder), got {raw!r}"
                )
            path = base / path
        return path


def _positive(reader: _Reader, dotted: str, value: int, minimum: int = 0) -> int:
    if value < minimum:
        raise reader.fail(dotted, f"must be at least {minimum}, got {value}")
    return value


def _check_url(reader: _Reader, dotted: str, url: str, allow_empty: bool = True) -> str:
    if not url and allow_empty:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail(dotted, f"must be an http(s) URL, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535") from None
    if port == 0:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535")
    return url


def _check_signal(reader: _Reader, dotted: str, value: str) -> str:
    if value not in STOP_SIGNALS:
        raise reader.fail(dotted, f"must be one of {', '.join(STOP_SIGNALS)}, got {value!r}")
    return value


def _check_command(reader: _Reader, dotted: str, command: str, required: bool = True) -> str:
    if not command.strip():
        if required:
            raise reader.fail(dotted, "must not be empty")
        return command
    try:
        shlex.split(command)
    except ValueError as why:
        raise reader.fail(dotted, f"is not a valid command line ({why})") from None
    if "\n" in command:
        raise reader.fail(dotted, "must be one line")
    return command


def queue_program_name(queue: str) -> str:
    """manage.sh's naming: drop the `protea.` prefix, dots become dashes, prefix `worker-`."""
    slug = queue.removeprefix("protea.").replace(".", "-").replace("_", "-").lower()
    return f"worker-{slug}"


def parse_stack(layers: list[tuple[str, Mapping[str, Any]]], host: HostFacts) -> Stack:
    """Build a Stack from TOML mappings, first the defaults, then host files; later layers win."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers:
        _check_layer(layer, SCHEMA, source)
        _merge(merged, layer, source, origin)
    sources = tuple(source for source, _ in layers)
    reader = _Reader(merged, origin, sources)

    placeholders: dict[str, str] = {"python": host.python, "home": str(host.home)}
    expand = _Expander(reader, host.home, placeholders)
    root = expand.path("paths.root", reader.get("paths.root"))
    placeholders["root"] = str(root)
    venv = expand.path("paths.venv", reader.get("paths.venv"), root)
    placeholders["venv"] = str(venv)
    logs = expand.path("paths.logs", reader.get("paths.logs"), root)
    placeholders["logs"] = str(logs)
    run = expand.path("paths.run", reader.get("paths.run"), root)
    placeholders["run"] = str(run)
    if len(str(run / "supervisor.sock")) > 100:
        # AF_UNIX paths are limited to 108 bytes; supervisord would fail to bind much later.
        raise reader.fail("paths.run", f"is too long for a unix socket path ({run})")
    paths = Paths(
        root=root, venv=venv, logs=logs, run=run, create_root=bool(reader.get("paths.create_root", False))
    )

    env = EnvSettings(
        files=tuple(
            expand.path(f"env.files[{i}]", f, root) for i, f in enumerate(reader.get("env.files", []))
        ),
        required=tuple(_env_names(reader, "env.required", reader.get("env.required", []))),
        require_jwt_secret=bool(reader.get("env.require_jwt_secret", False)),
    )

    control = _parse_control(reader)
    programs = tuple(_parse_program(reader, expand, role, root) for role in ROLES)
    workers = Workers(
        command=_check_command(reader, "workers.command", reader.get("workers.command")),
        stop_signal=_check_signal(reader, "workers.stop_signal", reader.get("workers.stop_signal", "TERM")),
        stop_grace=_positive(reader, "workers.stop_grace", reader.get("workers.stop_grace", 300), 1),
        startsecs=_positive(reader, "workers.startsecs", reader.get("workers.startsecs", 1)),
        directory=expand.path("workers.directory", reader.get("workers.directory", "{root}"), root),
    )
    queues = _parse_queues(reader, expand, workers, programs)

    probes = Probes(
        api_ready_url=_check_url(reader, "probes.api_ready_url", reader.get("probes.api_ready_url", "")),
        api_ready_timeout=_positive(
            reader, "probes.api_ready_timeout", reader.get("probes.api_ready_timeout", 120), 1
        ),
        web_url=_check_url(reader, "probes.web_url", reader.get("probes.web_url", "")),
        web_timeout=_positive(reader, "probes.web_timeout", reader.get("probes.web_timeout", 60), 1),
        public_url=_check_url(reader, "probes.public_url", reader.get("probes.public_url", "")),
        ngrok_api_url=_check_url(reader, "probes.ngrok_api_url", reader.get("probes.ngrok_api_url", "")),
        infra_from_env=tuple(
            _env_names(reader, "probes.infra_from_env", reader.get("probes.infra_from_env", []))
        ),
        infra_timeout=_positive(reader, "probes.infra_timeout", reader.get("probes.infra_timeout", 180), 1),
        start_timeout=_positive(reader, "probes.start_timeout", reader.get("probes.start_timeout", 60), 1),
    )
    deploy = _parse_deploy(reader, expand, root)
    lock = LockSettings(
        file=expand.path("lock.file", reader.get("lock.file"), root),
        flock_timeout=float(reader.get("lock.flock_timeout", 5)),
    )
    if not 0 < lock.flock_timeout <= 3600:
        raise reader.fail(
            "lock.flock_timeout", f"must be greater than 0 and at most 3600, got {lock.flock_timeout}"
        )

    tunnel_watch = _parse_tunnel_watch(reader)
    port = reader.get("metrics.port", 9108)
    if not 1 <= port <= 65535:
        raise reader.fail("metrics.port", f"must be a TCP port, got {port}")
    metrics = Metrics(
        bool(reader.get("metrics.enabled", True)), reader.get("metrics.host", "127.0.0.1"), port
    )
    monitor = Monitor(
        rabbit_api=reader.get("monitor.rabbit_api", "http://127.0.0.1:15672"),
        queue_prefix=reader.get("monitor.queue_prefix", "protea."),
        exempt=tuple(reader.get("monitor.exempt", ["protea.dead-letter"])),
        starved_after=_positive(
            reader, "monitor.starved_after", reader.get("monitor.starved_after", 1800), 1
        ),
    )
    backup = BackupSettings(
        dir=expand.path("backup.dir", reader.get("backup.dir", "~/Thesis2/backups"), root),
        keep=_positive(reader, "backup.keep", reader.get("backup.keep", 3), 1),
        min_free_gb=float(reader.get("backup.min_free_gb", 60)),
        database_url_env=reader.get("backup.database_url_env", "PROTEA_DB_URL"),
        extensions=tuple(reader.get("backup.extensions", ["vector"])),
        check_tables=tuple(reader.get("backup.check_tables", [])),
        min_tables=_positive(reader, "backup.min_tables", reader.get("backup.min_tables", 1)),
        jobs=_positive(reader, "backup.jobs", reader.get("backup.jobs", 4), 1),
    )

    name = reader.get("name", "protea")
    if not PROGRAM_NAME.match(name):
        raise reader.fail("name", f"must be lowercase letters, digits and dashes, got {name!r}")
    return Stack(
        name=name,
        sources=sources,
        paths=paths,
        env=env,
        control=control,
        programs=programs,
        workers=workers,
        queues=queues,
        probes=probes,
        deploy=deploy,
        lock=lock,
        tunnel_watch=tunnel_watch,
        metrics=metrics,
        monitor=monitor,
        backup=backup,
        python=host.python,
        origins=tuple(sorted(origin.items())),
    )


def _env_names(reader: _Reader, dotted: str, names: list[str]) -> list[str]:
    for name in names:
        if not ENV_NAME.match(name):
            raise reader.fail(dotted, f"must hold environment variable names, got {name!r}")
    return names


def _parse_control(reader: _Reader) -> Control:
    control = Control(
        inet_port=reader.get("control.inet_port", 0),
        inet_host=reader.get("control.inet_host", "127.0.0.1"),
        username=reader.get("control.username", ""),
        password_sha=reader.get("control.password_sha", ""),
        fast_reactions=bool(reader.get("control.fast_reactions", True)),
        operation_wait=float(reader.get("control.operation_wait", 900)),
    )
    if not 0 <= control.operation_wait <= 86400:
        raise reader.fail("control.operation_wait", f"must be 0-86400 seconds, got {control.operation_wait}")
    if not 0 <= control.inet_port <= 65535:
        raise reader.fail("control.inet_port", f"must be 0 (off) or a port 1-65535, got {control.inet_port}")
    if control.inet_port:
        if not control.username:
            raise reader.fail(
                "control.username", "must be set when control.inet_port is on", "control.inet_port"
            )
        if not re.fullmatch(r"\{SHA\}[0-9a-f]{40}", control.password_sha):
            raise reader.fail(
                "control.password_sha",
                "must be '{SHA}' followed by the 40-hex SHA-1 of the password when control.inet_port is on",
                "control.inet_port",
            )
    return control


def _parse_program(reader: _Reader, expand: _Expander, role: str, root: Path) -> Program:
    key = f"programs.{role}"
    table = reader.get(key, {"command": ""})
    environment = table.get("environment", {})
    for name, value in environment.items():
        if not ENV_NAME.match(name):
            raise reader.fail(f"{key}.environment", f"has an invalid variable name {name!r}")
        if SECRET_NAME.search(name):
            raise reader.fail(
                f"{key}.environment.{name}",
                "looks like a secret; put it in an env file (env.files), which is never rendered",
            )
        if "\n" in value:
            raise reader.fail(f"{key}.environment.{name}", "must be one line")
    enabled = table.get("enabled", True)
    command = _check_command(
        reader, f"{key}.command", expand.text(f"{key}.command", table.get("command", "")), enabled
    )
    fallback = table.get("fallback_command", "")
    requires_file = table.get("requires_file", "")
    if bool(fallback) != bool(requires_file):
        raise reader.fail(f"{key}", "needs both requires_file and fallback_command, or neither")
    return Program(
        role=role,
        command=command,
        directory=expand.path(f"{key}.directory", table.get("directory", "{root}"), root),
        environment=tuple(
            sorted((k, expand.text(f"{key}.environment.{k}", v)) for k, v in environment.items())
        ),
        stop_signal=_check_signal(reader, f"{key}.stop_signal", table.get("stop_signal", "TERM")),
        stop_grace=_positive(reader, f"{key}.stop_grace", table.get("stop_grace", 10), 1),
        startsecs=_positive(
            reader, f"{key}.startsecs", table.get("startsecs", 0 if role == "migrate" else 1)
        ),
        enabled=enabled,
        requires_file=expand.text(f"{key}.requires_file", requires_file),
        fallback_command=_check_command(
            reader, f"{key}.fallback_command", expand.text(f"{key}.fallback_command", fallback), False
        ),
    )


def _parse_queues(
    reader: _Reader, expand: _Expander, workers: Workers, programs: tuple[Program, ...]
) -> tuple[Queue, ...]:
    tables: dict[str, dict[str, Any]] = reader.get("queues", {})
    if not tables:
        raise StackError(f"{reader.sources[-1]}: [queues] must name at least one queue.")
    seen: dict[str, str] = {role: f"programs.{role}" for role in ROLES}
    queues = []
    for name, table in tables.items():
        key = f"queues.{_quoted(name)}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise reader.fail(key, "must be a queue name of letters, digits, '.', '_' and '-'")
        program = table.get("program", queue_program_name(name))
        if not PROGRAM_NAME.match(program):
            raise reader.fail(
                f"{key}.program", f"must be lowercase letters, digits and dashes, got {program!r}"
            )
        if program in seen:
            raise reader.fail(f"{key}.program", f"{program!r} is already the program of {seen[program]}")
        seen[program] = key
        processes = _positive(reader, f"{key}.processes", table.get("processes", 1))
        if processes > MAX_PROCESSES:
            raise reader.fail(f"{key}.processes", f"must be at most {MAX_PROCESSES}, got {processes}")
        numbered = table.get("numbered", False)
        if processes > 1 and not numbered:
            raise reader.fail(
                f"{key}.processes",
                f"is {processes}, but an unnumbered queue runs one process named {program}; "
                "set numbered = true to run several",
            )
        queues.append(
            Queue(
                name=name,
                program=program,
                processes=processes,
                numbered=numbered,
                stop_grace=_positive(
                    reader, f"{key}.stop_grace", table.get("stop_grace", workers.stop_grace), 1
                ),
                command=expand.text(
                    f"{key}.command" if "command" in table else "workers.command",
                    table.get("command", workers.command),
                    {"queue": name},
                ),
                starved_after=_positive(
                    reader,
                    f"{key}.starved_after",
                    table.get("starved_after", reader.get("monitor.starved_after", 1800)),
                    1,
                ),
            )
        )
    for queue in queues:
        for process in queue.process_names():
            if process in seen and seen[process] != f"queues.{_quoted(queue.name)}":
                raise reader.fail(
                    f"queues.{_quoted(queue.name)}",
                    f"makes process {process!r}, which clashes with {seen[process]}",
                )
    return tuple(queues)


def _parse_tunnel_watch(reader: _Reader) -> TunnelWatch:
    def number(key: str, default: float, minimum: float) -> Any:
        value = reader.get(f"tunnel_watch.{key}", default)
        if value < minimum:
            raise reader.fail(f"tunnel_watch.{key}", f"must be at least {minimum:g}, got {value}")
        return value

    statuses = tuple(reader.get("tunnel_watch.down_statuses", [402]))
    for status in statuses:
        if not 100 <= status <= 599:
            raise reader.fail("tunnel_watch.down_statuses", f"must hold HTTP status codes, got {status}")
    watch = TunnelWatch(
        enabled=bool(reader.get("tunnel_watch.enabled", True)),
        probe_interval=number("probe_interval", 5, 5),
        probe_timeout=float(number("probe_timeout", 5, 0.1)),
        failures=number("failures", 3, 1),
        confirm_interval=float(number("confirm_interval", 2, 0)),
        grace=number("grace", 20, 0),
        backoff_initial=number("backoff_initial", 15, 0),
        backoff_max=number("backoff_max", 300, 0),
        max_restarts_per_hour=number("max_restarts_per_hour", 6, 1),
        down_statuses=statuses,
    )
    if watch.backoff_max < watch.backoff_initial:
        raise reader.fail("tunnel_watch.backoff_max", "must be at least tunnel_watch.backoff_initial")
    return watch


def _parse_deploy(reader: _Reader, expand: _Expander, root: Path) -> Deploy:
    ladder = reader.get("deploy.retry_ladder", [30, 120, 300])
    for step in ladder:
        if step < 0:
            raise reader.fail("deploy.retry_ladder", f"must hold non-negative seconds, got {step}")
    web_dir = reader.get("deploy.web_dir", "apps/web")
    if PurePosixPath(web_dir).is_absolute() or ".." in PurePosixPath(web_dir).parts:
        raise reader.fail("deploy.web_dir", f"must be a path inside the worktree, got {web_dir!r}")
    return Deploy(
        repository=expand.path("deploy.repository", reader.get("deploy.repository", "{root}"), root),
        remote=reader.get("deploy.remote", "origin"),
        ref=reader.get("deploy.ref", "develop"),
        poll_interval=_positive(reader, "deploy.poll_interval", reader.get("deploy.poll_interval", 300), 1),
        jitter=_positive(reader, "deploy.jitter", reader.get("deploy.jitter", 0)),
        retry_ladder=tuple(ladder),
        pause_after_escalation=_positive(
            reader, "deploy.pause_after_escalation", reader.get("deploy.pause_after_escalation", 1800)
        ),
        escalation_command=reader.get("deploy.escalation_command", ""),
        lock_files=tuple(reader.get("deploy.lock_files", ["pyproject.toml", "poetry.lock"])),
        install_command=reader.get("deploy.install_command", ""),
        post_install_command=reader.get("deploy.post_install_command", ""),
        web_dir=web_dir,
        build_command=reader.get("deploy.build_command", ""),
        web_current=expand.path(
            "deploy.web_current", reader.get("deploy.web_current", "{run}/web-current"), root
        ),
        enabled=reader.get("deploy.enabled", True),
        check_interval=_positive(reader, "deploy.check_interval", reader.get("deploy.check_interval", 60)),
        prerequisite_timeout=float(reader.get("deploy.prerequisite_timeout", 15)),
    )
