"""`protea-supervisor lock ...`: the stack-owner lock, file-compatible with stack_owner.sh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from protea_supervisor.cli.common import load
from protea_supervisor.errors import CommandNotFound, UsageError
from protea_supervisor.locks.stack_owner import FILE_ENV, ROOT_ENV, LockFile, resolve_path, resolve_timeout
from protea_supervisor.stackfile.env import after_double_dash

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@click.group("lock")
@click.option(
    "--file",
    "lock_file",
    help="Lock file; else $STACK_OWNER_FILE, else $AGENT_FARM_ROOT/state/stack-owner.json, else the stack's "
    "lock.file.",
)
@click.option(
    "--timeout", type=float, help="flock timeout in seconds; else $STACK_OWNER_FLOCK_TIMEOUT_SEC, else 5."
)
@click.pass_context
def lock_group(ctx: click.Context, lock_file: str | None, timeout: float | None) -> None:
    """The stack-owner lock (file-compatible with stack_owner.sh)."""
    environ = dict(os.environ)
    if lock_file or environ.get(FILE_ENV) or environ.get(ROOT_ENV):
        default_path, default_timeout = Path("/nonexistent"), 5.0
    else:
        stack = load(ctx, overrides=False)
        default_path, default_timeout = stack.lock.file, stack.lock.flock_timeout
    path = resolve_path(lock_file, environ, default_path)
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
    """Hold the lock as `export` while COMMAND runs; release it however COMMAND ends; exit with its code.

    COMMAND runs in its own process group. INT, TERM and HUP sent to this process, or to its whole
    process group, reach COMMAND exactly once; on a terminal, COMMAND gets the terminal (Ctrl-C, Ctrl-Z).
    """
    command = after_double_dash(command)
    if not command:
        raise UsageError("lock run needs a command after --.")
    lock.acquire("export", task_id, reason)
    try:
        return run_in_own_group(list(command))
    finally:
        lock.release(task_id)


def run_in_own_group(argv: list[str]) -> int:
    """Run argv as the leader of a new process group and wait for it; returns its exit code (128+N for a
    signal). Signals sent to us are passed to its group once. In its own group, a signal sent to our
    group does not reach it a second time."""
    child: subprocess.Popen[bytes] | None = None
    reaped = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Only _wait reaps the child (a poll() here could reap it under _wait's feet).
        if child is not None and not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        try:
            child = subprocess.Popen(argv, process_group=0)
        except OSError as why:
            raise CommandNotFound(f"cannot run {argv[0]}: {why.strerror}.") from None
        with _terminal_for(child.pid) as terminal:
            code = _wait(child.pid, terminal)
        reaped = True
        child.returncode = code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + (-code) if code < 0 else code


@contextlib.contextmanager
def _terminal_for(pgid: int) -> Iterator[int | None]:
    """Make `pgid` the terminal's foreground group while it runs (so Ctrl-C and Ctrl-Z reach it, once), and
    take the terminal back after. Nothing when stdin is not our terminal's foreground."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0 or os.tcgetpgrp(fd) != os.getpgrp():
        yield None
        return
    _hand(fd, pgid)
    try:
        yield fd
    finally:
        _hand(fd, os.getpgrp())


def _hand(fd: int, pgid: int) -> None:
    # tcsetpgrp from what is (by then) a background group raises SIGTTOU: ignore it for the call.
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.signal(signal.SIGTTOU, old)


def _wait(pid: int, terminal: int | None) -> int:
    """waitpid, with job control: when the child is stopped (Ctrl-Z), stop ourselves too, so the shell
    sees the job stopped; when continued, give the child the terminal and continue it."""
    while True:
        try:
            _, status = os.waitpid(pid, os.WUNTRACED)
        except InterruptedError:
            continue
        if os.WIFSTOPPED(status):
            if terminal is not None:
                _hand(terminal, os.getpgrp())
            os.kill(os.getpid(), signal.SIGSTOP)
            if terminal is not None:
                _hand(terminal, pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
            continue
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


COMMANDS = (lock_group,)
