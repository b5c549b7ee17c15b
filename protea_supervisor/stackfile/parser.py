"""The pure parser: TOML layers (the shipped defaults, then host files) -> a Stack.

The schema (`schema.py`) checks keys, types and number bounds per layer; placeholders (`placeholders.py`)
expand exactly the documented names; what supervisord's config cannot carry (`carry.py`) is refused here,
with the file and the dotted key, so it never reaches a rendered file. Every refusal is one sentence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor.stackfile import carry
from protea_supervisor.stackfile.host import HostSettings, host_problems
from protea_supervisor.stackfile.parse_checks import (
    Expander,
    check_command,
    check_host,
    check_signal,
    check_url,
    env_names,
    no_nul,
    sql_names,
)
from protea_supervisor.stackfile.parse_programs import parse_program, parse_queues
from protea_supervisor.stackfile.placeholders import shown
from protea_supervisor.stackfile.schema import ROLES, Reader, check_layer, merge
from protea_supervisor.stackfile.stack import (
    NOTIFY_EVENTS,
    PROGRAM_NAME,
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
    Stack,
    TunnelWatch,
    Workers,
)


def parse_stack(layers: list[tuple[str, Mapping[str, Any]]], host: HostFacts) -> Stack:
    """Build a Stack from TOML mappings, first the defaults, then host files; later layers win."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers:
        check_layer(layer, source)
        no_nul(layer, source)
        merge(merged, layer, source, origin)
    sources = tuple(source for source, _ in layers)
    reader = Reader(merged, origin, sources)
    expand_ = Expander(reader, host)

    paths = _parse_paths(reader, expand_)
    root = paths.root
    env = EnvSettings(
        files=tuple(expand_.path(f"env.files[{i}]", f, root) for i, f in enumerate(reader.get("env.files"))),
        required=tuple(env_names(reader, "env.required", reader.get("env.required"))),
        require_jwt_secret=bool(reader.get("env.require_jwt_secret")),
    )
    control = _parse_control(reader)
    programs = tuple(parse_program(reader, expand_, role, root) for role in ROLES)
    workers = Workers(
        # A template: each queue that uses it expands {queue} and is checked at this key.
        command=reader.get("workers.command"),
        stop_signal=check_signal(reader, "workers.stop_signal", reader.get("workers.stop_signal")),
        stop_grace=reader.get("workers.stop_grace"),
        startsecs=reader.get("workers.startsecs"),
        directory=expand_.path("workers.directory", reader.get("workers.directory"), root),
        restart_delay=reader.get("workers.restart_delay"),
    )
    queues = parse_queues(reader, expand_, workers)
    probes = Probes(
        api_ready_url=check_url(reader, "probes.api_ready_url", reader.get("probes.api_ready_url")),
        api_ready_timeout=reader.get("probes.api_ready_timeout"),
        web_url=check_url(reader, "probes.web_url", reader.get("probes.web_url")),
        web_timeout=reader.get("probes.web_timeout"),
        public_url=check_url(reader, "probes.public_url", reader.get("probes.public_url")),
        ngrok_api_url=check_url(reader, "probes.ngrok_api_url", reader.get("probes.ngrok_api_url")),
        infra_from_env=tuple(env_names(reader, "probes.infra_from_env", reader.get("probes.infra_from_env"))),
        infra_timeout=reader.get("probes.infra_timeout"),
        start_timeout=reader.get("probes.start_timeout"),
    )
    deploy = _parse_deploy(reader, expand_, root, probes)
    lock = LockSettings(
        file=expand_.path("lock.file", reader.get("lock.file"), root),
        flock_timeout=float(reader.get("lock.flock_timeout")),
    )
    tunnel_watch = _parse_tunnel_watch(reader)
    metrics = Metrics(
        bool(reader.get("metrics.enabled")),
        check_host(reader, "metrics.host", reader.get("metrics.host"), loopback_only=False),
        reader.get("metrics.port"),
    )
    monitor = Monitor(
        rabbit_api=check_url(reader, "monitor.rabbit_api", reader.get("monitor.rabbit_api")),
        queue_prefix=reader.get("monitor.queue_prefix"),
        exempt=tuple(reader.get("monitor.exempt")),
        starved_after=reader.get("monitor.starved_after"),
    )
    backup = BackupSettings(
        dir=expand_.path("backup.dir", reader.get("backup.dir"), root),
        keep=reader.get("backup.keep"),
        min_free_gb=float(reader.get("backup.min_free_gb")),
        database_url_env=env_names(
            reader, "backup.database_url_env", [reader.get("backup.database_url_env")]
        )[0],
        extensions=tuple(sql_names(reader, "backup.extensions", reader.get("backup.extensions"))),
        check_tables=tuple(sql_names(reader, "backup.check_tables", reader.get("backup.check_tables"))),
        min_tables=reader.get("backup.min_tables"),
        jobs=reader.get("backup.jobs"),
    )
    notify = _parse_notify(reader)
    host_settings = _parse_host(reader, host, programs)
    name = reader.get("name")
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
        role=reader.get("host.role"),
        name=reader.get("host.name", facts.hostname),
        declare_revision=bool(reader.get("host.declare_revision")),
        revision_guard=bool(reader.get("host.revision_guard")),
        db_url_env=env_names(reader, "host.db_url_env", [reader.get("host.db_url_env")])[0],
        amqp_url_env=env_names(reader, "host.amqp_url_env", [reader.get("host.amqp_url_env")])[0],
        migrations_dir=reader.get("host.migrations_dir"),
        heartbeat=bool(reader.get("host.heartbeat")),
        stale_after=reader.get("host.stale_after"),
    )
    for key, expected in host_problems(settings, [p.role for p in programs if p.enabled]):
        # A program left on is wrong because of the role: the file that made this host a node is named.
        raise reader.fail(key, expected, blame="host.role" if key.startswith("programs.") else "")
    return settings


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
    return Paths(root=root, venv=venv, logs=logs, run=run, create_root=bool(reader.get("paths.create_root")))


def _parse_notify(reader: Reader) -> NotifySettings:
    events = reader.get("notify.events", list(NOTIFY_EVENTS))
    unknown = [e for e in events if e not in NOTIFY_EVENTS]
    if unknown:
        raise reader.fail(
            "notify.events", f"must hold events among {', '.join(NOTIFY_EVENTS)}, got {shown(unknown[0])!r}"
        )
    return NotifySettings(
        slack_url_env=tuple(env_names(reader, "notify.slack_url_env", reader.get("notify.slack_url_env"))),
        json_url_env=tuple(env_names(reader, "notify.json_url_env", reader.get("notify.json_url_env"))),
        events=tuple(events),
        timeout=float(reader.get("notify.timeout")),
        retries=reader.get("notify.retries"),
    )


def _parse_control(reader: Reader) -> Control:
    inet_port = reader.get("control.inet_port")
    control = Control(
        inet_port=inet_port,
        inet_host=reader.get("control.inet_host"),
        username=reader.get("control.username"),
        password_sha=reader.get("control.password_sha"),
        fast_reactions=bool(reader.get("control.fast_reactions")),
        operation_wait=float(reader.get("control.operation_wait")),
        log_retention_days=reader.get("control.log_retention_days"),
    )
    if control.inet_port:
        check_host(reader, "control.inet_host", control.inet_host, loopback_only=True)
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


def _parse_tunnel_watch(reader: Reader) -> TunnelWatch:
    def get(key: str) -> Any:
        return reader.get(f"tunnel_watch.{key}")

    watch = TunnelWatch(
        enabled=bool(get("enabled")),
        probe_interval=get("probe_interval"),
        probe_timeout=float(get("probe_timeout")),
        failures=get("failures"),
        confirm_interval=float(get("confirm_interval")),
        grace=get("grace"),
        backoff_initial=get("backoff_initial"),
        backoff_max=get("backoff_max"),
        max_restarts_per_hour=get("max_restarts_per_hour"),
        down_statuses=tuple(get("down_statuses")),
    )
    if watch.backoff_max < watch.backoff_initial:
        raise reader.fail("tunnel_watch.backoff_max", "must be at least tunnel_watch.backoff_initial")
    return watch


def _parse_deploy(reader: Reader, expand_: Expander, root: Path, probes: Probes) -> Deploy:
    web_dir = reader.get("deploy.web_dir")
    if not web_dir or PurePosixPath(web_dir).is_absolute() or ".." in PurePosixPath(web_dir).parts:
        raise reader.fail("deploy.web_dir", f"must be a path inside the worktree, got {shown(web_dir)!r}")
    for key in ("remote", "ref"):
        value = reader.get(f"deploy.{key}")
        if not value or value.startswith("-") or carry.arg_problem(value) or value != value.strip():
            raise reader.fail(f"deploy.{key}", f"must be a git {key} name, got {shown(value)!r}")

    def shell(key: str) -> str:
        """A command run with bash: placeholders are expanded as in a program's command ({{ for a brace)."""
        return expand_.text(f"deploy.{key}", reader.get(f"deploy.{key}"))

    return Deploy(
        repository=expand_.path("deploy.repository", reader.get("deploy.repository"), root),
        remote=reader.get("deploy.remote"),
        ref=reader.get("deploy.ref"),
        poll_interval=reader.get("deploy.poll_interval"),
        jitter=reader.get("deploy.jitter"),
        retry_ladder=tuple(reader.get("deploy.retry_ladder")),
        pause_after_escalation=reader.get("deploy.pause_after_escalation"),
        escalation_command=shell("escalation_command"),
        lock_files=tuple(reader.get("deploy.lock_files")),
        install_command=shell("install_command"),
        post_install_command=shell("post_install_command"),
        web_dir=web_dir,
        build_command=shell("build_command"),
        web_current=expand_.path("deploy.web_current", reader.get("deploy.web_current"), root),
        enabled=reader.get("deploy.enabled"),
        check_interval=reader.get("deploy.check_interval"),
        prerequisite_timeout=float(reader.get("deploy.prerequisite_timeout")),
        **_parse_canary(reader, expand_, probes),
    )


def _parse_canary(reader: Reader, expand_: Expander, probes: Probes) -> dict[str, str]:
    """deploy.api_canary_command and deploy.api_canary_url: both or neither. The canary listens beside the
    serving API, so its URL must not be the API's own address (it could never bind, and the revision would
    be blamed for it)."""
    key = "deploy.api_canary_command"
    command = check_command(reader, key, expand_.text(key, reader.get(key)), required=False)
    url = check_url(reader, "deploy.api_canary_url", reader.get("deploy.api_canary_url"))
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
