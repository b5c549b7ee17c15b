"""Operations commands: the stalled-queue detector, Postgres backup and restore, the systemd unit."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click

from protea_supervisor.cli.common import (
    changing,
    exe_argv,
    load,
    prepare_dirs,
    refuse_during_export,
    settings,
    stop_deadline,
)
from protea_supervisor.errors import BackupFailed, BrokerAnswerInvalid, EnvError, ProteaError, UsageError
from protea_supervisor.hosts import declared
from protea_supervisor.hosts.declared import DeclarationUnavailable, server_url
from protea_supervisor.hosts.heartbeats import read_all, running_elsewhere
from protea_supervisor.locks.operation import resolve_wait
from protea_supervisor.operations.backup import RestoreChecks, refuse_system_database, target_from_url
from protea_supervisor.operations.dumps import check_dump, prepare, run_backup, switch
from protea_supervisor.operations.dumps import drill as run_drill
from protea_supervisor.operations.postgres import Postgres
from protea_supervisor.operations.queues import (
    Watch,
    fetch_queues,
    judge,
    rabbit_credentials,
    readings,
    running_counts,
    seen_from_state,
)
from protea_supervisor.operations.queues import table as queues_table
from protea_supervisor.stackfile.env import merged_environment
from protea_supervisor.stackfile.files import read_json, write_atomic
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.control import Supervisor
from protea_supervisor.supervisord.lifecycle import run_gate, stop_programs
from protea_supervisor.supervisord.unit import next_steps, render_unit, unit_path

QUEUES_STATE_FILE = "queues-heartbeat.json"
QUEUES_REPORT_FILE = "queues.json"


@click.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def queues_cmd(ctx: click.Context, as_json: bool) -> int:
    """Flag stalled, starved and under-staffed queues from the RabbitMQ management API.

    \b
    Exit codes (today's queue_heartbeat.py contract):
      0  healthy
      1  a queue is stalled, starved, or its consumers differ from its RUNNING workers
      2  the broker's management API is unreachable or answers something other than the queue list
    """
    stack = load(ctx)
    prepare_dirs(stack, need_root=False)
    env = merged_environment(os.environ, stack.env.files)
    user, password = rabbit_credentials(env)
    doc = fetch_queues(stack.monitor.rabbit_api, user, password)
    supervisor = Supervisor(stack.socket_path)
    # None only when supervisord does not answer: an answer with nothing RUNNING is 0 workers per queue.
    running = running_counts(supervisor.all_process_info()) if supervisor.is_running() else None
    elsewhere = _running_elsewhere(stack)
    if running is not None:
        running = {p: running.get(p, 0) + elsewhere.get(p, 0) for p in {*running, *elsewhere}}
    watches = {
        q.name: Watch(q.starved_after, q.program, None if running is None else running.get(q.program, 0))
        for q in stack.queues
        if q.processes or q.program in elsewhere
    } | {q.name: Watch(q.starved_after) for q in stack.queues if not (q.processes or q.program in elsewhere)}
    state_path = stack.paths.run / QUEUES_STATE_FILE
    try:
        found = readings(doc, stack.monitor.queue_prefix, stack.monitor.exempt)
    except BrokerAnswerInvalid as why:
        raise BrokerAnswerInvalid(
            f"the RabbitMQ management API at {stack.monitor.rabbit_api}: {why}"
        ) from None
    verdicts, busy = judge(
        found,
        watches,
        seen_from_state(read_json(state_path)),
        time.time(),
        stack.monitor.starved_after,
    )
    write_atomic(state_path, json.dumps({k: asdict(v) for k, v in busy.items()}, indent=2) + "\n")
    # The verdicts for the metrics listener (protea_queue_status) and the alert rules.
    report = {"checked_at": time.time(), "queues": [asdict(v) for v in verdicts]}
    write_atomic(stack.paths.run / QUEUES_REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps([v.__dict__ for v in verdicts], indent=2))
    else:
        click.echo(queues_table(verdicts))
    return 1 if any(v.fault for v in verdicts) else 0


def _running_elsewhere(stack: Stack) -> dict[str, int]:
    """With heartbeats, the other hosts' RUNNING workers per program (their consumers are on the same
    queues); nothing without them, or when Postgres does not answer (said on stderr)."""
    if not stack.host.heartbeat:
        return {}
    variable = stack.host.db_url_env
    try:
        beats = read_all(server_url(stack), variable)
    except DeclarationUnavailable as why:
        click.echo(f"note: the other hosts' workers are not counted: {why}", err=True)
        return {}
    return running_elsewhere(beats, stack.host.name, stack.host.stale_after)


def database(stack: Stack) -> Postgres:
    env = merged_environment(os.environ, stack.env.files)
    variable = stack.backup.database_url_env
    if not env.get(variable):
        raise EnvError(f"{variable} is not set (in the environment or the env files); backup needs it.")
    return Postgres(target_from_url(env[variable], variable))


def checks(stack: Stack) -> RestoreChecks:
    rules = stack.backup
    return RestoreChecks(rules.extensions, rules.check_tables, rules.min_tables)


@click.command("backup")
@click.option("--label", default="", help="Appended to the dump's name (protea-<time>-<label>.dump).")
@click.pass_context
def backup_cmd(ctx: click.Context, label: str) -> None:
    """pg_dump (custom format, no owner) into backup.dir, verified with pg_restore --list, with a .sha256;
    keeps the newest backup.keep dumps. Refused when backup.min_free_gb is not free there. One backup at a
    time per folder: a second waits for the first (up to --lock-wait). Dumps are 0600 in a 0700 folder."""
    stack = load(ctx)
    pg = database(stack)
    began = time.monotonic()
    wait = resolve_wait(settings(ctx).lock_wait, dict(os.environ), stack.control.operation_wait)
    result = run_backup(
        pg, stack.backup.dir, stack.backup.keep, int(stack.backup.min_free_gb * 1e9), label, datetime.now,
        wait, click.echo,
    )  # fmt: skip
    click.echo(
        f"backed up {pg.target.describe()} to {result.path} ({result.size / 1e6:.1f} MB, {result.entries} "
        f"entries) in {time.monotonic() - began:.1f} s"
    )
    for name in result.deleted:
        click.echo(f"  retention: deleted {name}")


@click.command("restore")
@click.argument("dump", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for the database name.")
@click.option("--force", is_flag=True, help="Restore even while an export holds the stack-owner lock.")
@click.option("--drill", is_flag=True, help="Restore into a scratch database, compare counts, drop it.")
@click.pass_context
def restore_cmd(ctx: click.Context, dump: Path, yes: bool, force: bool, drill: bool) -> None:
    """Restore DUMP without ever dropping the live database. The dump is proved whole first (checksum when
    it has a .sha256, a full read of the archive, the extensions on the server); then, with the stack still
    running, it is restored into a new database beside the live one (backup.extensions first) and checked
    (tables, rows, extensions, every table of the dump). Only then does the stack stop, the live database
    is renamed aside (<db>_pre<time>, kept until the next successful restore) and the new one renamed into
    its place, and the stack starts through the gate (which migrates). Any refusal leaves the live
    database as it was and the stack as it was; a failed switch brings the stack back through the gate.

    With --drill nothing live is touched: the dump goes into a scratch database with the same checks, its
    row counts are compared with the live one's, and the scratch database is dropped.
    """
    stack = load(ctx)
    pg = database(stack)
    began = time.monotonic()
    if not drill:
        refuse_system_database(pg.target.database)
        refuse_during_export(stack, "restore", force)
    # Everything that can refuse the dump comes before anything is created or stopped.
    checked = check_dump(pg, dump, stack.backup.extensions)
    if not checked.vouched:
        click.echo(f"note: {dump.name} has no .sha256 beside it; it was read whole instead")
    if drill:
        counts = run_drill(pg, checked, checks(stack), stack.backup.jobs, datetime.now())
        click.echo(
            f"drill of {dump.name}: {len(counts)} tables match the live database "
            f"({sum(counts.values())} rows) in {time.monotonic() - began:.1f} s"
        )
        return
    if not yes:
        typed = click.prompt(
            f"This replaces {pg.target.describe()} with the dump: what was written since it was taken, "
            "including during the restore, is set aside. Type the database name to go on"
        )
        if typed != pg.target.database:
            raise UsageError(f"{typed!r} is not {pg.target.database!r}; nothing was changed.")
    with changing(ctx, "restore", overrides=True) as stack:
        try:
            staging = prepare(pg, checked, checks(stack), stack.backup.jobs, datetime.now(), click.echo)
        except BackupFailed as why:
            raise BackupFailed(
                f"{str(why).rstrip('.')}; nothing was changed: the live database and the stack are as they "
                "were."
            ) from None
        click.echo(f"  checked in {time.monotonic() - began:.1f} s")
        supervisor = Supervisor(stack.socket_path)
        running = supervisor.is_running()
        failed: ProteaError | None = None
        stopped_at = time.monotonic()
        try:
            if running:
                click.echo("stopping the stack's programs (workers finish their jobs within their grace)")
                stop_programs(stack, supervisor, stop_deadline(stack).stop, click.echo)
            kept: list[declared.Declaration] = []

            def keep_declaration(restored: str) -> None:
                found = declared.carry(pg, restored)
                kept.extend([found] if found else [])

            done = switch(pg, staging, datetime.now(), keep_declaration)
        except ProteaError as why:
            failed = why
        else:
            click.echo(f"{pg.target.describe()} is now the restored database")
            for found in kept:
                click.echo(
                    f"  kept the declaration of {found.revision[:10]} (by {found.host}): nodes follow what "
                    "the server runs, not the dump's"
                )
            if done.aside:
                click.echo(f"  the database as it was is kept as {done.aside} until the next restore")
            for name in done.dropped:
                click.echo(f"  dropped {name}, set aside by an earlier restore")
        if running:
            click.echo("starting the stack through the gate (it runs migrate first)")
            try:
                run_gate(stack, supervisor, click.echo)
            except ProteaError as why:
                if failed is None:
                    raise
                raise BackupFailed(
                    f"{str(failed).rstrip('.')}; the live database was not changed, but the stack did not "
                    f"come back: {why}"
                ) from None
            click.echo(f"stack is up ({time.monotonic() - stopped_at:.1f} s after the stop).")
        elif failed is None:
            click.echo("supervisord is not running; `protea-supervisor up` starts the stack (migrate first).")
        if failed is not None:
            back = "; the stack is back up" if running else ""
            raise BackupFailed(
                f"{str(failed).rstrip('.')}; the live database was not changed{back}."
            ) from None


@click.command("install-unit")
@click.option("--user", "user_unit", is_flag=True, help="A user unit (the default).")
@click.option("--system", "system_unit", is_flag=True, help="A system unit, run as the current user.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.pass_context
def install_unit_cmd(
    ctx: click.Context, user_unit: bool, system_unit: bool, output: Path | None, print_only: bool
) -> None:
    """Write the systemd unit that runs supervisord (foreground) with the rendered config at boot."""
    import getpass

    if user_unit and system_unit:
        raise UsageError("--user and --system exclude each other: a unit is one or the other.")
    if print_only and output:
        raise UsageError("--print and --output exclude each other: --print writes nothing.")
    kind = "system" if system_unit else "user"
    stack = load(ctx)
    choice = settings(ctx).stack_choice or ""
    if choice and choice != "demo":
        choice = str(Path(choice).resolve())  # the unit does not run from this directory
    user = getpass.getuser()
    text = render_unit(
        kind, exe_argv(), sys.executable, choice, stack.config_path, int(stop_deadline(stack).stop), user
    )
    if print_only:
        click.echo(text, nl=False)
        return
    path = output or unit_path(kind, Path.home())
    write_atomic(path, text, mode=0o644)
    click.echo(f"wrote {path}; then:")
    for step in next_steps(kind, path, user):
        click.echo(f"  {step}")


COMMANDS = (queues_cmd, backup_cmd, restore_cmd, install_unit_cmd)
