"""The autoscaler: workers follow the backlog. At every TICK_5, each autoscaled queue's backlog is read from
RabbitMQ's management API (ready plus unacknowledged messages), with the processes RUNNING for it on other
hosts whose heartbeat is fresh, and `operations/autoscale.decide` gives its count. A change goes through
`protea-supervisor scale Q N --autoscaler WHY`, the path `scale` takes: the operation lock, the count
recorded in overrides.json and rendered, the group resized in place (running workers are never restarted;
scale-down stops the newest, each finishing its job). Every change is one line in this log and in
`<run>/autoscale.json`, which `status` and the metrics read, with the reading that caused it.

`handle` is pure: (settings, state, readings, now, wall) -> (state, actions). The edge reads, scales (a
child process per change, never waited for in the loop) and writes the state file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protea_supervisor.errors import ProteaError
from protea_supervisor.operations.autoscale import QueueState, Reading, decide, describe
from protea_supervisor.stackfile.files import read_json, write_json
from protea_supervisor.stackfile.stack import Autoscale

from .actions import Log
from .edge import execute_each, listener_stack
from .protocol import Event, run

STATE_FILE = "autoscale.json"


@dataclass(frozen=True)
class Scale:
    queue: str
    count: int
    why: str


@dataclass(frozen=True)
class Publish:
    doc: Mapping[str, Any]


@dataclass(frozen=True)
class AutoState:
    queues: Mapping[str, QueueState] = field(default_factory=dict)
    shown: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per queue, for the state file
    changes: Mapping[str, int] = field(default_factory=dict)  # "<queue> up" / "<queue> down" -> changes


def handle(
    settings: Mapping[str, Autoscale],
    state: AutoState,
    readings: Mapping[str, Reading],
    now: float,
    wall: float,
) -> tuple[AutoState, list[Any]]:
    """One look at every autoscaled queue: the decisions, a line and a Scale for each change, the state."""
    actions: list[Any] = []
    queues, shown, changes = dict(state.queues), dict(state.shown), dict(state.changes)
    for queue, auto in settings.items():
        reading = readings[queue]
        before = shown.get(queue, {})
        queues[queue], decision = decide(auto, queues.get(queue, QueueState()), reading, now)
        status: dict[str, Any] = {
            "count": reading.here,
            "min": auto.min,
            "max": auto.max,
            "target_backlog": auto.target_backlog,
            "backlog": reading.backlog,
            "elsewhere": reading.elsewhere,
            "wanted": decision.wanted,
            "pinned": reading.pinned,
            "why": decision.why,
            "checked_at": wall,
            "last_change": before.get("last_change"),
        }
        if decision.count is not None and decision.count != reading.here:
            direction = "up" if decision.count > reading.here else "down"
            changes[f"{queue} {direction}"] = changes.get(f"{queue} {direction}", 0) + 1
            status["last_change"] = {
                "at": wall,
                "from": reading.here,
                "to": decision.count,
                "backlog": reading.backlog,
                "elsewhere": reading.elsewhere,
                "why": decision.why,
            }
            actions += [
                Log(f"autoscale {queue}: {reading.here} -> {decision.count}: {decision.why}"),
                Scale(queue, decision.count, decision.why),
            ]
        elif (reading.backlog is None) != (before.get("backlog", 0) is None):
            actions.append(Log(f"autoscale {queue}: {decision.why}"))
        shown[queue] = status
    doc = {"queues": shown, "changes": changes, "updated_at": wall}
    actions.append(Publish(doc))
    return AutoState(queues, shown, changes), actions


def state_from_file(doc: Mapping[str, Any] | None) -> AutoState:
    """The counters and last changes survive a restart of the listener; the windows start afresh."""
    if not doc:
        return AutoState()
    shown = doc.get("queues") if isinstance(doc.get("queues"), dict) else {}
    changes = doc.get("changes") if isinstance(doc.get("changes"), dict) else {}
    return AutoState(shown=dict(shown or {}), changes={k: int(v) for k, v in (changes or {}).items()})


# --- the edge ------------------------------------------------------------------------------------------


class Edge:
    """What the handler needs read, and what it asks done: the broker, the heartbeats, the lock, `scale`."""

    def __init__(self, stack: Any, log: Any) -> None:
        self.stack = stack
        self.log = log
        self.children: dict[str, subprocess.Popen[str]] = {}
        self.notes: set[str] = set()

    def settings(self) -> dict[str, Autoscale]:
        return {q.name: q.autoscale for q in self.stack.queues if q.autoscale is not None}

    def _note(self, key: str, line: str | None, over: str = "answering again") -> None:
        """A line once when a trouble starts (and once when it ends), not at every tick."""
        if line and key not in self.notes:
            self.notes.add(key)
            self.log(line)
        elif line is None and key in self.notes:
            self.notes.discard(key)
            self.log(f"autoscaler: {key}: {over}")

    def backlogs(self) -> dict[str, int] | None:
        from protea_supervisor.operations.queues import fetch_queues, rabbit_credentials

        user, password = rabbit_credentials(dict(os.environ))
        try:
            doc = fetch_queues(self.stack.monitor.rabbit_api, user, password, timeout=3.0)
        except ProteaError as why:
            self._note("broker", f"autoscaler: counts frozen: {why}")
            return None
        self._note("broker", None)
        found = {}
        for entry in doc if isinstance(doc, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("messages"), int):
                found[str(entry.get("name"))] = int(entry["messages"])
        return found

    def elsewhere_and_export(self) -> tuple[dict[str, int], str]:
        """Other fresh hosts' RUNNING workers per program, and a server's export as its heartbeat says."""
        from protea_supervisor.hosts.declared import DeclarationUnavailable, server_url
        from protea_supervisor.hosts.heartbeats import read_all, running_elsewhere, server_export

        host = self.stack.host
        if not host.heartbeat:
            return {}, ""
        try:
            beats = read_all(server_url(self.stack), host.db_url_env)
        except DeclarationUnavailable as why:
            self._note("heartbeats", f"autoscaler: other hosts' workers not counted: {why}")
            return {}, ""
        self._note("heartbeats", None)
        export = server_export(beats) if host.node else ""
        return running_elsewhere(beats, host.name, host.stale_after), export

    def export(self) -> str:
        from protea_supervisor.errors import LockCorrupt
        from protea_supervisor.locks.stack_owner import export_holder, stack_lock

        try:
            holder = export_holder(stack_lock(self.stack, dict(os.environ)))
        except LockCorrupt as why:
            return f"the stack-owner lock cannot be read ({why})"
        except ProteaError:
            return "the stack-owner lock could not be read in time"
        return f"export task {holder.task_id} holds the stack-owner lock" if holder else ""

    def busy(self, queue: str) -> bool:
        child = self.children.get(queue)
        if child is None or child.poll() is None:
            return child is not None
        out = (child.stdout.read() if child.stdout else "").strip().splitlines()
        del self.children[queue]
        # A refused change (the operation lock held by a deploy: exit 8) is asked again at the next look:
        # said once, and once when a change goes through again.
        said = f"autoscale {queue}: scale exited {child.returncode}: {out[-1] if out else ''}; asked again"
        self._note(f"scale {queue}", said if child.returncode else None, over="changes go through again")
        return False

    def readings(self, settings: Mapping[str, Autoscale]) -> dict[str, Reading]:
        from protea_supervisor.stackfile.overrides import load, with_overrides

        recorded = load(self.stack.paths.run)  # one read for the counts, the numbering and the pins
        running = with_overrides(self.stack, recorded)
        pinned = recorded.pinned
        backlogs = self.backlogs()
        elsewhere, server_export = self.elsewhere_and_export()
        export = self.export() or server_export
        out = {}
        for queue in running.queues:
            if queue.name not in settings:
                continue
            out[queue.name] = Reading(
                backlog=None if backlogs is None else backlogs.get(queue.name, 0),
                here=queue.processes,
                elsewhere=elsewhere.get(queue.program, 0),
                pinned=queue.program in pinned,
                export=export,
                busy=self.busy(queue.name),
            )
        return out

    def scale(self, action: Scale) -> None:
        stack_args = ["--stack", self.stack.choice] if self.stack.choice else []
        argv = [sys.executable, "-P", "-m", "protea_supervisor", *stack_args, "--lock-wait", "0", "scale",
                action.queue, str(action.count), "--autoscaler", action.why, "--no-wait"]  # fmt: skip
        self.children[action.queue] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def perform(self, action: Any) -> None:
        if isinstance(action, Log):
            self.log(action.message)
        elif isinstance(action, Scale):
            self.scale(action)
        elif isinstance(action, Publish):
            write_json(self.stack.paths.run / STATE_FILE, action.doc)


def main(argv: Sequence[str] | None = None) -> None:
    stack, log = listener_stack(argv, "autoscaler")
    edge = Edge(stack, log)
    settings = edge.settings()
    holder = {"state": state_from_file(read_json(stack.paths.run / STATE_FILE))}
    for queue, auto in settings.items():
        log(f"autoscaler: {queue}: {describe(auto)}")

    def on_event(event: Event) -> None:
        if event.name != "TICK_5" or not settings:
            return
        readings = edge.readings(settings)
        holder["state"], actions = handle(settings, holder["state"], readings, time.monotonic(), time.time())
        execute_each(actions, edge.perform, log, "autoscaler")

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
