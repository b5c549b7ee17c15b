"""The operator CLI: the command group, the stack commands and the entry point that turns errors into exit
codes. The CLI modules (this one, cli_common, cli_deploy, cli_ops) are the only place that reads the
environment and prints."""

from __future__ import annotations

import difflib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from protea_supervisor import __version__
from protea_supervisor import cli_deploy as deploy_commands
from protea_supervisor import cli_ops as ops_commands
from protea_supervisor.apply import apply_plan, stack_is_up, sync_group
from protea_supervisor.cli_common import (
    POLL,
    Settings,
    _stack_flag,
    exe_argv,
    load,
    prepare_dirs,
    refuse_during_export,
    rendered,
    run_gate,
    stop_deadline,
)
from protea_supervisor.control import RUNNING_STATES, Supervisor, start_daemon, wait_gone
from protea_supervisor.deploy import DeployRecord
from protea_supervisor.env import check_required, merged_environment, redact, secret_values
from protea_supervisor.errors import (
    CommandNotFound,
    EnvError,
    ProteaError,
    StackFailed,
    SupervisorDown,
    UsageError,
)
from protea_supervisor.files import write_atomic
from protea_supervisor.listeners.deploy_timer import STATE_FILE as TIMER_STATE_FILE
from protea_supervisor.listeners.deploy_timer import next_tick_at
from protea_supervisor.listeners.edge import read_json
from protea_supervisor.listeners.gate import read_state as read_gate_state
from protea_supervisor.listeners.tunnel_watch import COMM_TYPE as TUNNEL_COMM_TYPE
from protea_supervisor.listeners.tunnel_watch import STATE_FILE as TUNNEL_STATE_FILE
from protea_supervisor.listeners.tunnel_watch import reset_message as tunnel_reset_message
from protea_supervisor.lock import (
    FREE,
    LockFile,
    resolve_path,
    resolve_timeout,
)
from protea_supervisor.overrides import (
    apply_counts,
    batch_counts,
    load_counts,
    load_numbered,
    save_counts,
)
from protea_supervisor.reconcile import describe_plan, plan_from_document, scaled_count
from protea_supervisor.render import listener_blocks
from protea_supervisor.stack import Stack
from protea_supervisor.status import (
    group_rss_kb,
    older_revision,
    process_revision,
    read_tail,
    rows,
    spawn_counts,
    table,
)
from protea_supervisor.tick import read_record


def last_lines(path: Path, count: int) -> list[str]:
    return read_tail(path, 64 * 1024).splitlines()[-count:]


# --- the group ------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--stack",
    "stack_choice",
    envvar="PROTEA_STACK",
    metavar="PATH|demo",
    help="Host stack file layered over the PROTEA defaults, or `demo`. Env: PROTEA_STACK.",
)
@click.version_option(__version__, prog_name="protea-supervisor")
@click.pass_context
def cli(ctx: click.Context, stack_choice: str | None) -> None:
    """Run the PROTEA stack under supervisord.

    \b
    Exit codes: 0 ok; 1 bad input (arguments, stack file); 2 lock held by another
    owner; 3 lock release by a non-holder; 4 lock flock timeout; 5 corrupt lock file;
    6 supervisord not running; 7 a program failed to start or stop; 78 env/config
    error (exec); 127 command not found (exec).
    """
    ctx.obj = Settings(stack_choice=stack_choice)


@cli.command("render")
@click.option("--check", is_flag=True, help="Validate with supervisord's parser; write nothing.")
@click.option(
    "--diff", "show_diff", is_flag=True, help="Show the change against the config on disk; write nothing."
)
@click.pass_context
def render_cmd(ctx: click.Context, check: bool, show_diff: bool) -> None:
    """Render the supervisord config into the run dir (atomically, only if supervisord would accept it)."""
    stack = load(ctx)
    prepare_dirs(stack)
    text = rendered(stack)
    path = stack.config_path
    if show_diff:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        diff = "".join(
            difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path), f"{path} (rendered)")
        )
        click.echo(diff.rstrip("\n") if diff else f"{path} is up to date.")
        return
    processes = sum(len(q.process_names()) for q in stack.queues)
    if check:
        click.echo(f"ok: the rendered config is valid ({processes} worker processes); nothing written.")
        return
    write_atomic(path, text, mode=0o600)
    click.echo(f"wrote {path}")


@cli.command("up")
@click.argument("count", required=False, type=click.IntRange(min=1))
@click.pass_context
def up_cmd(ctx: click.Context, count: int | None) -> None:
    """Render, start supervisord if needed, start the stack in order; COUNT sizes the batch queues."""
    stack = load(ctx)
    if count is not None:
        counts = load_counts(stack.paths.run) | batch_counts(stack, count)
        stack = apply_counts(stack, counts)
    prepare_dirs(stack)
    # Before anything starts: a missing variable is named now, not as a crash loop later.
    env = merged_environment(os.environ, stack.env.files)
    check_required(env, stack.env.required, stack.env.require_jwt_secret, stack.env.files)
    text = rendered(stack)
    if count is not None:
        save_counts(stack.paths.run, counts)
    write_atomic(stack.config_path, text, mode=0o600)

    supervisor = Supervisor(stack.socket_path)
    if supervisor.is_running():
        apply_idle_changes(stack, supervisor)
    else:
        click.echo(f"starting supervisord ({stack.config_path})")
        start_daemon(stack.config_path, supervisor)
    run_gate(stack, supervisor)
    click.echo(
        f"stack is up. status: protea-supervisor{_stack_flag(ctx)} status; "
        f"or supervisorctl -c {stack.config_path} status"
    )


def apply_idle_changes(stack: Stack, supervisor: Supervisor) -> None:
    """Take in config changes that interrupt nothing: new groups, count changes (in place), and changed
    groups with no process up. A changed group with running processes is left alone: replacing it would
    restart them mid-job; that is `reload`'s job."""
    plan = plan_from_document(supervisor.plan_reload())
    for group in plan.added:
        supervisor.add_group(group)
    for group, _diff in plan.scaled:
        sync_group(supervisor, group, stop_deadline(stack), click.echo, wait=False)
    busy = {i["group"] for i in supervisor.all_process_info() if i["statename"] in RUNNING_STATES}
    for group in plan.changed:
        if group in busy:
            click.echo(
                f"note: {group} is running with its old config; `protea-supervisor reload` restarts it."
            )
        else:
            supervisor.replace_group(group)


@cli.command("down")
@click.option("--force", is_flag=True, help="Stop even while an export holds the stack-owner lock.")
@click.pass_context
def down_cmd(ctx: click.Context, force: bool) -> None:
    """Stop every program at once (workers drain in parallel, each within its grace), then supervisord."""
    stack = load(ctx)
    refuse_during_export(stack, "down", force)
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        click.echo("supervisord is not running; nothing to stop.")
        return
    pid = supervisor.pid()
    began = time.monotonic()
    supervisor.stop_all()
    grace = stop_deadline(stack).stop
    reported: tuple[str, ...] = ()
    while True:
        busy = tuple(
            sorted(
                i["name"]
                for i in supervisor.all_process_info()
                if i["statename"] in ("STOPPING", "STARTING", "RUNNING", "BACKOFF")
            )
        )
        if not busy:
            break
        if busy != reported:
            click.echo(f"  waiting for {len(busy)} to stop: {', '.join(busy)}")
            reported = busy
        if time.monotonic() - began > grace:
            raise StackFailed(f"{', '.join(busy)} did not stop within {grace} s.")
        time.sleep(POLL)
    click.echo(f"  all programs stopped in {time.monotonic() - began:.1f} s; shutting down supervisord")
    supervisor.shutdown()
    if not wait_gone(pid, 30):
        raise StackFailed(f"supervisord (pid {pid}) did not exit within 30 s.")
    click.echo("stack is down.")


@cli.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("queue")
@click.argument("count")
@click.option(
    "--yes", is_flag=True, help="Let an unnumbered queue grow: its one worker is replaced by numbered ones."
)
@click.option("--no-wait", is_flag=True, help="Return once removed workers have been told to stop.")
@click.option("--force", is_flag=True, help="Scale down even while an export holds the stack-owner lock.")
@click.pass_context
def scale_cmd(ctx: click.Context, queue: str, count: str, yes: bool, no_wait: bool, force: bool) -> None:
    """Set a queue's worker count: N, or +N / -N relative. QUEUE is a queue or its worker program.

    Running workers are never restarted: new ones are added beside them, and scale-down stops the
    highest-numbered ones, each finishing its job within its grace. The count is recorded in
    <run>/overrides.json, so a later `render` or `up` keeps it.
    """
    stack = load(ctx)
    target_queue = stack.queue(queue)
    program, before = target_queue.program, target_queue.processes
    try:
        after = scaled_count(before, count)
    except ValueError as why:
        raise UsageError(f"scale {queue} {count}: {why}.") from None
    if after == before:
        click.echo(f"{program} already runs {before} process(es); nothing to do.")
        return
    if after < before:
        refuse_during_export(stack, f"scale {program} down", force)
    renaming = after > 1 and not target_queue.numbered
    if renaming and not yes:
        raise UsageError(
            f"{program} runs one unnumbered process; to run {after}, it finishes its job and stops while "
            f"{program}-1..{after} start in its place, and the queue stays numbered. Run again with --yes."
        )
    numbered = load_numbered(stack.paths.run) | ({program} if renaming else set())
    counts = load_counts(stack.paths.run) | {program: after}
    # counts and numbered hold every earlier record plus this step: over the already-overridden stack they
    # give what they would give over the stack file, without reading it again.
    new_stack = apply_counts(stack, counts, numbered)
    prepare_dirs(new_stack)
    text = rendered(new_stack)
    save_counts(stack.paths.run, counts, numbered)
    write_atomic(stack.config_path, text, mode=0o600)
    click.echo(f"{program}: {before} -> {after} (recorded in {stack.paths.run / 'overrides.json'})")
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        click.echo("supervisord is not running; `up` starts the stack with the new count.")
        return
    deadlines = stop_deadline(stack)
    if before and after:
        # Renaming an unnumbered worker is in place too: it finishes its job while the numbered ones start.
        sync_group(supervisor, program, deadlines, click.echo, wait=not no_wait)
    else:
        # The queue starts or stops running at all: its program is added or removed, and the listeners,
        # which plan by program, are restarted with the new stack. Nothing else pending is applied.
        listeners = [block.name for block in listener_blocks(new_stack, exe_argv())]
        plan = plan_from_document(supervisor.plan_reload()).only([program, *listeners])
        apply_plan(supervisor, plan, deadlines, click.echo, stack_is_up(stack, supervisor))


@cli.command("reload")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--force", is_flag=True, help="Apply even while an export holds the stack-owner lock.")
@click.pass_context
def reload_cmd(ctx: click.Context, dry_run: bool, force: bool) -> None:
    """Re-render and apply the difference to the running stack with the least disruption.

    Count-only changes are made in place; changed programs are restarted one at a time (workers finish
    their job within their grace); new programs are added and started in priority order; removed ones
    are stopped and removed. Programs that did not change are not touched. Never `supervisorctl reload`.
    """
    stack = load(ctx)
    prepare_dirs(stack)
    text = rendered(stack)
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        raise SupervisorDown(
            f"supervisord is not running (no answer on {stack.socket_path}); `up` starts the stack."
        )
    if dry_run:
        candidate = stack.paths.run / f".reload-dry-run-{os.getpid()}.conf"
        write_atomic(candidate, text, mode=0o600)
        try:
            plan = plan_from_document(supervisor.plan_reload(candidate))
        finally:
            candidate.unlink(missing_ok=True)
        for line in describe_plan(plan):
            click.echo(line)
        return
    if not force:
        refuse_during_export(stack, "reload", force)
    write_atomic(stack.config_path, text, mode=0o600)
    plan = plan_from_document(supervisor.plan_reload())
    for line in describe_plan(plan):
        click.echo(line)
    if plan.empty:
        return
    apply_plan(supervisor, plan, stop_deadline(stack), click.echo, stack_is_up(stack, supervisor))
    click.echo("reload done.")


def tunnel_line(watch: dict[str, Any], now: float) -> str:
    last = "never probed"
    if watch.get("last_probe_at"):
        verdict = "ok" if watch.get("last_ok") else "FAILED"
        last = (
            f"last probe {verdict} {now - watch['last_probe_at']:.0f} s ago ({watch.get('last_detail', '')})"
        )
    recent = [t for t in watch.get("restarts", []) if now - t < 3600]
    budget = "; RESTART BUDGET SPENT" if watch.get("capped") else ""
    wait = watch.get("next_restart_at", 0) - now
    later = f"; next restart allowed in {wait:.0f} s" if wait > 0 else ""
    return (
        f"tunnel watch: {last}; {watch.get('consecutive_failures', 0)} consecutive failures; "
        f"{len(recent)} restarts in the last hour{later}{budget}"
    )


def deploy_line(record: DeployRecord, behind: Sequence[str], next_at: float | None) -> str:
    upcoming = f"; next tick {datetime.fromtimestamp(next_at, UTC):%Y-%m-%dT%H:%M:%S}Z" if next_at else ""
    if not record.revision:
        return f"deploy: nothing deployed by a tick yet{upcoming}"
    last = (
        f"; last tick {record.last_tick_at} exit {record.last_exit} ({record.last_summary})"
        if record.last_tick_at
        else ""
    )
    older = f"; running an older revision: {', '.join(behind)}" if behind else ""
    return f"deploy: deployed {record.revision[:10]} at {record.deployed_at}{last}{upcoming}{older}"


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every process: state, pid, RSS (whole process group), uptime, restarts."""
    stack = load(ctx)
    supervisor = Supervisor(stack.socket_path)
    infos = supervisor.all_process_info()
    rss = group_rss_kb(int(i["pid"]) for i in infos if i["pid"])
    spawns = spawn_counts(read_tail(stack.paths.run / "supervisord.log"))
    status_rows = rows(infos, rss, spawns)
    lock = LockFile(resolve_path(None, dict(os.environ), stack.lock.file), stack.lock.flock_timeout)
    try:
        owner = lock.read()
    except ProteaError as why:
        owner = FREE
        click.echo(f"warning: {why}", err=True)
    gate = read_gate_state(stack.paths.run) or {}
    watch = read_json(stack.paths.run / TUNNEL_STATE_FILE) or {}
    deployed = read_record(stack)
    timer = read_json(stack.paths.run / TIMER_STATE_FILE) or {}
    revisions = {i["name"]: process_revision(int(i["pid"])) for i in infos if i["pid"]}
    behind = older_revision(revisions, deployed.revision)
    if as_json:
        payload = {
            "processes": [r.as_dict() for r in status_rows],
            "gate": {key: gate.get(key) for key in ("phase", "step", "reason", "finished_at")},
            "tunnel_watch": watch,
            "deploy": deployed.to_doc()
            | {"older_revision": behind, "next_tick_at": next_tick_at(timer) if timer else None},
            "lock": {"owner": owner.owner, "task_id": owner.task_id, "acquired_at": owner.acquired_at},
            "config": str(stack.config_path),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(table(status_rows))
    holder = f" ({owner.task_id} since {owner.acquired_at})" if not owner.is_free else ""
    click.echo(f"\nstack-owner lock: {owner.owner}{holder}")
    phase = gate.get("phase", "unknown")
    detail = f" at {gate.get('step')}: {gate.get('reason')}" if phase == "failed" else ""
    detail = f" (step {gate.get('step')})" if phase == "running" else detail
    click.echo(f"gate: {phase}{detail}")
    if watch:
        click.echo(tunnel_line(watch, time.time()))
    click.echo(deploy_line(deployed, behind, next_tick_at(timer) if timer else None))


@cli.command("logs")
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (tail -F).")
@click.option("-n", "--lines", default=40, show_default=True, type=click.IntRange(min=0))
@click.pass_context
def logs_cmd(ctx: click.Context, name: str | None, follow: bool, lines: int) -> None:
    """Show program logs; NAME is a fragment of a log name (case-insensitive), all logs without it."""
    stack = load(ctx)
    logs = sorted(stack.paths.logs.glob("*.log"))
    chosen = [p for p in logs if name is None or name.lower() in p.name.lower()]
    if not chosen:
        available = ", ".join(p.stem for p in logs) or "none yet"
        raise UsageError(f"no log in {stack.paths.logs} matches {name!r}; available: {available}.")
    secrets = secret_values(stack.env.files)
    if follow:
        # tail -F follows rotation; it replaces this process, so the operator's Ctrl-C goes straight to it.
        os.execvp("tail", ["tail", "-n", str(lines), "-F", *map(str, chosen)])
    for path in chosen:
        if len(chosen) > 1:
            click.echo(f"==> {path} <==")
        for line in last_lines(path, lines) if lines else []:
            click.echo(redact(line, secrets))


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option(
    "--env-file",
    "env_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Dotenv file to load (repeatable; later files win; missing files are skipped).",
)
@click.option("--require", "required", multiple=True, help="Variable that must be set (repeatable).")
@click.option(
    "--require-jwt-secret",
    is_flag=True,
    help="Require PROTEA_JWT_SECRET unless PROTEA_AUTHN_REQUIRED is false.",
)
@click.option(
    "--requires-file", help="Run --fallback instead when this file (relative to the cwd) is missing."
)
@click.option("--fallback", help="Command line used when --requires-file is missing.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(
    env_files: tuple[Path, ...],
    required: tuple[str, ...],
    require_jwt_secret: bool,
    requires_file: str | None,
    fallback: str | None,
    command: tuple[str, ...],
) -> None:
    """Load env files, check required variables, and exec COMMAND (same pid, so supervisord tracks it)."""
    env = merged_environment(os.environ, env_files)
    check_required(env, required, require_jwt_secret, env_files)
    argv = list(_after_double_dash(command))
    if not argv:
        raise UsageError("exec needs a command after --.")
    if requires_file and not Path(requires_file).exists():
        if not fallback:
            raise EnvError(f"{requires_file} is missing and no --fallback was given.")
        click.echo(
            f"protea-supervisor exec: {requires_file} is missing; starting the fallback: {fallback}", err=True
        )
        argv = shlex.split(fallback)
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}.") from None
    except PermissionError:
        raise CommandNotFound(f"command is not executable: {argv[0]}.") from None


@cli.group("gate")
def gate_group() -> None:
    """The readiness gate: infra ports, migrate, api, workers and web, web, tunnel."""


@gate_group.command("retry")
@click.pass_context
def gate_retry(ctx: click.Context) -> None:
    """Run the gate again from the first step that is not satisfied (a migration that passed is kept)."""
    stack = load(ctx)
    run_gate(stack, Supervisor(stack.socket_path), retry=True)
    click.echo("gate: done.")


@gate_group.command("status")
@click.pass_context
def gate_status(ctx: click.Context) -> None:
    """Print the gate state file (JSON)."""
    doc = read_gate_state(load(ctx).paths.run)
    click.echo(json.dumps(doc or {"phase": "unknown"}, indent=2))


@cli.group("tunnel")
def tunnel_group() -> None:
    """The tunnel watchdog."""


@tunnel_group.command("reset")
@click.pass_context
def tunnel_reset(ctx: click.Context) -> None:
    """Clear the watchdog's restart budget and backoff, so it may restart the tunnel again at once."""
    stack = load(ctx)
    Supervisor(stack.socket_path).send_comm(TUNNEL_COMM_TYPE, tunnel_reset_message())
    click.echo("tunnel watchdog: reset sent.")


@tunnel_group.command("status")
@click.pass_context
def tunnel_status(ctx: click.Context) -> None:
    """Print the watchdog's state file (JSON)."""
    doc = read_json(load(ctx).paths.run / TUNNEL_STATE_FILE)
    click.echo(json.dumps(doc or {"tunnel": "unknown"}, indent=2))


def _after_double_dash(command: tuple[str, ...]) -> tuple[str, ...]:
    # click keeps a `--` that follows positional arguments; it only separates our arguments from the command.
    return command[1:] if command[:1] == ("--",) else command


# --- lock -----------------------------------------------------------------------------------------------


@cli.group("lock")
@click.option("--file", "lock_file", help="Lock file; else $STACK_OWNER_FILE, else the stack's lock.file.")
@click.option(
    "--timeout", type=float, help="flock timeout in seconds; else $STACK_OWNER_FLOCK_TIMEOUT_SEC, else 5."
)
@click.pass_context
def lock_group(ctx: click.Context, lock_file: str | None, timeout: float | None) -> None:
    """The stack-owner lock (file-compatible with stack_owner.sh)."""
    environ = dict(os.environ)
    if lock_file or environ.get("STACK_OWNER_FILE"):
        default_path, default_timeout = Path("/nonexistent"), 5.0
    else:
        stack = load(ctx, overrides=False)
        default_path, default_timeout = stack.lock.file, stack.lock.flock_timeout
    path = resolve_path(lock_file, environ, default_path)
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be greater than 0, got {timeout:g}.")
    ctx.obj = LockFile(path, resolve_timeout(timeout, environ, default_timeout))


@lock_group.command("acquire")
@click.argument("owner", type=click.Choice(["deploy", "export"]))
@click.argument("task_id")
@click.argument("reason")
@click.pass_obj
def lock_acquire(lock: LockFile, owner: str, task_id: str, reason: str) -> None:
    """Take the lock for OWNER/TASK_ID (idempotent for the same pair)."""
    record = lock.acquire(owner, task_id, reason)
    click.echo(f"acquired: owner={record.owner} task_id={record.task_id}")


@lock_group.command("release")
@click.argument("task_id")
@click.pass_obj
def lock_release(lock: LockFile, task_id: str) -> None:
    """Release the lock held by TASK_ID (a free lock is fine)."""
    lock.release(task_id)
    click.echo("released")


@lock_group.command("current")
@click.pass_obj
def lock_current(lock: LockFile) -> None:
    """Print the owner: free, deploy or export."""
    click.echo(lock.read().owner)


@lock_group.command("status")
@click.pass_obj
def lock_status(lock: LockFile) -> None:
    """Print the lock record as JSON (the free record when the file is missing)."""
    click.echo(lock.read().to_json(), nl=False)


@lock_group.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("task_id")
@click.argument("reason")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def lock_run(lock: LockFile, task_id: str, reason: str, command: tuple[str, ...]) -> int:
    """Hold the lock as `export` while COMMAND runs; release it however COMMAND ends; exit with its code."""
    command = _after_double_dash(command)
    if not command:
        raise UsageError("lock run needs a command after --.")
    lock.acquire("export", task_id, reason)
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            child = subprocess.Popen(list(command))
        except OSError as why:
            raise CommandNotFound(f"cannot run {command[0]}: {why.strerror}.") from None
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release(task_id)
    return 128 - code if code < 0 else code


for command in (*deploy_commands.COMMANDS, *ops_commands.COMMANDS):
    cli.add_command(command)


# --- entry point ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: every error becomes one line on stderr and its documented exit code."""
    try:
        result: Any = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="protea-supervisor",
            standalone_mode=False,
        )
    except click.exceptions.UsageError as why:
        # click's own usage errors exit 2, which the lock contract reserves for contention.
        message = why.format_message()
        hint = f" (see: {why.ctx.command_path} --help)" if why.ctx is not None else ""
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(UsageError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except ProteaError as why:
        click.echo(f"error: {why}", err=True)
        sys.exit(why.exit_code)
    except click.ClickException as why:
        click.echo(f"error: {why.format_message()}", err=True)
        sys.exit(1)
    except Exception as bug:
        if os.environ.get("PROTEA_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(bug).__name__}: {bug} (set PROTEA_DEBUG=1 for the traceback)", err=True
        )
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
