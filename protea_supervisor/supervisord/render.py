"""Rendering: stack -> supervisord config text. Pure; the CLI writes the result.

`blocks` returns the sections as data (every command as its argv, with the dotted keys it came from);
the template writes them, with escaping in named filters (`cmdline`, `pct`, `pct_logfile`, `envpairs`).
`readback.verify` reads the written text back with supervisord's own parser and compares it with the blocks.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import PurePosixPath

import jinja2

from protea_supervisor.errors import RenderError
from protea_supervisor.stackfile.carry import command_line, env_problem
from protea_supervisor.stackfile.host import REFUSALS, REFUSED_EXIT
from protea_supervisor.stackfile.schema import quoted
from protea_supervisor.stackfile.stack import Program, Queue, Stack

PRIORITY = {"migrate": 10, "api": 100, "api-canary": 110, "worker": 300, "web": 500, "tunnel": 900,
            "deploy-tick": 950}  # fmt: skip
CANARY = "api-canary"
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
    argv: tuple[str, ...]
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
    # tcp://host:port: an [fcgi-program:x]; supervisord holds the socket and passes it on fd 0.
    socket: str = ""
    # Which dotted key of the stack each setting came from (command, directory, ...), for refusals.
    keys: tuple[tuple[str, str], ...] = ()

    def process_names(self) -> tuple[str, ...]:
        if self.numbered:
            return tuple(f"{self.name}-{n}" for n in range(1, self.numprocs + 1))
        return (self.name,)


@dataclass(frozen=True)
class ListenerBlock:
    """One [eventlistener:x] section."""

    name: str
    argv: tuple[str, ...]
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


# Every listener protea-supervisor may render (which ones a stack has depends on its settings).


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
    if stack.host.heartbeat:
        listeners.append(("heartbeat", "TICK_5,PROCESS_STATE"))
    if any(q.autoscale for q in stack.queues):
        listeners.append(("autoscaler", "TICK_5"))
    return [
        ListenerBlock(
            name=name,
            argv=wrapper_argv(stack, exe, [*listener_argv(exe, name), *stack_args]),
            events=events,
            buffer_size=LISTENER_BUFFER,
            log_dir=str(stack.paths.logs),
            environment=(("PROTEA_STACK_DIGEST", listener_digest(stack)),)
            + ((("PROTEA_AUTOSCALE_DIGEST", autoscale_digest(stack)),) if name == "autoscaler" else ()),
        )
        for name, events in listeners
    ]


def autoscale_digest(stack: Stack) -> str:
    """The autoscaler reads the queues' autoscale settings (not their counts, which `scale` changes): a
    change of those settings restarts it at `reload`, and `scale` leaves it alone."""
    settings = [(q.name, q.program, q.autoscale) for q in stack.queues if q.autoscale]
    return hashlib.sha256(repr(settings).encode("utf-8")).hexdigest()[:16]


def listener_digest(stack: Stack) -> str:
    """The listeners read the stack file when they start. A hash of it in their environment makes their
    config differ whenever the stack does, so `reload` restarts them with the new settings. The queues are
    left out: no listener reads them (the gate plans each run from supervisord's live worker groups), so
    `scale`, even of a queue from or to 0, leaves every listener alone. Which file set a value (`origins`,
    for messages) is left out too: moving a key between layers with its value changes nothing they read."""
    return hashlib.sha256(repr(replace(stack, queues=(), origins=())).encode("utf-8")).hexdigest()[:16]


def cmdline(argv: Sequence[str]) -> str:
    """A command= value: each argument quoted for supervisord's shlex, `;` `#` `'` escaped, `%` doubled."""
    return pct(command_line(argv))


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
        # The parser refuses these with the file and key; this is the last guard for generated values.
        problem = env_problem(value)
        if problem:
            raise RenderError(f"environment {key} {problem}.")
        quote = "'" if '"' in value else '"'
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
    env.filters["cmdline"] = cmdline
    env.filters["pct"] = pct
    env.filters["pct_logfile"] = pct_logfile
    env.filters["envpairs"] = envpairs
    return env


def guard_args(stack: Stack, queue: Queue) -> tuple[str, ...]:
    """The exec wrapper's checks before a worker starts, each refusal leaving its reason in <run>/refused:
    the revision guard (host.revision_guard; a node also checks the revision the server declared), and a
    singleton queue's one-consumer lock."""
    args: tuple[str, ...] = ()
    if stack.host.revision_guard:
        node = ("--declared-from", stack.host.db_url_env) if stack.host.node else ()
        args += ("--revision-guard", *node)
    if queue.singleton:
        args += (
            "--singleton",
            queue.name,
            "--singleton-db",
            stack.host.db_url_env,
            "--singleton-broker",
            stack.host.amqp_url_env,
            # A previous holder whose lock was lost finishes its job within its stop grace, then leaves.
            "--singleton-wait",
            str(queue.stop_grace + 10),
            "--host-name",
            stack.host.name,
        )
    # With a restart delay, any refusal (an env error too) must leave its reason: the reviver skips it.
    keep = args or stack.workers.restart_delay
    return (*args, "--refusals", str(stack.paths.run / REFUSALS)) if keep else ()


def worker_autorestart(stack: Stack, queue: Queue) -> str:
    """With workers.restart_delay the extension restarts a worker after the delay (`reviver`), not
    supervisord; a worker whose start may be refused restarts only on an unexpected exit (not 78)."""
    if stack.workers.restart_delay:
        return "false"
    return "unexpected" if refusal_final(stack, queue) else "true"


def refusal_final(stack: Stack, queue: Queue) -> bool:
    """A worker whose start may be refused (exit 78) is not restarted after a refusal, however long the
    check took (past startsecs too): 78 is its only expected exit, and only unexpected ones restart it."""
    return stack.host.revision_guard or queue.singleton


def wrapper_argv(
    stack: Stack,
    exe: Sequence[str],
    command: Sequence[str],
    program: Program | None = None,
    guard: Sequence[str] = (),
) -> tuple[str, ...]:
    """The exec wrapper loads the env files at each start and execs the command (same pid)."""
    args = [*exe, "exec", *guard]
    for env_file in stack.env.files:
        args += ["--env-file", str(env_file)]
    for name in stack.env.required:
        args += ["--require", name]
    if stack.env.require_jwt_secret:
        args.append("--require-jwt-secret")
    if program is not None and program.requires_file:
        args += ["--requires-file", program.requires_file, "--fallback", program.fallback_command]
    return (*args, "--", *command)


def program_keys(prefix: str, command_key: str = "") -> tuple[tuple[str, str], ...]:
    fields = ("directory", "environment", "stop_signal", "stop_grace", "startsecs", "socket")
    return (("name", prefix), ("command", command_key or f"{prefix}.command"),
            *((f, f"{prefix}.{f}") for f in fields))  # fmt: skip


def serves_builds(stack: Stack, program: Program) -> bool:
    """Web runs from the served frontend build (`deploy.web_current`), not from the worktree."""
    return program.role == "web" and program.directory == stack.deploy.web_current


def stamp_for(stack: Stack, program: Program, revision: str, web_build: str) -> tuple[tuple[str, str], ...]:
    """What ties a program's config to the code it runs, so that a deploy restarts exactly what changed:
    PROTEA_REVISION for the programs that run the worktree's code; for web serving a build, the build's
    name (PROTEA_WEB_BUILD), so a revision that did not rebuild the frontend leaves web running. The tunnel
    runs no PROTEA code."""
    if program.role == "tunnel":
        return ()
    if serves_builds(stack, program):
        return (("PROTEA_WEB_BUILD", PurePosixPath(web_build).name),) if web_build else ()
    return (("PROTEA_REVISION", revision),) if revision else ()


def program_blocks(
    stack: Stack, exe: Sequence[str], revision: str = "", web_build: str = ""
) -> list[ProgramBlock]:
    """Every [program:x]; with `revision`, the programs that run PROTEA's code get PROTEA_REVISION, and web
    serving a build gets that build's name (`stamp_for`)."""
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
                argv=wrapper_argv(stack, exe, shlex.split(program.command), program),
                directory=str(program.directory),
                environment=program.environment + stamp_for(stack, program, revision, web_build),
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
                socket=program.socket,
                keys=program_keys(f"programs.{program.role}"),
            )
        )
    blocks.extend(_queue_block(stack, exe, queue, stamp) for queue in stack.queues if queue.processes)
    if stack.deploy.api_canary_command and stack.program("api").enabled:
        blocks.append(_canary_block(stack, exe, stamp))
    blocks.append(_deploy_tick_block(stack, exe))
    return sorted(blocks, key=lambda b: b.priority)


def _canary_block(stack: Stack, exe: Sequence[str], stamp: tuple[tuple[str, str], ...]) -> ProgramBlock:
    """The new revision's API on its own port, started only by a deploy and stopped once it has proved the
    revision ready (or not). Never restarted: its failure is the verdict."""
    api = stack.program("api")
    return ProgramBlock(
        name=CANARY,
        argv=wrapper_argv(stack, exe, shlex.split(stack.deploy.api_canary_command)),
        directory=str(api.directory),
        environment=api.environment + stamp,
        priority=PRIORITY[CANARY],
        startsecs=0,
        autorestart="false",
        exitcodes="0",
        stopsignal=api.stop_signal,
        stopwaitsecs=api.stop_grace,
        log_dir=str(stack.paths.logs),
        log_name=f"{CANARY}.log",
        numprocs=1,
        numbered=False,
        startretries=0,
        keys=(
            ("name", "deploy"),
            ("command", "deploy.api_canary_command"),
            *((f, f"programs.api.{f}") for f in ("directory", "environment", "stop_signal", "stop_grace")),
            ("startsecs", "deploy"),
        ),
    )


def _deploy_tick_block(stack: Stack, exe: Sequence[str]) -> ProgramBlock:
    """The one-shot the deploy timer starts: `protea-supervisor tick`. It loads the env files itself."""
    stack_args = ["--stack", stack.choice] if stack.choice else []
    return ProgramBlock(
        name="deploy-tick",
        argv=(*exe, *stack_args, "tick"),
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
        keys=program_keys("deploy"),
    )


def _queue_block(
    stack: Stack, exe: Sequence[str], queue: Queue, stamp: tuple[tuple[str, str], ...] = ()
) -> ProgramBlock:
    prefix = f"queues.{quoted(queue.name)}"
    own = any(key == f"{prefix}.command" for key, _ in stack.origins)
    return ProgramBlock(
        name=queue.program,
        argv=wrapper_argv(stack, exe, shlex.split(queue.command), guard=guard_args(stack, queue)),
        directory=str(stack.workers.directory),
        environment=stamp,
        priority=PRIORITY["worker"],
        startsecs=stack.workers.startsecs,
        autorestart=worker_autorestart(stack, queue),
        # 143: the worker ran out of shutdown grace, requeued its job and exited on purpose.
        exitcodes=str(REFUSED_EXIT) if refusal_final(stack, queue) else "0,143",
        stopsignal=stack.workers.stop_signal,
        stopwaitsecs=queue.stop_grace,
        log_dir=str(stack.paths.logs),
        log_name="%(program_name)s-%(process_num)d.log" if queue.numbered else f"{queue.program}.log",
        numprocs=queue.processes,
        numbered=queue.numbered,
        keys=(
            *program_keys(prefix, f"{prefix}.command" if own else "workers.command"),
            ("directory", "workers.directory"),
            ("stop_signal", "workers.stop_signal"),
            ("startsecs", "workers.startsecs"),
        ),
    )


def blocks(
    stack: Stack, exe: Sequence[str], revision: str = "", web_build: str = ""
) -> tuple[list[ProgramBlock], list[ListenerBlock]]:
    """Every [program:x] and [eventlistener:x] the config holds, as data."""
    return program_blocks(stack, exe, revision, web_build), listener_blocks(stack, exe)


def render(stack: Stack, exe: Sequence[str], revision: str = "", web_build: str = "") -> str:
    """The supervisord config for `stack`; `exe` is the argv prefix that runs protea-supervisor; `revision`
    is the deployed revision, given to every program that runs PROTEA's code as PROTEA_REVISION;
    `web_build` is the served frontend build (see `stamp_for`)."""
    programs, listeners = blocks(stack, exe, revision, web_build)
    context = {
        "stack": stack,
        "programs": programs,
        "listeners": listeners,
        # Numbered queues only: an unnumbered worker cannot grow without renaming its running process.
        "worker_groups": [q.program for q in stack.queues if q.processes and q.numbered],
        "revive_groups": [q.program for q in stack.queues if q.processes and stack.workers.restart_delay],
        "log_maxbytes": LOG_MAXBYTES,
        "log_backups": LOG_BACKUPS,
    }
    try:
        return template_env().get_template(TEMPLATE).render(**context)
    except jinja2.TemplateError as why:
        raise RenderError(f"template {TEMPLATE}: {why}") from None
