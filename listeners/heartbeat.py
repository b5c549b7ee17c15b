"""This host's heartbeat in the server's Postgres (host.heartbeat): an event listener that upserts one row
per host (`heartbeats.TABLE`) on every process state change (at most one a second, the rest coalesced into
the next TICK_5), at a TICK_5 when this host's stack-owner lock is not what the last beat carried (an export
taken or ended: within 5 s), and at least every 10 s, so `status --all-hosts` sees every host's processes and
a host whose supervisord died goes stale.

`handle` is pure: (state, event, now, lock) -> (state, actions); `sent` records the outcome of a send. The
executor reads the lock file at each TICK_5, supervisord's process list and each process's PROTEA_REVISION,
and writes the row; a write that fails (Postgres unreachable) is logged once per kind of failure and retried
at the next TICK_5.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from protea_supervisor.deploy.plan import record_from_doc
from protea_supervisor.errors import ProteaError
from protea_supervisor.stackfile.files import read_json

from .actions import Log
from .edge import execute_each, listener_stack, rpc_factory
from .protocol import Event, run

INTERVAL = 10.0  # heartbeats.INTERVAL: at least this often
SPACING = 1.0  # at most one heartbeat a second for state changes
TICK = 5.0  # TICK_5's period
# At a tick, a beat goes out when the next tick could come too late for INTERVAL (half a second allowed for a
# late tick): with regular ticks that is every tick, and never more than INTERVAL apart.
DUE = INTERVAL - TICK - 0.5


@dataclass(frozen=True)
class BeatState:
    last_sent: float | None = None  # when the last heartbeat was written (None: never)
    dirty: bool = False  # a process changed state since
    last_error: str = ""
    lock: str | None = None  # the stack-owner lock (owner and task) the last beat carried


@dataclass(frozen=True)
class SendBeat:
    reason: str


def _since(state: BeatState, now: float) -> float:
    return float("inf") if state.last_sent is None else now - state.last_sent


def handle(state: BeatState, event: Event, now: float, lock: str = "") -> tuple[BeatState, list[Any]]:
    """`lock`: the stack-owner lock as it is now (read at each TICK_5)."""
    if event.name.startswith("PROCESS_STATE"):
        if _since(state, now) >= SPACING:
            return replace(state, dirty=False), [SendBeat(f"{event.process} {event.state}")]
        return replace(state, dirty=True), []
    if event.name == "TICK_5":
        if state.lock is not None and lock != state.lock:
            return replace(state, dirty=False), [SendBeat(f"stack-owner lock {lock}")]
        if state.dirty or _since(state, now) >= DUE:
            return replace(state, dirty=False), [SendBeat("changes" if state.dirty else "interval")]
    return state, []


def sent(state: BeatState, error: str, now: float, lock: str = "") -> tuple[BeatState, list[Any]]:
    """After a send (carrying `lock`): a failure leaves the beat due (the next TICK_5 sends again), logged
    once per kind."""
    if not error:
        back = [Log(f"heartbeat: sent again after: {state.last_error}")] if state.last_error else []
        return replace(state, last_sent=now, last_error="", lock=lock), back
    said = [] if error == state.last_error else [Log(f"heartbeat: not sent: {error}")]
    return replace(state, dirty=True, last_error=error), said


def processes(
    infos: Sequence[dict[str, Any]], now: float, refused: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], ...]:
    """Each process as the heartbeat carries it; `refused` (`group:process` -> why) marks a worker whose
    last start a check refused, while it is down."""
    from protea_supervisor.supervisord.status import process_revision

    found = []
    for info in infos:
        running = info["statename"] in ("RUNNING", "STARTING", "STOPPING")
        entry = {
            "name": str(info["name"]),
            "group": str(info["group"]),
            "state": str(info["statename"]),
            "pid": int(info["pid"]),
            "revision": (process_revision(int(info["pid"])) or "") if info["pid"] else "",
            "uptime_s": max(0, int(now) - int(info["start"])) if info["statename"] == "RUNNING" else 0,
        }
        reason = (refused or {}).get(f"{info['group']}:{info['name']}", "")
        if reason and not running:
            entry["refused"] = reason
        found.append(entry)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> None:
    from protea_supervisor.hosts.declared import server_url
    from protea_supervisor.hosts.guard import read_refusals
    from protea_supervisor.hosts.heartbeats import Beat, publish
    from protea_supervisor.locks.stack_owner import lock_document, resolve_path
    from protea_supervisor.stackfile.host import REFUSALS

    stack, log = listener_stack(argv, "heartbeat")
    rpc = rpc_factory(os.environ)
    host = stack.host
    url = server_url(stack)
    holder = {"state": BeatState()}

    def read_lock() -> tuple[dict[str, Any], str]:
        lock = lock_document(resolve_path(None, dict(os.environ), stack.lock.file))
        return lock, f"{lock.get('owner', '')}:{lock.get('task_id', '')}"

    def send(action: SendBeat) -> None:
        now = time.time()
        record = record_from_doc(read_json(stack.paths.run / "deployed.json"))
        infos = rpc().supervisor.getAllProcessInfo()
        lock, key = read_lock()
        refused = read_refusals(stack.paths.run / REFUSALS)
        beat = Beat(host.name, host.role, record.revision, processes(infos, now, refused), lock=lock)
        try:
            publish(url, host.db_url_env, beat)
            error = ""
        except ProteaError as why:
            error = str(why)
        holder["state"], said = sent(holder["state"], error, time.monotonic(), key)
        execute_each(said, lambda a: log(a.message), log, "heartbeat")

    def perform(action: Any) -> None:
        if isinstance(action, Log):
            log(action.message)
        elif isinstance(action, SendBeat):
            send(action)

    log(
        f"heartbeat: {host.name} ({host.role}) to {host.db_url_env} at least every {INTERVAL:g} s (at each "
        "TICK_5), on process changes and on a change of the stack-owner lock"
    )

    def on_event(event: Event) -> None:
        lock = read_lock()[1] if event.name == "TICK_5" else holder["state"].lock or ""
        holder["state"], actions = handle(holder["state"], event, time.monotonic(), lock)
        execute_each(actions, perform, log, "heartbeat")

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
