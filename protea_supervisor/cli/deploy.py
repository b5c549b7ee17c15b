"""Deploy commands: one deploy tick, and the trigger for the deploy timer."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import click

from protea_supervisor import exitcodes
from protea_supervisor.cli.common import (
    changing,
    load,
    prepare_dirs,
    refuse_during_export,
    rendered,
    stack_lock,
    stop_deadline,
)
from protea_supervisor.deploy.notify import host_name, now_iso, send_detached, tick_event
from protea_supervisor.deploy.plan import INFRA_FAILED, MEANING, REDEPLOYED, TICK_TASK_ID, unpinned
from protea_supervisor.deploy.record import read_record, write_record
from protea_supervisor.deploy.releases import NoTarget, read_history, rollback_target
from protea_supervisor.deploy.releases import table as releases_table
from protea_supervisor.deploy.tick import finish, roll_back_to, run_tick
from protea_supervisor.deploy.tickenv import TickEnv
from protea_supervisor.errors import OperationBusy, UsageError, WriteFailed, write_failed
from protea_supervisor.listeners.deploy_timer import COMM_TYPE as TIMER_COMM_TYPE
from protea_supervisor.listeners.deploy_timer import MARKER_FILE as TRIGGER_MARKER
from protea_supervisor.listeners.deploy_timer import STATE_FILE as TIMER_STATE_FILE
from protea_supervisor.listeners.deploy_timer import marker_text, trigger_message
from protea_supervisor.stackfile.env import merged_environment, redact, secret_values
from protea_supervisor.stackfile.files import read_json, write_atomic
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.control import Supervisor
from protea_supervisor.supervisord.lifecycle import run_gate, start_supervisord


def tick_env(ctx: click.Context, stack: Stack, supervisor: Supervisor, dry_run: bool) -> TickEnv:
    """What a tick touches; its progress lines go to the terminal and (by hand, not dry) to the tick's log."""
    environ = merged_environment(os.environ, stack.env.files)
    secrets = secret_values(stack.env.files)
    by_hand = os.environ.get("SUPERVISOR_PROCESS_NAME") != TICK_TASK_ID
    log_path = stack.paths.logs / "deploy-tick.log"

    def report(line: str) -> None:
        stamped = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S} {redact(line, secrets)}"
        click.echo(stamped)
        if by_hand and not dry_run:  # under supervisord, stdout already is this log
            # A log that cannot take the line (a full disk) does not stop the tick: the terminal has it.
            with contextlib.suppress(OSError):
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with log_path.open("a", encoding="utf-8") as log:
                    log.write(stamped + "\n")

    def write_config(revision: str) -> None:
        write_atomic(stack.config_path, rendered(stack, revision), mode=0o600)

    return TickEnv(
        stack=stack,
        supervisor=supervisor,
        lock=stack_lock(stack),
        environ=environ,
        secrets=secrets,
        write_config=write_config,
        run_gate=lambda: run_gate(stack, supervisor, report),
        start_supervisord=lambda: start_supervisord(stack, supervisor, report),
        deadlines=stop_deadline(stack),
        report=report,
        trigger=tick_trigger(stack, by_hand),
    )


def announce(env: TickEnv, code: int, summary: str) -> None:
    """The tick's outcome to the webhooks (notify.*), in the background: the tick never waits for them."""
    event = tick_event(
        code, summary, read_record(env.stack).revision, env.trigger, env.stack.name, host_name(), now_iso()
    )
    if event is not None:
        send_detached(env.stack, event, env.report)


def tick_trigger(stack: Stack, by_hand: bool) -> str:
    """Who asked for this tick: the deploy timer (with its reason: poll, retry, trigger:new-commit, ...) or
    a person."""
    if by_hand:
        return f"by hand ({getpass.getuser()})"
    timer = read_json(stack.paths.run / TIMER_STATE_FILE) or {}
    return f"timer ({timer.get('reason') or 'unknown'})"


TICK_HELP = (
    "One deploy tick: keep the worktree on the head of the deploy ref, safely.\n\n\b\nExit codes:\n"
    + "\n".join(f"  {c.code:<3} {c.short}" for c in exitcodes.TICK)
)


@click.command("tick", help=TICK_HELP)
@click.option("--dry-run", is_flag=True, help="Print the decision and the plan; change nothing.")
@click.option("--force", is_flag=True, help="Deploy the remote head even when nothing changed.")
@click.pass_context
def tick_cmd(ctx: click.Context, dry_run: bool, force: bool) -> int:
    stack = load(ctx)
    supervisor = Supervisor(stack.socket_path)
    if dry_run:
        env = tick_env(ctx, stack, supervisor, dry_run=True)
        code, summary = run_tick(env, dry_run=True, force=force)
        env.report(f"tick exit={code} {MEANING.get(code, 'unknown')}: {summary}")
        return code
    report = tick_env(ctx, stack, supervisor, dry_run=False).report
    try:
        prepare_dirs(stack, need_root=False)  # a vanished worktree is the tick's to recreate
        with changing(ctx, "tick", spares=("tunnel",)) as now:
            # The stack as it is once the lock is held: a `scale` may have run while this tick waited.
            env = tick_env(ctx, now, supervisor, dry_run=False)
            code, summary = run_tick(env, dry_run=False, force=force)
            report(f"tick exit={code} {MEANING.get(code, 'unknown')}: {summary}")
            finish(now, code, summary)
            announce(env, code, summary)
    except OperationBusy as busy:
        # The record belongs to the holder: nothing is written.
        code = INFRA_FAILED
        report(f"tick exit={code} {MEANING[code]}: {busy}")
    except (WriteFailed, OSError) as full:
        # A full disk is the infrastructure's, whenever the tick meets it: 50, as its code table says (the
        # deploy timer retries and never blames the revision), with the one line that names the file.
        failed = write_failed(full)
        if failed is None:
            raise
        line = str(failed)
        code = INFRA_FAILED
        click.echo(f"error: {line}", err=True)
        report(f"tick exit={code} {MEANING[code]}: {line}")
    return code


@click.command("trigger")
@click.argument("reason", nargs=-1)
@click.pass_context
def trigger_cmd(ctx: click.Context, reason: tuple[str, ...]) -> None:
    """Ask the deploy timer for a tick now. REASON (free text, first 200 characters) goes to its log.

    The marker file <run>/deploy-trigger is written atomically, and when supervisord answers the same
    trigger is sent as a REMOTE_COMMUNICATION event, which the timer acts on at once (otherwise it finds the
    marker at its next TICK_5). Other tools can send the event themselves: supervisor.sendRemoteCommEvent(
    "protea-deploy-timer", '{"kind": "trigger", "trigger": "manual", "reason": "..."}').
    """
    stack = load(ctx)
    if not stack.deploy.enabled:
        raise UsageError(
            f"this stack has no deploy timer (deploy.enabled is false in {stack.origin('deploy.enabled')}); "
            "nothing would act on a trigger. `protea-supervisor tick` deploys by hand."
        )
    prepare_dirs(stack, need_root=False)
    text = " ".join(reason)[:200] or "manual trigger"
    marker = stack.paths.run / TRIGGER_MARKER
    # One id in the marker and in the event: the timer acts on whichever it sees first, once.
    token = uuid.uuid4().hex[:12]
    write_atomic(marker, marker_text(text, token))
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        click.echo(f"supervisord is not running; the trigger waits in {marker} for the deploy timer")
        return
    timer = next((i["statename"] for i in supervisor.all_process_info() if i["name"] == "deploy-timer"), None)
    if timer != "RUNNING":
        click.echo(
            f"the deploy timer is {timer or 'not in the running config'}; the trigger waits in {marker} "
            "until it runs (`protea-supervisor up` starts it)"
        )
        return
    supervisor.send_comm(TIMER_COMM_TYPE, trigger_message(text, trigger_id=token))
    click.echo(f"triggered: {text}")


@click.command("deploys")
@click.option("--json", "as_json", is_flag=True, help="Every entry, as recorded.")
@click.option(
    "-n", "--last", default=20, show_default=True, type=click.IntRange(min=1), help="Entries shown."
)
@click.pass_context
def deploys_cmd(ctx: click.Context, as_json: bool, last: int) -> None:
    """The release history, newest first: every deploy a tick made or tried (revision, when, how long,
    result and the step that failed, whether it installed or built, and what triggered it)."""
    history = read_history(load(ctx).paths.run)[-last:]
    if as_json:
        click.echo(json.dumps([entry.__dict__ for entry in reversed(history)], indent=2))
        return
    click.echo(releases_table(history, time.time()))


@click.command("rollback")
@click.argument("revision", required=False, default="")
@click.option("--force", is_flag=True, help="Roll back even while an export holds the stack-owner lock.")
@click.pass_context
def rollback_cmd(ctx: click.Context, revision: str, force: bool) -> int:
    """Deploy REVISION again (a sha or its first digits), or without it the newest revision deployed here
    successfully before the current one, through the tick's plan (install and build when they differ,
    migrate, restart, verify; the current revision back if it fails). Then pin it: the deploy timer does
    not move forward to the revision rolled back from; a newer commit on the branch, `unpin`, or
    `tick --force` ends the pin. Exit codes as `tick`'s, but 0 when the revision serves."""
    base = load(ctx, overrides=False)
    refuse_during_export(base, "roll back", force)
    try:
        return _roll_back(ctx, base, revision)
    except WriteFailed as full:
        click.echo(f"error: {full}", err=True)  # a full disk: the infrastructure's, as for a tick
        return INFRA_FAILED


def _roll_back(ctx: click.Context, base: Stack, revision: str) -> int:
    with changing(ctx, "rollback", base) as stack:
        prepare_dirs(stack)
        record = read_record(stack)
        if not record.revision:
            raise UsageError("nothing was deployed by a tick on this host; there is nothing to roll back.")
        try:
            target = rollback_target(read_history(stack.paths.run), record.revision, revision.strip())
        except NoTarget as why:
            raise UsageError(f"{why}.") from None
        supervisor = Supervisor(stack.socket_path)
        env = replace(
            tick_env(ctx, stack, supervisor, dry_run=False), trigger=f"rollback ({getpass.getuser()})"
        )
        code, summary = roll_back_to(env, target)
        env.report(f"rollback exit={code} {MEANING.get(code, 'unknown')}: {summary}")
        finish(stack, code, summary)
        announce(env, code, summary)
    return 0 if code == REDEPLOYED else code


@click.command("unpin")
@click.pass_context
def unpin_cmd(ctx: click.Context) -> None:
    """End the pin a `rollback` set: the deploy timer's next tick deploys the remote head again."""
    with changing(ctx, "unpin") as stack:
        record = read_record(stack)
        if not record.pinned:
            click.echo("nothing is pinned; the deploy timer follows the remote head.")
            return
        write_record(stack, unpinned(record))
    click.echo(
        f"unpinned {record.pinned[:10]}; the next tick deploys the remote head "
        "(`protea-supervisor trigger` asks for it now)."
    )


COMMANDS = (tick_cmd, trigger_cmd, deploys_cmd, rollback_cmd, unpin_cmd)
