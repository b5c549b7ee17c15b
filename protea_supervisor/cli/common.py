"""What every CLI command shares: the stack as the command line chose it, rendering, the operation lock."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from protea_supervisor.cli.settings import Settings
from protea_supervisor.deploy.record import read_record
from protea_supervisor.errors import LockContention, LockCorrupt, StackError
from protea_supervisor.locks.operation import operation, resolve_wait
from protea_supervisor.locks.stack_owner import LockFile, export_holder
from protea_supervisor.locks.stack_owner import stack_lock as owner_lock
from protea_supervisor.stackfile.files import load_stack, machine_facts
from protea_supervisor.stackfile.overrides import shadowed_counts, with_overrides
from protea_supervisor.stackfile.stack import HostFacts, Stack
from protea_supervisor.supervisord.apply import Deadlines

# A command imports what only it needs (the renderer, git, the deploy steps, Postgres) where it runs: `status`
# costs about 0.27 s of CPU, 0.38 s when every command loaded them (bench/cli_start.py).


def exe_argv() -> list[str]:
    """How rendered programs call back into protea-supervisor: the console script beside this Python."""
    script = Path(sys.executable).parent / "protea-supervisor"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-m", "protea_supervisor"]


def host_facts() -> HostFacts:
    return machine_facts()


def settings(ctx: click.Context) -> Settings:
    found: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    return found


def load(ctx: click.Context, overrides: bool = True) -> Stack:
    stack = load_stack(settings(ctx).stack_choice, host_facts())
    return with_overrides(stack) if overrides else stack


def missing_dirs(stack: Stack, need_root: bool = True) -> list[Path]:
    """The directories `prepare_dirs` would create; raises when the worktree is missing and may not be."""
    if need_root and not stack.paths.root.is_dir() and not stack.paths.create_root:
        raise StackError(
            f"{stack.sources[-1]}: paths.root {stack.paths.root} does not exist "
            "(create the deploy worktree first, or set paths.create_root = true)."
        )
    wanted = [stack.paths.root] if need_root else []
    return [d for d in (*wanted, stack.paths.logs, stack.paths.run) if not d.is_dir()]


def prepare_dirs(stack: Stack, need_root: bool = True) -> None:
    for directory in missing_dirs(stack, need_root):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700 if directory == stack.paths.run else 0o777)


def rendered(stack: Stack, revision: str | None = None, dry_run: bool = False) -> str:
    """The checked config text; the deployed revision (from the tick's record) unless one is given. A dry
    run checks as if the directories `prepare_dirs` would create existed, and creates nothing."""
    from protea_supervisor.deploy.webbuild import served_build
    from protea_supervisor.supervisord.readback import verify
    from protea_supervisor.supervisord.render import blocks, render

    if revision is None:
        revision = read_record(stack).revision
    build = served_build(stack)
    text = render(stack, exe_argv(), revision, build)
    programs, listeners = blocks(stack, exe_argv(), revision, build)
    verify(stack, text, programs, listeners, missing_dirs(stack, need_root=False) if dry_run else ())
    return text


def stack_flag(ctx: click.Context) -> str:
    choice = settings(ctx).stack_choice
    return f" --stack {shlex.quote(choice)}" if choice else ""


def shadow_notes(ctx: click.Context, stack: Stack) -> list[str]:
    """Lines naming every stack-file count an override shadows, and how to drop it."""
    base = load(ctx, overrides=False)
    return [
        f"note: {key} is {wanted} in {source}, but {stack.paths.run / 'overrides.json'} runs {count} "
        f"(set by `up N` or `scale`); `protea-supervisor{stack_flag(ctx)} scale {queue} --reset` goes back "
        "to the stack file."
        for queue, key, source, wanted, count in shadowed_counts(base, stack)
    ]


@contextlib.contextmanager
def changing(
    ctx: click.Context,
    command: str,
    base: Stack | None = None,
    spares: tuple[str, ...] = (),
    overrides: bool = True,
) -> Iterator[Stack]:
    """Hold the host's operation lock while `command` changes the stack (waiting, with progress, for
    another holder up to the bound), and give the stack as it is once the lock is held: the counts another
    command recorded while this one waited are read here, never before. `base` is the stack file's stack
    when the caller has it already."""
    base = base or load(ctx, overrides=False)
    wait = resolve_wait(settings(ctx).lock_wait, dict(os.environ), base.control.operation_wait)
    with operation(base.paths.run, command, wait, click.echo, spares):
        yield with_overrides(base) if overrides else base


def stop_deadline(stack: Stack) -> Deadlines:
    return Deadlines(
        stop=max([q.stop_grace for q in stack.queues] + [p.stop_grace for p in stack.programs]) + 30
    )


def stack_lock(stack: Stack) -> LockFile:
    """The stack-owner lock file as the shell tool finds it, from this command's environment."""
    return owner_lock(stack, dict(os.environ))


def refuse_during_export(stack: Stack, what: str, force: bool) -> None:
    """Refuse to interrupt an export. With --force the lock is not even read: a corrupt lock file must not
    keep `down --force` (the unit's ExecStop) from stopping the stack."""
    if force:
        return
    try:
        holder = export_holder(stack_lock(stack))
    except LockCorrupt as why:
        raise LockCorrupt(
            f"{why} Refusing to {what} without knowing the owner; --force skips the check."
        ) from None
    if holder:
        raise LockContention(
            f"refusing to {what}: export task {holder.task_id} holds the stack-owner lock since "
            f"{holder.acquired_at} ({holder.reason}); use --force to interrupt it."
        )
    if stack.host.node:
        # A node's workers serve the server's export too: its lock, as the server's heartbeat publishes it.
        from protea_supervisor.hosts.declared import server_url
        from protea_supervisor.hosts.heartbeats import read_all, server_export

        variable = stack.host.db_url_env
        export = server_export(read_all(server_url(stack), variable))
        if export:
            raise LockContention(f"refusing to {what}: {export}; use --force to interrupt it.")
