"""Stack commands: render, up, down, reload and the gate (`scale` is cli/scale.py). Each one that changes
the stack holds the host's operation lock (common.changing); the dry runs hold nothing and change nothing."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from protea_supervisor.cli.common import (
    changing,
    load,
    prepare_dirs,
    refuse_during_export,
    rendered,
    shadow_notes,
    stack_flag,
    stop_deadline,
)
from protea_supervisor.deploy.apiswitch import SwitchContext, replaced
from protea_supervisor.deploy.plan import MEANING, REDEPLOYED
from protea_supervisor.deploy.record import read_record
from protea_supervisor.deploy.tick import finish, first_deploy
from protea_supervisor.errors import StackFailed, SupervisorDown
from protea_supervisor.humane import GATE_TIMES, gate_lines, isoified
from protea_supervisor.operations.autoscale import describe
from protea_supervisor.stackfile.env import check_required, merged_environment
from protea_supervisor.stackfile.files import write_atomic
from protea_supervisor.stackfile.overrides import (
    apply_counts,
    batch_counts,
    load_counts,
    load_pinned,
    save_counts,
)
from protea_supervisor.stackfile.stack import MAX_PROCESSES, Stack
from protea_supervisor.supervisord.apply import apply_plan, stack_is_up, sync_group
from protea_supervisor.supervisord.control import RUNNING_STATES, Supervisor
from protea_supervisor.supervisord.gate_contract import read_state as read_gate_state
from protea_supervisor.supervisord.lifecycle import (
    await_daemon,
    chain_summary,
    own_start_time,
    recover_orphans,
    run_gate,
    shut_down,
    start_supervisord,
)
from protea_supervisor.supervisord.logfiles import prune_logs
from protea_supervisor.supervisord.reconcile import describe_plan, plan_from_document


@click.command("render")
@click.option("--check", is_flag=True, help="Validate with supervisord's parser; write nothing.")
@click.option(
    "--diff", "show_diff", is_flag=True, help="Show the change against the config on disk; write nothing."
)
@click.pass_context
def render_cmd(ctx: click.Context, check: bool, show_diff: bool) -> None:
    """Render the supervisord config into the run dir (atomically, only if supervisord would accept it)."""
    stack = load(ctx)
    path = stack.config_path
    if check or show_diff:
        text = rendered(stack, dry_run=True)
        for note in shadow_notes(ctx, stack):
            click.echo(note)
        if show_diff:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            diff = "".join(
                difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), str(path), f"{path} (rendered)"
                )
            )
            click.echo(diff.rstrip("\n") if diff else f"{path} is up to date.")
            return
        processes = sum(len(q.process_names()) for q in stack.queues)
        click.echo(f"ok: the rendered config is valid ({processes} worker processes); nothing written.")
        return
    with changing(ctx, "render") as stack:
        prepare_dirs(stack)
        write_atomic(path, rendered(stack), mode=0o600)
    for note in shadow_notes(ctx, stack):
        click.echo(note)
    click.echo(f"wrote {path}")


@click.command("up")
@click.argument("count", required=False, type=click.IntRange(min=1, max=MAX_PROCESSES))
@click.pass_context
def up_cmd(ctx: click.Context, count: int | None) -> None:
    """Render, start supervisord if needed, start the stack in order; COUNT sizes the batch queues.

    On a host with no deploy record (and deploy.enabled), the first `up` is the first deploy: it checks
    out the remote head, installs, builds the frontend, then starts the stack through the gate.
    """
    with changing(ctx, "up") as stack:
        if count is not None:
            counts = load_counts(stack.paths.run) | batch_counts(stack, count)
            stack = apply_counts(stack, counts)
        supervisor = Supervisor(stack.socket_path)
        # A supervisord of this stack that runs but is slow to answer is waited for, never doubled.
        running = supervisor.is_running() or await_daemon(stack, supervisor, click.echo)
        # A node never deploys the remote head: its timer follows the server's declaration once it runs.
        first = (
            not running and stack.deploy.enabled and not read_record(stack).revision and not stack.host.node
        )
        # On a fresh host the first deploy makes the worktree from deploy.repository, as a tick would.
        prepare_dirs(stack, need_root=not first)
        # Before anything starts: a missing variable is named now, not as a crash loop later.
        env = merged_environment(os.environ, stack.env.files)
        check_required(env, stack.env.required, stack.env.require_jwt_secret, stack.env.files)
        text = rendered(stack)
        if count is not None:
            save_counts(stack.paths.run, counts)
        if first:
            first_deploy_up(ctx, stack, supervisor)
            return
        write_atomic(stack.config_path, text, mode=0o600)
        if running:
            recover_orphans(stack, supervisor, click.echo)
            apply_idle_changes(stack, supervisor)
        else:
            start_supervisord(stack, supervisor, click.echo)
        summary = chain_summary(run_gate(stack, supervisor, click.echo), own_start_time(), time.time())
        if summary:
            click.echo(summary)
        prune_logs(stack, click.echo)
    click.echo(
        f"stack is up. status: protea-supervisor{stack_flag(ctx)} status; "
        f"or supervisorctl -c {stack.config_path} status"
    )


def first_deploy_up(ctx: click.Context, stack: Stack, supervisor: Supervisor) -> None:
    """`up` on a fresh host: the first deploy, then the stack through the gate (tick.first_deploy)."""
    from protea_supervisor.cli.deploy import announce, tick_env

    click.echo("no deploy record on this host: the first `up` deploys the remote head first")
    env = replace(tick_env(ctx, stack, supervisor, dry_run=False), trigger="first deploy (up)")
    code, summary = first_deploy(env)
    env.report(f"first deploy exit={code} {MEANING.get(code, 'unknown')}: {summary}")
    finish(stack, code, summary)
    announce(env, code, summary)
    if code != REDEPLOYED:
        raise StackFailed(f"the first deploy failed: {summary}")
    click.echo(f"stack is up. status: protea-supervisor{stack_flag(ctx)} status")


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


@click.command("down")
@click.option("--force", is_flag=True, help="Stop even while an export holds the stack-owner lock.")
@click.pass_context
def down_cmd(ctx: click.Context, force: bool) -> None:
    """Stop every program at once (workers drain in parallel, each within its grace), then supervisord."""
    base = load(ctx, overrides=False)
    refuse_during_export(base, "down", force)
    with changing(ctx, "down", base) as stack:
        supervisor = Supervisor(stack.socket_path)
        if not supervisor.is_running() and not await_daemon(stack, supervisor, click.echo):
            stopped = recover_orphans(stack, supervisor, click.echo)
            click.echo(
                "supervisord is not running; " + ("orphans stopped." if stopped else "nothing to stop.")
            )
            return
        shut_down(supervisor, stop_deadline(stack).stop, click.echo)
    click.echo("stack is down.")


def autoscale_settings(stack: Stack) -> list[str]:
    """The autoscaler's settings as the stack file gives them (a dry run shows what a reload would load)."""
    pinned = load_pinned(stack.paths.run)
    return [
        f"autoscale {q.name}: {describe(q.autoscale)}; now {q.processes}"
        + (" (pinned by the operator)" if q.program in pinned else "")
        for q in stack.queues
        if q.autoscale
    ]


@click.command("reload")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--force", is_flag=True, help="Apply even while an export holds the stack-owner lock.")
@click.pass_context
def reload_cmd(ctx: click.Context, dry_run: bool, force: bool) -> None:
    """Re-render and apply the difference to the running stack with the least disruption.

    Count-only changes are made in place; changed programs are restarted in priority order, the worker
    queues together (each worker finishes its job within its grace); new programs are added and started in
    priority order; removed ones
    are stopped and removed. Programs that did not change are not touched. Never `supervisorctl reload`.
    """
    stack = load(ctx)
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        raise SupervisorDown(
            f"supervisord is not running (no answer on {stack.socket_path}); `up` starts the stack."
        )
    if dry_run:
        text = rendered(stack, dry_run=True)
        for note in shadow_notes(ctx, stack):
            click.echo(note)
        with tempfile.TemporaryDirectory(prefix="protea-reload-") as tmp:
            candidate = Path(tmp) / "supervisord.conf"
            candidate.write_text(text, encoding="utf-8")
            plan = plan_from_document(supervisor.plan_reload(candidate))
        for line in describe_plan(plan, switchable(stack)):
            click.echo(line)
        for line in autoscale_settings(stack):
            click.echo(line)
        return
    refuse_during_export(stack, "reload", force)
    with changing(ctx, "reload") as stack:
        prepare_dirs(stack)
        write_atomic(stack.config_path, rendered(stack), mode=0o600)
        plan = plan_from_document(supervisor.plan_reload())
        for line in describe_plan(plan, switchable(stack)):
            click.echo(line)
        if plan.empty:
            return
        # On a socket supervisord holds the API is replaced start-first, as a deploy does.
        if "api" in plan.changed and replaced(
            SwitchContext(stack, supervisor, stop_deadline(stack), click.echo)
        ):
            plan = plan.only(plan.moved - {"api"})
        apply_plan(supervisor, plan, stop_deadline(stack), click.echo, stack_is_up(stack, supervisor))
        prune_logs(stack, click.echo)
    click.echo("reload done.")


def switchable(stack: Stack) -> set[str]:
    """The groups `reload` replaces start-first when they changed: the API on a socket supervisord holds."""
    api = stack.program("api")
    return {"api"} if api.enabled and api.socket else set()


@click.group("gate")
def gate_group() -> None:
    """The readiness gate: infra ports, migrate, api, web, tunnel, then the workers."""


@gate_group.command("retry")
@click.pass_context
def gate_retry(ctx: click.Context) -> None:
    """Run the gate again from the first step that is not satisfied (a migration that passed is kept)."""
    with changing(ctx, "gate retry") as stack:
        supervisor = Supervisor(stack.socket_path)
        recover_orphans(stack, supervisor, click.echo)
        run_gate(stack, supervisor, click.echo, retry=True)
    click.echo("gate: done.")


@gate_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="The state file, times as ISO 8601 (UTC).")
@click.pass_context
def gate_status(ctx: click.Context, as_json: bool) -> None:
    """The gate's last run: its phase, step, when, and why it failed."""
    doc = read_gate_state(load(ctx).paths.run)
    if as_json:
        click.echo(json.dumps(isoified(doc or {"phase": "unknown"}, GATE_TIMES), indent=2))
        return
    for line in gate_lines(doc, time.time()):
        click.echo(line)


COMMANDS = (render_cmd, up_cmd, down_cmd, reload_cmd, gate_group)
