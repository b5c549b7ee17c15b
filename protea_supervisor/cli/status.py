"""What the operator reads: status, logs, and the tunnel watchdog's commands."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from protea_supervisor.cli.common import load, shadow_notes, stack_lock
from protea_supervisor.deploy.plan import DeployRecord
from protea_supervisor.deploy.record import read_record
from protea_supervisor.deploy.worktree import is_worktree
from protea_supervisor.errors import LockCorrupt, SupervisorDown, UsageError
from protea_supervisor.hosts import declared, heartbeats
from protea_supervisor.hosts.guard import read_refusals
from protea_supervisor.humane import TUNNEL_TIMES, autoscale_line, iso, isoified, tunnel_line, tunnel_lines
from protea_supervisor.listeners.autoscaler import STATE_FILE as AUTOSCALE_STATE_FILE
from protea_supervisor.listeners.deploy_timer import STATE_FILE as TIMER_STATE_FILE
from protea_supervisor.listeners.deploy_timer import next_tick_at
from protea_supervisor.listeners.tunnel_watch import COMM_TYPE as TUNNEL_COMM_TYPE
from protea_supervisor.listeners.tunnel_watch import STATE_FILE as TUNNEL_STATE_FILE
from protea_supervisor.listeners.tunnel_watch import reset_message as tunnel_reset_message
from protea_supervisor.locks.operation import read_holder
from protea_supervisor.progress import names
from protea_supervisor.stackfile.env import redact, secret_values
from protea_supervisor.stackfile.files import read_json
from protea_supervisor.stackfile.host import REFUSALS
from protea_supervisor.stackfile.overrides import load_pinned
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord import orphans
from protea_supervisor.supervisord.control import Supervisor
from protea_supervisor.supervisord.gate_contract import read_state as read_gate_state
from protea_supervisor.supervisord.lifecycle import supervisord_pid
from protea_supervisor.supervisord.status import (
    group_rss_kb,
    older_revision,
    process_revision,
    read_tail,
    rows,
    spawn_counts,
    table,
)


def deploy_line(record: DeployRecord, behind: Sequence[str], next_at: float | None) -> str:
    upcoming = f"; next tick {iso(next_at)}" if next_at else ""
    if not record.revision:
        return f"deploy: nothing deployed by a tick yet{upcoming}"
    last = (
        f"; last tick {record.last_tick_at} exit {record.last_exit} ({record.last_summary})"
        if record.last_tick_at
        else ""
    )
    older = f"; running an older revision: {', '.join(behind)}" if behind else ""
    pin = (
        f"; PINNED by rollback since {record.pinned_at} (not moving to {record.pinned_against[:10]}; a newer "
        "commit or `unpin` resumes deploys)"
        if record.pinned
        else ""
    )
    return f"deploy: deployed {record.revision[:10]} at {record.deployed_at}{pin}{last}{upcoming}{older}"


def worktree_head(stack: Stack) -> str:
    if not is_worktree(stack.paths.root):
        return ""
    result = subprocess.run(
        ["git", "-C", str(stack.paths.root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def lock_view(stack: Stack) -> dict[str, str]:
    """The stack-owner lock as it is: a corrupt file is shown as corrupt, never as free."""
    try:
        owner = stack_lock(stack).read()
    except LockCorrupt as why:
        return {"owner": "corrupt", "task_id": "", "acquired_at": "", "problem": str(why)}
    return {"owner": owner.owner, "task_id": owner.task_id, "acquired_at": owner.acquired_at}


def lock_line(view: dict[str, str]) -> str:
    if view["owner"] == "corrupt":
        return f"stack-owner lock: CORRUPT: {view['problem']}"
    holder = f" ({view['task_id']} since {view['acquired_at']})" if view["owner"] != "free" else ""
    return f"stack-owner lock: {view['owner']}{holder}"


def differences(stack: Stack, record: DeployRecord) -> list[str]:
    """Where the deploy record and what runs disagree."""
    found = []
    head = worktree_head(stack)
    if record.revision and head and head != record.revision:
        found.append(
            f"the worktree is at {head[:10]} but {stack.paths.run / 'deployed.json'} records "
            f"{record.revision[:10]}"
        )
    return found


def autoscale_view(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each autoscaled queue: its settings, its count, whether the operator pinned it, and what the
    autoscaler last saw and decided (<run>/autoscale.json)."""
    doc = read_json(stack.paths.run / AUTOSCALE_STATE_FILE) or {}
    seen = doc.get("queues") if isinstance(doc.get("queues"), dict) else {}
    pinned = load_pinned(stack.paths.run)
    return {
        q.name: {
            "count": q.processes,
            "min": q.autoscale.min,
            "max": q.autoscale.max,
            "target_backlog": q.autoscale.target_backlog,
            "pinned": q.program in pinned,
            "seen": (seen or {}).get(q.name) or {},
        }
        for q in stack.queues
        if q.autoscale
    }


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--all-hosts", is_flag=True, help="Every host's heartbeat from the server's Postgres, side by side."
)
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, all_hosts: bool) -> None:
    """Every process: state, pid, RSS (whole process group), uptime, restarts."""
    stack = load(ctx)
    if all_hosts:
        _all_hosts(stack, as_json)
        return
    supervisor = Supervisor(stack.socket_path)
    pid = supervisord_pid(supervisor, stack.config_path)
    left = orphans.find(stack.socket_path, pid)
    if pid is None or not supervisor.is_running():
        _report_down(stack, left, as_json, pid)
    infos = supervisor.all_process_info()
    rss = group_rss_kb(int(i["pid"]) for i in infos if i["pid"])
    spawns = spawn_counts(read_tail(stack.paths.run / "supervisord.log"))
    status_rows = rows(infos, rss, spawns, read_refusals(stack.paths.run / REFUSALS))
    lock = lock_view(stack)
    gate = read_gate_state(stack.paths.run) or {}
    watch = read_json(stack.paths.run / TUNNEL_STATE_FILE) or {}
    deployed = read_record(stack)
    timer = read_json(stack.paths.run / TIMER_STATE_FILE) or {}
    revisions = {i["name"]: process_revision(int(i["pid"])) for i in infos if i["pid"]}
    behind = older_revision(revisions, deployed.revision)
    holder = read_holder(stack.paths.run)
    notes = [*shadow_notes(ctx, stack), *(f"note: {d}" for d in differences(stack, deployed))]
    autoscaled = autoscale_view(stack)
    if as_json:
        payload = {
            "processes": [r.as_dict() for r in status_rows],
            "gate": {key: gate.get(key) for key in ("phase", "step", "reason", "finished_at")},
            "tunnel_watch": watch,
            "deploy": deployed.to_doc()
            | {"older_revision": behind, "next_tick_at": next_tick_at(timer) if timer else None},
            "lock": lock,
            "operation": holder.__dict__ if holder else None,
            "orphans": [o.__dict__ for o in left],
            "notes": notes,
            "autoscale": autoscaled,
            "config": str(stack.config_path),
        }
        click.echo(json.dumps(payload, indent=2, default=list))
        return
    click.echo(table(status_rows))
    click.echo(f"\n{lock_line(lock)}")
    if holder:
        click.echo(f"operation in progress: {holder.describe()}")
    phase = gate.get("phase", "unknown")
    detail = f" at {gate.get('step')}: {gate.get('reason')}" if phase in ("failed", "cancelled") else ""
    detail = f" (step {gate.get('step')})" if phase == "running" else detail
    listener = next((r.state for r in status_rows if r.name == "gate"), "missing")
    if listener != "RUNNING":
        detail += f"; the gate listener is {listener} (`up` starts it)"
    click.echo(f"gate: {phase}{detail}")
    if watch:
        click.echo(tunnel_line(watch, time.time()))
    click.echo(deploy_line(deployed, behind, next_tick_at(timer) if timer else None))
    for queue, view in autoscaled.items():
        bounds = f"{view['min']}-{view['max']}, {view['target_backlog']} per process"
        click.echo(autoscale_line(queue, view["count"], bounds, view["pinned"], view["seen"], time.time()))
    if left:
        click.echo(
            f"ORPHANS: {len(left)} process group(s) of this stack outside supervisord: "
            f"{orphans.describe(left)}; `protea-supervisor up` stops them gracefully."
        )
    for note in notes:
        click.echo(note)


def _all_hosts(stack: Stack, as_json: bool) -> None:
    """Read from the server's Postgres only: it works while this host's supervisord is down."""
    variable = stack.host.db_url_env
    url = declared.server_url(stack)
    try:
        beats = heartbeats.read_all(url, variable)
        declaration = declared.current(url, variable)
    except declared.DeclarationUnavailable as why:
        raise declared.DeclarationUnavailable(
            f"status --all-hosts reads every host's heartbeat from the server's Postgres "
            f"(host.db_url_env = {variable}): {why}"
        ) from None
    revision = declaration.revision if declaration else None
    # This host's stack names the singleton queues (every host runs the same queue list).
    singletons = {q.program: q.name for q in stack.queues if q.singleton}
    if as_json:
        payload = {
            "declared": declaration.__dict__ if declaration else None,
            "hosts": [beat.__dict__ | {"stale": beat.age_s > stack.host.stale_after} for beat in beats],
            "problems": heartbeats.flags(beats, revision, stack.host.stale_after, singletons),
        }
        click.echo(json.dumps(payload, indent=2, default=list))
        return
    for line in heartbeats.view(beats, revision, stack.host.stale_after, singletons):
        click.echo(line)


def _report_down(stack: Stack, left: list[orphans.Orphan], as_json: bool, pid: int | None) -> None:
    """supervisord does not answer: say so, with any programs it left behind (exit 6). `pid`: a supervisord
    of this stack that runs all the same (starting, busy, shutting down); its programs are no orphans."""
    if as_json:
        doc = {
            "supervisord": "down" if pid is None else "not answering",
            "pid": pid,
            "orphans": [o.__dict__ for o in left],
            "config": str(stack.config_path),
        }
        click.echo(json.dumps(doc, indent=2, default=list))
    message = f"supervisord is not running (no answer on {stack.socket_path})"
    if pid is not None:
        message = (
            f"supervisord (pid {pid}) runs for this stack but does not answer on {stack.socket_path} as "
            "running (it is starting, busy or shutting down)"
        )
    if left:
        message += (
            f", but {len(left)} process group(s) of this stack still run without it: "
            f"{orphans.describe(left)}. `protea-supervisor up` stops them gracefully (their stop signal and "
            "grace) and starts the stack"
        )
    raise SupervisorDown(message + ".")


@click.command("logs")
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
        programs = [p.stem for p in logs]
        available = names(programs) or "none yet"
        raise UsageError(f"no log in {stack.paths.logs} matches {name!r}; there are logs of {available}.")
    secrets = secret_values(stack.env.files)
    if follow:
        # tail -F follows rotation; it replaces this process, so the operator's Ctrl-C goes straight to it.
        os.execvp("tail", ["tail", "-n", str(lines), "-F", *map(str, chosen)])
    for path in chosen:
        if len(chosen) > 1:
            click.echo(f"==> {path} <==")
        for line in last_lines(path, lines) if lines else []:
            click.echo(redact(line, secrets))


def last_lines(path: Path, count: int) -> list[str]:
    return read_tail(path, 64 * 1024).splitlines()[-count:]


@click.group("tunnel")
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
@click.option("--json", "as_json", is_flag=True, help="The state file, times as ISO 8601 (UTC).")
@click.pass_context
def tunnel_status(ctx: click.Context, as_json: bool) -> None:
    """The watchdog's view: the tunnel's state, the last probe and its age, failures, restarts."""
    stack = load(ctx)
    doc = read_json(stack.paths.run / TUNNEL_STATE_FILE)
    if as_json:
        click.echo(json.dumps(isoified(doc or {"tunnel": "unknown"}, TUNNEL_TIMES), indent=2))
        return
    for line in tunnel_lines(doc, time.time(), stack.tunnel_watch.max_restarts_per_hour):
        click.echo(line)


COMMANDS = (status_cmd, logs_cmd, tunnel_group)
