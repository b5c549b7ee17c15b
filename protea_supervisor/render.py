"""Rendering: stack -> supervisord config text. Pure; the CLI writes the result.

Escaping for supervisord's syntax lives in named template filters (`pct`, `envpairs`). Every rendered text
can be checked with supervisor's own parser (`check_config`) before anything writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import tempfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from protea_supervisor.errors import RenderError
from protea_supervisor.stack import Program, Queue, Stack

PRIORITY = {"migrate": 10, "api": 100, "worker": 300, "web": 500, "tunnel": 900, "deploy-tick": 950}
# A deploy tick may build the frontend and wait for workers to finish their jobs before it is done.
DEPLOY_TICK_GRACE = 1800
# supervisord's default of 10 loses events at boot once a stack has ~10 programs (supervisor-facts Q2).
LISTENER_BUFFER = 1024
TEMPLATE = "supervisord.conf.j2"
LOG_MAXBYTES = "50MB"
LOG_BACKUPS = 5


@dataclass(frozen=True)
class ProgramBlock:
    """One [program:x] section, with values still unescaped; the template escapes them."""

    name: str
    command: str
    directory: str
    environment: tuple[tuple[str, str], ...]
    priority: int
    startsecs: int
    autorestart: str
    exitcodes: str
    stopsignal: str
    stopwaitsecs: int
    log_dir: str
    # Written as is: supervisord expands %(program_name)s and %(process_num)d in it.
    log_name: str
    numprocs: int
    numbered: bool
    # None: supervisord's default (3). A watched tunnel gets 0: the watchdog is its only restarter.
    startretries: int | None = None


@dataclass(frozen=True)
class ListenerBlock:
    """One [eventlistener:x] section."""

    name: str
    command: str
    events: str
    buffer_size: int
    log_dir: str
    environment: tuple[tuple[str, str], ...]


def listener_argv(exe: Sequence[str], name: str) -> list[str]:
    """The listener's console script beside protea-supervisor's, or its module when run as `-m`."""
    if len(exe) == 1:
        return [str(PurePosixPath(exe[0]).parent / f"protea-supervisor-{name}")]
    return [*exe[:-1], f"protea_supervisor.listeners.{name.replace('-', '_')}"]


def tunnel_watched(stack: Stack) -> bool:
    tunnel = stack.program("tunnel")
    probes = stack.probes.public_url or stack.probes.ngrok_api_url
    return tunnel.enabled and stack.tunnel_watch.enabled and bool(probes)


def listener_blocks(stack: Stack, exe: Sequence[str]) -> list[ListenerBlock]:
    stack_args = ["--stack", stack.choice] if stack.choice else []
    # TICK_5: while a run waits, the gate re-reads supervisord's live process list and checks its deadline.
    listeners = [("gate", "TICK_5,PROCESS_STATE,REMOTE_COMMUNICATION")]
    if tunnel_watched(stack):
        listeners.append(("tunnel-watch", "TICK_5,PROCESS_STATE,REMOTE_COMMUNICATION"))
    if stack.deploy.enabled:
        listeners.append(("deploy-timer", "TICK_5,PROCESS_STATE,REMOTE_COMMUNICATION"))
    if stack.metrics.enabled:
        listeners.append(("metrics", "PROCESS_STATE"))
    return [
        ListenerBlock(
            name=name,
            command=wrapper_command(
                stack, exe, " ".join(shlex.quote(a) for a in [*listener_argv(exe, name), *stack_args])
            ),
            events=events,
            buffer_size=LISTENER_BUFFER,
            log_dir=str(stack.paths.logs),
            environment=(("PROTEA_STACK_DIGEST", listener_digest(stack)),),
        )
        for name, events in listeners
    ]


def listener_digest(stack: Stack) -> str:
    """The listeners read the stack file when they start. A hash of it in their environment makes their
    config differ whenever the stack does, so `reload` restarts them with the new settings. Worker counts
    are left out (only whether a queue runs at all), so `scale` leaves them alone."""
    queues = tuple((q.name, q.program, q.processes > 0) for q in stack.queues)
    material = repr(replace(stack, queues=())) + repr(queues)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]


def pct(value: object) -> str:
    """supervisord expands %(name)s in most values: a literal % must be written %%."""
    return str(value).replace("%", "%%")


def pct_logfile(value: object) -> str:
    """A program's stdout_logfile is expanded twice by supervisord (4.3.0 options.py), so % becomes %%%%."""
    return str(value).replace("%", "%%%%")


def envpairs(pairs: Iterable[tuple[str, str]]) -> str:
    """environment= value: supervisord splits it with non-POSIX shlex, with no escape character."""
    rendered = []
    for key, value in pairs:
        quote = "'" if '"' in value else '"'
        quoted_ends = bool(value) and (value[0] in "'\"" or value[-1] in "'\"")
        if ('"' in value and "'" in value) or quoted_ends:
            raise RenderError(
                f"environment {key}: a value with quotes at its ends or of both kinds cannot be "
                "written in environment=; put it in an env file."
            )
        if " ;" in value or " #" in value or "\t;" in value or "\t#" in value or "\n" in value:
            raise RenderError(
                f"environment {key}: supervisord would cut this value at ';' or '#'; put it in an env file."
            )
        rendered.append(f"{key}={quote}{value}{quote}")
    return pct(",".join(rendered))


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("protea_supervisor.templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pct"] = pct
    env.filters["pct_logfile"] = pct_logfile
    env.filters["envpairs"] = envpairs
    return env


def wrapper_command(stack: Stack, exe: Sequence[str], command: str, program: Program | None = None) -> str:
    """The exec wrapper loads the env files at each start and execs the command (same pid)."""
    args = [*exe, "exec"]
    for env_file in stack.env.files:
        args += ["--env-file", str(env_file)]
    for name in stack.env.required:
        args += ["--require", name]
    if stack.env.require_jwt_secret:
        args.append("--require-jwt-secret")
    if program is not None and program.requires_file:
        args += ["--requires-file", program.requires_file, "--fallback", program.fallback_command]
    return " ".join(shlex.quote(a) for a in args) + " -- " + command


def program_blocks(stack: Stack, exe: Sequence[str], revision: str = "") -> list[ProgramBlock]:
    """Every [program:x]; with `revision`, the programs that run PROTEA's code get PROTEA_REVISION."""
    logs = str(stack.paths.logs)
    stamp = (("PROTEA_REVISION", revision),) if revision else ()
    blocks = []
    for program in stack.programs:
        if not program.enabled:
            continue
        oneshot = program.role == "migrate"
        # The watchdog is the only thing that restarts a watched tunnel (with backoff and a budget): no
        # autorestart, and no retries of a start that exits within startsecs (it goes FATAL at once).
        watched = program.role == "tunnel" and tunnel_watched(stack)
        restart = "false" if oneshot or watched else "true"
        blocks.append(
            ProgramBlock(
                name=program.role,
                command=wrapper_command(stack, exe, program.command, program),
                directory=str(program.directory),
                environment=program.environment + (stamp if program.role != "tunnel" else ()),
                priority=PRIORITY[program.role],
                startsecs=program.startsecs,
                autorestart=restart,
                exitcodes="0",
                stopsignal=program.stop_signal,
                stopwaitsecs=program.stop_grace,
                log_dir=logs,
                log_name=f"{program.role}.log",
                numprocs=1,
                numbered=False,
                startretries=0 if watched else None,
            )
        )
    blocks.extend(_queue_block(stack, exe, queue, stamp) for queue in stack.queues if queue.processes)
    blocks.append(_deploy_tick_block(stack, exe))
    return sorted(blocks, key=lambda b: b.priority)


def _deploy_tick_block(stack: Stack, exe: Sequence[str]) -> ProgramBlock:
    """The one-shot the deploy timer starts: `protea-supervisor tick`. It loads the env files itself."""
    stack_args = ["--stack", stack.choice] if stack.choice else []
    return ProgramBlock(
        name="deploy-tick",
        command=" ".join(shlex.quote(a) for a in [*exe, *stack_args, "tick"]),
        # The run dir always exists; the worktree may have vanished, and the tick recreates it.
        directory=str(stack.paths.run),
        environment=(),
        priority=PRIORITY["deploy-tick"],
        startsecs=0,
        autorestart="false",
        exitcodes="0,10",
        stopsignal="TERM",
        stopwaitsecs=DEPLOY_TICK_GRACE,
        log_dir=str(stack.paths.logs),
        log_name="deploy-tick.log",
        numprocs=1,
        numbered=False,
    )


def _queue_block(
    stack: Stack, exe: Sequence[str], queue: Queue, stamp: tuple[tuple[str, str], ...] = ()
) -> ProgramBlock:
    return ProgramBlock(
        name=queue.program,
        command=wrapper_command(stack, exe, queue.command),
        directory=str(stack.workers.directory),
        environment=stamp,
        priority=PRIORITY["worker"],
        startsecs=stack.workers.startsecs,
        autorestart="true",
        # 143: the worker ran out of shutdown grace, requeued its job and exited on purpose.
        exitcodes="0,143",
        stopsignal=stack.workers.stop_signal,
        stopwaitsecs=queue.stop_grace,
        log_dir=str(stack.paths.logs),
        log_name="%(program_name)s-%(process_num)d.log" if queue.numbered else f"{queue.program}.log",
        numprocs=queue.processes,
        numbered=queue.numbered,
    )


def render(stack: Stack, exe: Sequence[str], revision: str = "") -> str:
    """The supervisord config for `stack`; `exe` is the argv prefix that runs protea-supervisor; `revision`
    is the deployed revision, given to every program that runs PROTEA's code as PROTEA_REVISION."""
    context = {
        "stack": stack,
        "programs": program_blocks(stack, exe, revision),
        "listeners": listener_blocks(stack, exe),
        # Numbered queues only: an unnumbered worker cannot grow without renaming its running process.
        "worker_groups": [q.program for q in stack.queues if q.processes and q.numbered],
        "log_maxbytes": LOG_MAXBYTES,
        "log_backups": LOG_BACKUPS,
    }
    try:
        return template_env().get_template(TEMPLATE).render(**context)
    except jinja2.TemplateError as why:
        raise RenderError(f"template {TEMPLATE}: {why}") from None


def check_config(text: str, assume_dirs: Collection[Path] = ()) -> Any:
    """Parse `text` with supervisor's own ServerOptions, from a file written the way the config is written
    and opened the way supervisord opens it (so a carriage return breaks a line exactly as it would there).
    Returns the parsed options; raises RenderError with supervisord's words if it refuses.

    supervisord requires log directories to exist. `assume_dirs` are directories a dry run would create
    but must not: paths under them count as existing for this check only.
    """
    from supervisor.options import ServerOptions

    with tempfile.TemporaryDirectory(prefix="protea-check-") as tmp:
        path = Path(tmp) / "supervisord.conf"
        with path.open("w", encoding="utf-8") as handle:
            handle.write(text)
        options = ServerOptions()
        try:
            with _assuming(assume_dirs):
                options.read_config(str(path))
        except ValueError as why:
            first = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
            raise RenderError(f"supervisord would refuse the rendered config: {first}") from None
    return options


@contextlib.contextmanager
def _assuming(dirs: Collection[Path]) -> Iterator[None]:
    """Make supervisor's directory checks accept paths under `dirs` for the duration of one parse. The CLI
    is single-threaded, and the originals are put back whatever happens."""
    if not dirs:
        yield
        return
    from supervisor import datatypes, options

    roots = [str(d) for d in dirs]
    real_dirpath, real_directory = datatypes.existing_dirpath, datatypes.existing_directory

    def under(value: str) -> bool:
        return any(value == root or value.startswith(root.rstrip("/") + "/") for root in roots)

    def dirpath(value: str) -> str:
        return value if under(os.path.dirname(os.path.expanduser(value))) else str(real_dirpath(value))

    def directory(value: str) -> str:
        return value if under(os.path.expanduser(value)) else str(real_directory(value))

    patched = [
        (datatypes, "existing_dirpath", dirpath),
        (options, "existing_dirpath", dirpath),
        (datatypes, "existing_directory", directory),
        (options, "existing_directory", directory),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name, replacement in patched:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
