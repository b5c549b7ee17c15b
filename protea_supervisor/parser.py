"""The pure parser: TOML layers (the shipped defaults, then host files) -> a Stack.

The schema (`schema.py`) checks keys, types and number bounds per layer; placeholders (`placeholders.py`)
expand exactly the documented names; what supervisord's config cannot carry (`carry.py`) is refused here,
with the file and the dotted key, so it never reaches a rendered file. Every refusal is one sentence.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor import carry
from protea_supervisor.errors import StackError
from protea_supervisor.hosts import HostSettings, host_problems
from protea_supervisor.placeholders import NAMES, PlaceholderError, expand, shown
from protea_supervisor.schema import ROLES, Reader, check_layer, merge, quoted
from protea_supervisor.stack import (
    ENV_NAME,
    NOTIFY_EVENTS,
    PROGRAM_NAME,
    RESERVED,
    SECRET_NAME,
    STOP_SIGNALS,
    BackupSettings,
    Control,
    Deploy,
    EnvSettings,
    HostFacts,
    LockSettings,
    Metrics,
    Monitor,
    NotifySettings,
    Paths,
    Probes,
    Program,
    Queue,
    Stack,
    TunnelWatch,
    Workers,
)

SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")


class Expander:
    """Placeholders and a leading ~, per key: `{stack_dir}` is the directory of the host file that set it."""

    def __init__(self, reader: Reader, host: HostFacts) -> None:
        self.reader = reader
        self.home = host.home
        self.values: dict[str, str] = {"python": host.python, "home": str(host.home)}

    def text(self, dotted: str, raw: str, extra: Mapping[str, str] | None = None) -> str:
        values = dict(self.values)
        source = self.reader.where(dotted.split("[", 1)[0])
        if source.startswith("/"):
            values["stack_dir"] = str(Path(source).parent)
        values.update(extra or {})
        allowed = tuple(n for n in NAMES if n in values or n == "stack_dir")
        try:
            return expand(raw, values, allowed)
        except PlaceholderError as why:
            raise self.reader.fail(dotted, str(why)) from None

    def path(self, dotted: str, raw: str, base: Path | None = None) -> Path:
        expanded = self.text(dotted, raw)
        if expanded == "~" or expanded.startswith("~/"):
            expanded = str(self.home) + expanded[1:]
        problem = carry.path_problem(expanded)
        if problem:
            raise self.reader.fail(dotted, problem)
        path = Path(expanded)
        if not path.is_absolute():
            if base is None:
                raise self.reader.fail(
                    dotted, f"must be an absolute path (or start with ~ or a placeholder), got {shown(raw)!r}"
                )
            path = base / path
        problem = carry.path_problem(str(path))
        if problem:
            raise self.reader.fail(dotted, problem)
        return path


def parse_stack(layers: list[tuple[str, Mapping[str, Any]]], host: HostFacts) -> Stack:
    """Build a Stack from TOML mappings, first the defaults, then host files; later layers win."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers:
        check_layer(layer, source)
        _no_nul(layer, source)
        merge(merged, layer, source, origin)
    sources = tuple(source for source, _ in layers)
    reader = Reader(merged, origin, sources)
    expand_ = Expander(reader, host)

    paths = _parse_paths(reader, expand_)
    root = paths.root
    env = EnvSettings(
        files=tuple(
            expand_.path(f"env.files[{i}]", f, root) for i, f in enumerate(reader.get("env.files", []))
        ),
        required=tuple(_env_names(reader, "env.required", reader.get("env.required", []))),
        require_jwt_secret=bool(reader.get("env.require_jwt_secret", False)),
    )
    control = _parse_control(reader)
    programs = tuple(_parse_program(reader, expand_, role, root) for role in ROLES)
    workers = Workers(
        # A template: each queue that uses it expands {queue} and is checked at this key.
        command=reader.get("workers.command"),
        stop_signal=_check_signal(reader, "workers.stop_signal", reader.get("workers.stop_signal", "TERM")),
        stop_grace=reader.get("workers.stop_grace", 300),
        startsecs=reader.get("workers.startsecs", 1),
        directory=expand_.path("workers.directory", reader.get("workers.directory", "{root}"), root),
        restart_delay=reader.get("workers.restart_delay", 0),
    )
    queues = _parse_queues(reader, expand_, workers)
    probes = Probes(
        api_ready_url=_check_url(reader, "probes.api_ready_url", reader.get("probes.api_ready_url", "")),
        api_ready_timeout=reader.get("probes.api_ready_timeout", 120),
        web_url=_check_url(reader, "probes.web_url", reader.get("probes.web_url", "")),
        web_timeout=reader.get("probes.web_timeout", 60),
        public_url=_check_url(reader, "probes.public_url", reader.get("probes.public_url", "")),
        ngrok_api_url=_check_url(reader, "probes.ngrok_api_url", reader.get("probes.ngrok_api_url", "")),
        infra_from_env=tuple(
            _env_names(reader, "probes.infra_from_env", reader.get("probes.infra_from_env", []))
        ),
        infra_timeout=reader.get("probes.infra_timeout", 180),
        start_timeout=reader.get("probes.start_timeout", 60),
    )
    deploy = _parse_deploy(reader, expand_, root, probes)
    lock = LockSettings(
        file=expand_.path("lock.file", reader.get("lock.file"), root),
        flock_timeout=float(reader.get("lock.flock_timeout", 5)),
    )
    tunnel_watch = _parse_tunnel_watch(reader)
    metrics = Metrics(
        bool(reader.get("metrics.enabled", True)),
        _check_host(reader, "metrics.host", reader.get("metrics.host", "127.0.0.1"), loopback_only=False),
        reader.get("metrics.port", 9108),
    )
    monitor = Monitor(
        rabbit_api=_check_url(
            reader, "monitor.rabbit_api", reader.get("monitor.rabbit_api", "http://127.0.0.1:15672")
        ),
        queue_prefix=reader.get("monitor.queue_prefix", "protea."),
        exempt=tuple(reader.get("monitor.exempt", ["protea.dead-letter"])),
        starved_after=reader.get("monitor.starved_after", 1800),
    )
    backup = BackupSettings(
        dir=expand_.path("backup.dir", reader.get("backup.dir", "~/Thesis2/backups"), root),
        keep=reader.get("backup.keep", 3),
        min_free_gb=float(reader.get("backup.min_free_gb", 60)),
        database_url_env=_env_names(
            reader, "backup.database_url_env", [reader.get("backup.database_url_env", "PROTEA_DB_URL")]
        )[0],
        extensions=tuple(
            _sql_names(reader, "backup.extensions", reader.get("backup.extensions", ["vector"]))
        ),
        check_tables=tuple(_sql_names(reader, "backup.check_tables", reader.get("backup.check_tables", []))),
        min_tables=reader.get("backup.min_tables", 1),
        jobs=reader.get("backup.jobs", 4),
    )
    notify = _parse_notify(reader)
    host_settings = _parse_host(reader, host, programs)
    name = reader.get("name", "protea")
    if not PROGRAM_NAME.fullmatch(name):
        raise reader.fail("name", f"must be lowercase letters, digits and dashes, got {shown(name)!r}")
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
        notify=notify,
        host=host_settings,
        python=host.python,
        origins=tuple(sorted(origin.items())),
    )


def _parse_host(reader: Reader, facts: HostFacts, programs: tuple[Program, ...]) -> HostSettings:
    settings = HostSettings(
        role=reader.get("host.role", "server"),
        name=reader.get("host.name", facts.hostname),
        declare_revision=bool(reader.get("host.declare_revision", False)),
        revision_guard=bool(reader.get("host.revision_guard", False)),
        db_url_env=_env_names(reader, "host.db_url_env", [reader.get("host.db_url_env", "PROTEA_DB_URL")])[0],
        migrations_dir=reader.get("host.migrations_dir", "alembic/versions"),
        heartbeat=bool(reader.get("host.heartbeat", False)),
        stale_after=reader.get("host.stale_after", 30),
    )
    for key, expected in host_problems(settings, [p.role for p in programs if p.enabled]):
        # A program left on is wrong because of the role: the file that made this host a node is named.
        raise reader.fail(key, expected, blame="host.role" if key.startswith("programs.") else "")
    return settings


def _no_nul(data: Any, source: str, prefix: str = "") -> None:
    """A NUL byte can reach no program, file name or config line: refused wherever it is."""
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{quoted(key)}"
            if "\0" in key:
                raise StackError(f"{source}: {dotted} holds a NUL byte in its name.")
            _no_nul(value, source, dotted + ".")
    elif isinstance(data, list):
        for item in data:
            _no_nul(item, source, prefix)
    elif isinstance(data, str) and "\0" in data:
        raise StackError(f"{source}: {prefix.rstrip('.')} holds a NUL byte, which no program can receive.")


def _parse_paths(reader: Reader, expand_: Expander) -> Paths:
    root = expand_.path("paths.root", reader.get("paths.root"))
    expand_.values["root"] = str(root)
    venv = expand_.path("paths.venv", reader.get("paths.venv"), root)
    expand_.values["venv"] = str(venv)
    logs = expand_.path("paths.logs", reader.get("paths.logs"), root)
    expand_.values["logs"] = str(logs)
    run = expand_.path("paths.run", reader.get("paths.run"), root)
    expand_.values["run"] = str(run)
    if len(str(run / "supervisor.sock").encode()) > 100:
        # AF_UNIX paths are limited to 108 bytes; supervisord would fail to bind much later.
        raise reader.fail("paths.run", f"is too long for a unix socket path ({shown(str(run), 60)})")
    return Paths(
        root=root, venv=venv, logs=logs, run=run, create_root=bool(reader.get("paths.create_root", False))
    )


def _parse_notify(reader: Reader) -> NotifySettings:
    events = reader.get("notify.events", list(NOTIFY_EVENTS))
    unknown = [e for e in events if e not in NOTIFY_EVENTS]
    if unknown:
        raise reader.fail(
            "notify.events", f"must hold events among {', '.join(NOTIFY_EVENTS)}, got {shown(unknown[0])!r}"
        )
    return NotifySettings(
        slack_url_env=tuple(
            _env_names(reader, "notify.slack_url_env", reader.get("notify.slack_url_env", []))
        ),
        json_url_env=tuple(_env_names(reader, "notify.json_url_env", reader.get("notify.json_url_env", []))),
        events=tuple(events),
        timeout=float(reader.get("notify.timeout", 5.0)),
        retries=reader.get("notify.retries", 3),
    )


def _env_names(reader: Reader, dotted: str, names: list[str]) -> list[str]:
    for name in names:
        if not ENV_NAME.fullmatch(name):
            raise reader.fail(dotted, f"must hold environment variable names, got {shown(name)!r}")
    return names


def _sql_names(reader: Reader, dotted: str, names: list[str]) -> list[str]:
    for name in names:
        if not SQL_NAME.fullmatch(name):
            raise reader.fail(
                dotted, f"must hold plain SQL names (letters, digits, _, $, -), got {shown(name)!r}"
            )
    return names


def _check_url(reader: Reader, dotted: str, url: str, allow_empty: bool = True) -> str:
    if not url and allow_empty:
        return url
    problem = carry.arg_problem(url)
    if problem or url != url.strip():
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}")
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is no IPv6 address
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535") from None
    if port == 0:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535")
    return url


def _check_host(reader: Reader, dotted: str, host: str, loopback_only: bool) -> str:
    """An address to bind. Empty or a wildcard would bind every interface: refused. With `loopback_only`,
    anything but a loopback address must be named as a literal address (an explicit choice)."""
    if not host or host != host.strip() or carry.arg_problem(host) or host in ("*", "0.0.0.0", "::"):
        raise reader.fail(
            dotted,
            f"must name one address to bind (127.0.0.1 or another), not {shown(host)!r}, which binds all",
        )
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if loopback_only or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise reader.fail(dotted, f"must be an IP address, got {shown(host)!r}") from None
    return host


def _check_signal(reader: Reader, dotted: str, value: str) -> str:
    if value not in STOP_SIGNALS:
        raise reader.fail(dotted, f"must be one of {', '.join(STOP_SIGNALS)}, got {shown(value)!r}")
    return value


def _check_command(reader: Reader, dotted: str, command: str, required: bool = True) -> str:
    """A command is split like a POSIX shell line (no comments: `#` and `;` are arguments like any other);
    its arguments reach the program exactly, and only a line break cannot be carried."""
    if not command.strip():
        if required:
            raise reader.fail(dotted, "must not be empty")
        return command
    try:
        argv = shlex.split(command)
    except ValueError as why:
        raise reader.fail(dotted, f"is not a valid command line ({why})") from None
    for arg in argv:
        problem = carry.arg_problem(arg)
        if problem:
            raise reader.fail(dotted, problem)
    if "\n" in command or "\r" in command:
        raise reader.fail(dotted, "holds a line break outside its arguments; a command is one line")
    return command


def queue_program_name(queue: str) -> str:
    """manage.sh's naming: drop the `protea.` prefix, dots become dashes, prefix `worker-`."""
    slug = queue.removeprefix("protea.").replace(".", "-").replace("_", "-").lower()
    return f"worker-{slug}"


def _parse_control(reader: Reader) -> Control:
    inet_port = reader.get("control.inet_port", 0)
    control = Control(
        inet_port=inet_port,
        inet_host=reader.get("control.inet_host", "127.0.0.1"),
        username=reader.get("control.username", ""),
        password_sha=reader.get("control.password_sha", ""),
        fast_reactions=bool(reader.get("control.fast_reactions", True)),
        operation_wait=float(reader.get("control.operation_wait", 900)),
        log_retention_days=reader.get("control.log_retention_days", 7),
    )
    if control.inet_port:
        _check_host(reader, "control.inet_host", control.inet_host, loopback_only=True)
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", control.username):
            raise reader.fail(
                "control.username",
                "must be set (letters, digits, _ . @ -) when control.inet_port is on",
                "control.inet_port",
            )
        if not re.fullmatch(r"\{SHA\}[0-9a-f]{40}", control.password_sha):
            raise reader.fail(
                "control.password_sha",
                "must be '{SHA}' followed by the 40-hex SHA-1 of the password when control.inet_port is on",
                "control.inet_port",
            )
    return control


def _parse_program(reader: Reader, expand_: Expander, role: str, root: Path) -> Program:
    key = f"programs.{role}"
    table = reader.get(key, {"command": ""})
    environment = table.get("environment", {})
    values = []
    for name, raw in environment.items():
        where = f"{key}.environment.{quoted(name)}"
        if not ENV_NAME.fullmatch(name):
            raise reader.fail(f"{key}.environment", f"has an invalid variable name {shown(name)!r}")
        if SECRET_NAME.search(name):
            raise reader.fail(
                where, "looks like a secret; put it in an env file (env.files), which is never rendered"
            )
        value = expand_.text(where, raw)
        problem = carry.env_problem(value)
        if problem:
            raise reader.fail(where, problem)
        values.append((name, value))
    enabled = table.get("enabled", True)
    command = _check_command(
        reader, f"{key}.command", expand_.text(f"{key}.command", table.get("command", "")), enabled
    )
    fallback = expand_.text(f"{key}.fallback_command", table.get("fallback_command", ""))
    requires_file = expand_.text(f"{key}.requires_file", table.get("requires_file", ""))
    if bool(fallback) != bool(requires_file):
        raise reader.fail(key, "needs both requires_file and fallback_command, or neither")
    problem = carry.arg_problem(requires_file)
    if problem:
        raise reader.fail(f"{key}.requires_file", problem)
    socket = _check_socket(reader, role, table.get("socket", ""))
    return Program(
        role=role,
        command=command,
        directory=expand_.path(f"{key}.directory", table.get("directory", "{root}"), root),
        environment=tuple(sorted(values)),
        stop_signal=_check_signal(reader, f"{key}.stop_signal", table.get("stop_signal", "TERM")),
        stop_grace=table.get("stop_grace", 10),
        startsecs=table.get("startsecs", 0 if role == "migrate" else 1),
        enabled=enabled,
        requires_file=requires_file,
        fallback_command=_check_command(reader, f"{key}.fallback_command", fallback, False),
        socket=socket,
    )


SOCKET = re.compile(r"tcp://([A-Za-z0-9.-]+):([0-9]{1,5})")


def _check_socket(reader: Reader, role: str, socket: str) -> str:
    """A socket supervisord holds for the program: tcp://host:port, for the API only."""
    key = f"programs.{role}.socket"
    if not socket:
        return ""
    if role != "api":
        raise reader.fail(
            key, "is for programs.api only (the one program served on a socket supervisord holds)"
        )
    match = SOCKET.fullmatch(socket)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise reader.fail(key, f"must be tcp://HOST:PORT with a port from 1 to 65535, got {shown(socket)!r}")
    return socket


def _parse_queues(reader: Reader, expand_: Expander, workers: Workers) -> tuple[Queue, ...]:
    tables: dict[str, dict[str, Any]] = reader.get("queues", {})
    if not tables:
        raise StackError(f"{reader.sources[-1]}: [queues] must name at least one queue.")
    seen: dict[str, str] = {role: f"programs.{role}" for role in ROLES}
    seen.update(
        {name: "protea-supervisor's own program of that name" for name in RESERVED if name not in seen}
    )
    queues = []
    for name, table in tables.items():
        key = f"queues.{quoted(name)}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise reader.fail(key, "must be a queue name of letters, digits, '.', '_' and '-'")
        program = table.get("program", queue_program_name(name))
        where = f"{key}.program" if "program" in table else key
        if not PROGRAM_NAME.fullmatch(program):
            raise reader.fail(where, f"must be lowercase letters, digits and dashes, got {shown(program)!r}")
        if program in seen:
            raise reader.fail(
                where, f"makes program {program!r}, which is already {seen[program]}; name another"
            )
        seen[program] = key
        processes = table.get("processes", 1)
        numbered = table.get("numbered", False)
        if processes > 1 and not numbered:
            raise reader.fail(
                f"{key}.processes",
                f"is {processes}, but an unnumbered queue runs one process named {program}; "
                "set numbered = true to run several",
            )
        singleton = bool(table.get("singleton", False))
        if singleton and processes > 1:
            raise reader.fail(
                f"{key}.processes",
                f"is {processes}, but a singleton queue has at most one consumer on any host",
            )
        command_key = f"{key}.command" if "command" in table else "workers.command"
        command = expand_.text(command_key, table.get("command", workers.command), {"queue": name})
        queues.append(
            Queue(
                name=name,
                program=program,
                processes=processes,
                numbered=numbered,
                stop_grace=table.get("stop_grace", workers.stop_grace),
                command=_check_command(reader, command_key, command),
                starved_after=table.get("starved_after", reader.get("monitor.starved_after", 1800)),
                singleton=singleton,
            )
        )
    for queue in queues:
        for process in queue.process_names():
            if process in seen and seen[process] != f"queues.{quoted(queue.name)}":
                raise reader.fail(
                    f"queues.{quoted(queue.name)}",
                    f"makes process {process!r}, which clashes with {seen[process]}",
                )
    return tuple(queues)


def _parse_tunnel_watch(reader: Reader) -> TunnelWatch:
    def get(key: str, default: Any) -> Any:
        return reader.get(f"tunnel_watch.{key}", default)

    watch = TunnelWatch(
        enabled=bool(get("enabled", True)),
        probe_interval=get("probe_interval", 5),
        probe_timeout=float(get("probe_timeout", 2)),
        failures=get("failures", 3),
        confirm_interval=float(get("confirm_interval", 0.5)),
        grace=get("grace", 20),
        backoff_initial=get("backoff_initial", 15),
        backoff_max=get("backoff_max", 300),
        max_restarts_per_hour=get("max_restarts_per_hour", 6),
        down_statuses=tuple(get("down_statuses", [402])),
    )
    if watch.backoff_max < watch.backoff_initial:
        raise reader.fail("tunnel_watch.backoff_max", "must be at least tunnel_watch.backoff_initial")
    return watch


def _parse_deploy(reader: Reader, expand_: Expander, root: Path, probes: Probes) -> Deploy:
    web_dir = reader.get("deploy.web_dir", "apps/web")
    if not web_dir or PurePosixPath(web_dir).is_absolute() or ".." in PurePosixPath(web_dir).parts:
        raise reader.fail("deploy.web_dir", f"must be a path inside the worktree, got {shown(web_dir)!r}")
    for key in ("remote", "ref"):
        value = reader.get(f"deploy.{key}", "origin" if key == "remote" else "develop")
        if not value or value.startswith("-") or carry.arg_problem(value) or value != value.strip():
            raise reader.fail(f"deploy.{key}", f"must be a git {key} name, got {shown(value)!r}")
    return Deploy(
        repository=expand_.path("deploy.repository", reader.get("deploy.repository", "{root}"), root),
        remote=reader.get("deploy.remote", "origin"),
        ref=reader.get("deploy.ref", "develop"),
        poll_interval=reader.get("deploy.poll_interval", 300),
        jitter=reader.get("deploy.jitter", 0),
        retry_ladder=tuple(reader.get("deploy.retry_ladder", [30, 120, 300])),
        pause_after_escalation=reader.get("deploy.pause_after_escalation", 1800),
        escalation_command=reader.get("deploy.escalation_command", ""),
        lock_files=tuple(reader.get("deploy.lock_files", ["pyproject.toml", "poetry.lock"])),
        install_command=reader.get("deploy.install_command", ""),
        post_install_command=reader.get("deploy.post_install_command", ""),
        web_dir=web_dir,
        build_command=reader.get("deploy.build_command", ""),
        web_current=expand_.path(
            "deploy.web_current", reader.get("deploy.web_current", "{run}/web-current"), root
        ),
        enabled=reader.get("deploy.enabled", True),
        check_interval=reader.get("deploy.check_interval", 60),
        prerequisite_timeout=float(reader.get("deploy.prerequisite_timeout", 15)),
        **_parse_canary(reader, expand_, probes),
    )


def _parse_canary(reader: Reader, expand_: Expander, probes: Probes) -> dict[str, str]:
    """deploy.api_canary_command and deploy.api_canary_url: both or neither. The canary listens beside the
    serving API, so its URL must not be the API's own address (it could never bind, and the revision would
    be blamed for it)."""
    key = "deploy.api_canary_command"
    command = _check_command(reader, key, expand_.text(key, reader.get(key, "")), required=False)
    url = _check_url(reader, "deploy.api_canary_url", reader.get("deploy.api_canary_url", ""))
    if bool(command.strip()) != bool(url):
        raise reader.fail("deploy", "needs both api_canary_command and api_canary_url, or neither")
    if url and probes.api_ready_url and _address(url) == _address(probes.api_ready_url):
        raise reader.fail(
            "deploy.api_canary_url",
            f"must name a port of its own, not the serving API's ({_address(url)}, probes.api_ready_url)",
        )
    return {"api_canary_command": command.strip(), "api_canary_url": url}


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
