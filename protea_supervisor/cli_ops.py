"""Operations commands: the stalled-queue detector, Postgres backup and restore, the systemd unit."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from protea_supervisor.backup import (
    Postgres,
    RestoreChecks,
    check_dump,
    check_restored,
    restore_into,
    run_backup,
    target_from_url,
)
from protea_supervisor.backup import drill as run_drill
from protea_supervisor.cli_common import (
    changing,
    exe_argv,
    load,
    prepare_dirs,
    refuse_during_export,
    settings,
    stop_deadline,
)
from protea_supervisor.control import Supervisor
from protea_supervisor.env import merged_environment
from protea_supervisor.errors import (
    BackupFailed,
    EnvError,
    UsageError,
)
from protea_supervisor.files import write_atomic
from protea_supervisor.lifecycle import run_gate, stop_programs
from protea_supervisor.listeners.edge import read_json
from protea_supervisor.queues import Watch, fetch_queues, judge, readings, running_counts
from protea_supervisor.queues import table as queues_table
from protea_supervisor.stack import Stack
from protea_supervisor.unit import next_steps, render_unit, unit_path

QUEUES_STATE_FILE = "queues-heartbeat.json"


@click.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def queues_cmd(ctx: click.Context, as_json: bool) -> int:
    """Flag stalled, starved and under-staffed queues from the RabbitMQ management API.

    \b
    Exit codes (today's queue_heartbeat.py contract):
      0  healthy
      1  a queue is stalled, starved, or its consumers differ from its RUNNING workers
      2  the broker's management API is unreachable
    """
    stack = load(ctx)
    prepare_dirs(stack, need_root=False)
    env = merged_environment(os.environ, stack.env.files)
    user, password = rabbit_credentials(env)
    doc = fetch_queues(stack.monitor.rabbit_api, user, password)
    supervisor = Supervisor(stack.socket_path)
    running = running_counts(supervisor.all_process_info()) if supervisor.is_running() else {}
    watches = {
        q.name: Watch(q.starved_after, q.program, running.get(q.program, 0) if running else None)
        for q in stack.queues
        if q.processes
    } | {q.name: Watch(q.starved_after) for q in stack.queues if not q.processes}
    state_path = stack.paths.run / QUEUES_STATE_FILE
    previous = read_json(state_path) or {}
    verdicts, since = judge(
        readings(doc, stack.monitor.queue_prefix, stack.monitor.exempt),
        watches,
        {k: float(v) for k, v in previous.items()},
        time.time(),
        stack.monitor.starved_after,
    )
    write_atomic(state_path, json.dumps(since, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps([v.__dict__ for v in verdicts], indent=2))
    else:
        click.echo(queues_table(verdicts))
    return 1 if any(v.fault for v in verdicts) else 0


def rabbit_credentials(env: dict[str, str]) -> tuple[str, str]:
    """PROTEA_RABBIT_USER/PASS (today's script), else the user in PROTEA_AMQP_URL, else guest/guest."""
    from urllib.parse import unquote, urlsplit

    if env.get("PROTEA_RABBIT_USER"):
        return env["PROTEA_RABBIT_USER"], env.get("PROTEA_RABBIT_PASS", "")
    try:
        amqp = urlsplit(env.get("PROTEA_AMQP_URL", ""))
    except ValueError:
        return "guest", "guest"
    if amqp.username:
        return unquote(amqp.username), unquote(amqp.password or "")
    return "guest", "guest"


def database(stack: Stack) -> Postgres:
    env = merged_environment(os.environ, stack.env.files)
    variable = stack.backup.database_url_env
    if not env.get(variable):
        raise EnvError(f"{variable} is not set (in the environment or the env files); backup needs it.")
    return Postgres(target_from_url(env[variable], variable))


@click.command("backup")
@click.option("--label", default="", help="Appended to the dump's name (protea-<time>-<label>.dump).")
@click.pass_context
def backup_cmd(ctx: click.Context, label: str) -> None:
    """pg_dump (custom format, no owner) into backup.dir, verified with pg_restore --list, with a .sha256;
    keeps the newest backup.keep dumps. Refused when backup.min_free_gb is not free there."""
    stack = load(ctx)
    pg = database(stack)
    began = time.monotonic()
    result = run_backup(
        pg, stack.backup.dir, stack.backup.keep, int(stack.backup.min_free_gb * 1e9), label, datetime.now()
    )
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
    """Restore DUMP: stop the stack, drop and recreate the database, create backup.extensions first,
    pg_restore, check (tables, rows, extensions), then start the stack through the gate (which migrates).

    With --drill nothing live is touched: the dump goes into a scratch database whose row counts are
    compared with the live one's, and the scratch database is dropped.
    """
    stack = load(ctx)
    pg = database(stack)
    rules = stack.backup
    began = time.monotonic()
    if drill:
        counts, problems = run_drill(
            pg, dump, rules.extensions, rules.check_tables, rules.jobs, datetime.now()
        )
        if problems:
            raise BackupFailed(f"drill of {dump.name}: " + "; ".join(problems))
        click.echo(
            f"drill of {dump.name}: {len(counts)} tables match the live database "
            f"({sum(counts.values())} rows) in {time.monotonic() - began:.1f} s"
        )
        return
    refuse_during_export(stack, "restore", force)
    # Everything that can refuse the dump comes before anything is stopped or dropped.
    check_dump(pg, dump, rules.extensions)
    name = pg.target.database
    if not yes:
        typed = click.prompt(f"This drops {pg.target.describe()}. Type the database name to go on")
        if typed != name:
            raise UsageError(f"{typed!r} is not {name!r}; nothing was changed.")
    with changing(ctx, "restore", overrides=True) as stack:
        supervisor = Supervisor(stack.socket_path)
        running = supervisor.is_running()
        if running:
            click.echo("stopping the stack's programs (workers finish their jobs within their grace)")
            stop_programs(stack, supervisor, stop_deadline(stack).stop, click.echo)
        click.echo(f"restoring {dump.name} into {pg.target.describe()}")
        warnings = restore_into(pg, dump, name, rules.extensions, rules.jobs)
        problems = check_restored(
            pg, name, RestoreChecks(rules.extensions, rules.check_tables, rules.min_tables)
        )
        if problems:
            tail = f" (pg_restore said: {warnings.strip().splitlines()[-1]})" if warnings.strip() else ""
            stopped = "; the stack stays stopped" if running else ""
            raise BackupFailed(
                f"restore of {dump.name} failed its checks: {'; '.join(problems)}{tail}{stopped}"
            )
        click.echo(f"restored and checked in {time.monotonic() - began:.1f} s")
        if running:
            click.echo("starting the stack through the gate (it runs migrate first)")
            run_gate(stack, supervisor, click.echo)
            click.echo("stack is up.")
        else:
            click.echo("supervisord is not running; `protea-supervisor up` starts the stack (migrate first).")


@click.command("install-unit")
@click.option("--user", "kind", flag_value="user", default=True, help="A user unit (default).")
@click.option("--system", "kind", flag_value="system", help="A system unit, run as the current user.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.pass_context
def install_unit_cmd(ctx: click.Context, kind: str, output: Path | None, print_only: bool) -> None:
    """Write the systemd unit that runs supervisord (foreground) with the rendered config at boot."""
    import getpass

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
