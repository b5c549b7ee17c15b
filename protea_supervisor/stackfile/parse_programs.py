"""The stack parser's programs (migrate, api, web, tunnel) and queues: their commands, sockets, process
names and counts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile import carry
from protea_supervisor.stackfile.parse_checks import Expander, check_command, check_signal
from protea_supervisor.stackfile.placeholders import shown
from protea_supervisor.stackfile.schema import DEFAULTS, ROLES, Reader, quoted
from protea_supervisor.stackfile.stack import (
    ENV_NAME,
    PROGRAM_NAME,
    RESERVED,
    SECRET_NAME,
    Autoscale,
    Program,
    Queue,
    Workers,
)


def queue_program_name(queue: str) -> str:
    """manage.sh's naming: drop the `protea.` prefix, dots become dashes, prefix `worker-`."""
    slug = queue.removeprefix("protea.").replace(".", "-").replace("_", "-").lower()
    return f"worker-{slug}"


def parse_program(reader: Reader, expand_: Expander, role: str, root: Path) -> Program:
    key = f"programs.{role}"
    table = reader.get(key, {"command": ""})

    def own(name: str) -> Any:
        return table.get(name, DEFAULTS[f"programs.*.{name}"])

    environment = own("environment")
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
    enabled = own("enabled")
    command = check_command(
        reader,
        f"{key}.command",
        expand_.text(f"{key}.command", own("command")),
        enabled,
    )
    fallback = expand_.text(f"{key}.fallback_command", own("fallback_command"))
    requires_file = expand_.text(f"{key}.requires_file", own("requires_file"))
    if bool(fallback) != bool(requires_file):
        raise reader.fail(key, "needs both requires_file and fallback_command, or neither")
    problem = carry.arg_problem(requires_file)
    if problem:
        raise reader.fail(f"{key}.requires_file", problem)
    socket = check_socket(reader, role, own("socket"))
    return Program(
        role=role,
        command=command,
        directory=expand_.path(f"{key}.directory", own("directory"), root),
        environment=tuple(sorted(values)),
        stop_signal=check_signal(reader, f"{key}.stop_signal", own("stop_signal")),
        stop_grace=own("stop_grace"),
        startsecs=table.get("startsecs", 0 if role == "migrate" else 1),
        enabled=enabled,
        requires_file=requires_file,
        fallback_command=check_command(reader, f"{key}.fallback_command", fallback, False),
        socket=socket,
    )


SOCKET = re.compile(r"tcp://([A-Za-z0-9.-]+):([0-9]{1,5})")


def check_socket(reader: Reader, role: str, socket: str) -> str:
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


def parse_queues(reader: Reader, expand_: Expander, workers: Workers) -> tuple[Queue, ...]:
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
        processes = table.get("processes", DEFAULTS["queues.*.processes"])
        numbered = table.get("numbered", DEFAULTS["queues.*.numbered"])
        if processes > 1 and not numbered:
            raise reader.fail(
                f"{key}.processes",
                f"is {processes}, but an unnumbered queue runs one process named {program}; "
                "set numbered = true to run several",
            )
        singleton = bool(table.get("singleton", DEFAULTS["queues.*.singleton"]))
        if singleton and processes > 1:
            raise reader.fail(
                f"{key}.processes",
                f"is {processes}, but a singleton queue has at most one consumer on any host",
            )
        command_key = f"{key}.command" if "command" in table else "workers.command"
        command = expand_.text(command_key, table.get("command", workers.command), {"queue": name})
        autoscale = parse_autoscale(reader, key, table, numbered, singleton)
        queues.append(
            Queue(
                name=name,
                program=program,
                processes=processes,
                numbered=numbered,
                stop_grace=table.get("stop_grace", workers.stop_grace),
                command=check_command(reader, command_key, command),
                starved_after=table.get("starved_after", reader.get("monitor.starved_after")),
                singleton=singleton,
                autoscale=autoscale,
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


def parse_autoscale(
    reader: Reader, key: str, table: dict[str, Any], numbered: bool, singleton: bool
) -> Autoscale | None:
    """`queues."<name>".autoscale`: present (even empty) turns autoscaling on, with the schema's defaults."""
    if "autoscale" not in table:
        return None
    where = f"{key}.autoscale"
    if singleton:
        raise reader.fail(where, "cannot scale a singleton queue (at most one consumer on any host)")
    if not numbered:
        raise reader.fail(where, "needs numbered = true (its processes are <program>-1..N)")
    values = {
        name: table["autoscale"].get(name, DEFAULTS[f"queues.*.autoscale.{name}"]) for name in AUTOSCALE_KEYS
    }
    settings = Autoscale(**values)
    if settings.min > settings.max:
        raise reader.fail(f"{where}.min", f"is {settings.min}, more than autoscale.max ({settings.max})")
    return settings


AUTOSCALE_KEYS = ("min", "max", "target_backlog", "scale_up_delay", "scale_down_window", "cooldown")
