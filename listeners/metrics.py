"""Prometheus metrics for the stack, served by an event listener on a loopback port.

Process states, restarts and uptime come from PROCESS_STATE events (one getAllProcessInfo when the listener
starts), so a scrape costs supervisord nothing. RSS is read from /proc at scrape time. The gate, the tunnel
watchdog, the deploy record and the stack-owner lock are read from their files in the run dir. No env-file
value is ever a label or a value: the labels are process names, states, revisions and lock owners.

`apply_event` is pure: (state, event, now) -> state. `samples` is pure: (state, files, now, rss) -> the
metric families as plain data; the collector only turns them into prometheus_client objects.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protea_supervisor.humane import recent_restarts
from protea_supervisor.locks.stack_owner import lock_document, resolve_path
from protea_supervisor.stackfile.files import read_json
from protea_supervisor.stackfile.stack import ONE_SHOTS

from .edge import listener_stack, rpc_factory
from .families import Family, family
from .protocol import Event, run

STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


@dataclass(frozen=True)
class Proc:
    group: str
    state: str
    pid: int = 0
    started_at: float = 0.0
    failures: int = 0  # unexpected exits and failed starts (`failed`)


@dataclass(frozen=True)
class MetricsState:
    processes: Mapping[str, Proc] = field(default_factory=dict)
    events: int = 0


def from_process_info(infos: Iterable[Mapping[str, Any]]) -> MetricsState:
    processes = {
        f"{i['group']}:{i['name']}": Proc(
            i["group"], i["statename"], int(i["pid"]), float(i["start"]) if i["pid"] else 0.0, 0
        )
        for i in infos
    }
    return MetricsState(processes=processes)


def failed(event: Event, group: str) -> bool:
    """A restart that alerts should hear of: a long-running process that exited unexpectedly (supervisord's
    `expected:0`: a crash, a wrong exit code) or a start that failed before its startsecs (BACKOFF). A stop by
    an operator, a deploy or a scale-down (STOPPED), a deploy's start, and a one-shot's run are not."""
    if group in ONE_SHOTS:
        return False
    return event.state == "BACKOFF" or (event.state == "EXITED" and event.fields.get("expected") == "0")


def apply_event(state: MetricsState, event: Event, now: float) -> MetricsState:
    if not event.name.startswith("PROCESS_STATE_"):
        return state
    key = event.process
    old = state.processes.get(key, Proc(event.fields.get("groupname", ""), "UNKNOWN"))
    new = replace(old, state=event.state)
    if failed(event, old.group or event.fields.get("groupname", "")):
        new = replace(new, failures=old.failures + 1)
    if event.state == "STARTING":
        new = replace(new, pid=0)
    elif event.state == "RUNNING":
        new = replace(new, pid=int(event.fields.get("pid", "0") or 0), started_at=now)
        # A process that took another's name (the API switch's successor) is gone under its old name.
        gone = [k for k, p in state.processes.items() if k != key and new.pid and p.pid == new.pid]
        if gone:
            kept = {k: p for k, p in state.processes.items() if k not in gone}
            return replace(state, processes={**kept, key: new}, events=state.events + 1)
    elif event.state in ("EXITED", "STOPPED", "FATAL", "BACKOFF"):
        new = replace(new, pid=0)
    return replace(state, processes={**state.processes, key: new}, events=state.events + 1)


def samples(
    state: MetricsState,
    files: Mapping[str, Mapping[str, Any]],
    now: float,
    rss: Callable[[int], float | None],
    revision: Callable[[int], str | None] = lambda pid: None,
) -> list[Family]:
    procs = sorted(state.processes.items())
    running = [(k, p) for k, p in procs if p.state == "RUNNING"]
    families = [
        family(
            "protea_process_state", (((k, p.group, s), float(p.state == s)) for k, p in procs for s in STATES)
        ),
        family("protea_process_up", (((k, p.group), float(p.state == "RUNNING")) for k, p in procs)),
        family("protea_process_restarts", (((k, p.group), float(p.failures)) for k, p in procs)),
        family(
            "protea_process_uptime_seconds",
            (((k, p.group), now - p.started_at) for k, p in running if p.started_at),
        ),
    ]
    memory = [((k, p.group), rss(p.pid)) for k, p in running if p.pid]
    families.append(
        family("protea_process_rss_bytes", ((labels, value) for labels, value in memory if value is not None))
    )
    families += _file_families(files, now)
    deployed = str(files.get("deploy", {}).get("revision", ""))
    if deployed:
        revisions = {k: revision(p.pid) for k, p in running if p.pid}
        other = [k for k, r in revisions.items() if r and r != deployed]
        families.append(family("protea_processes_on_other_revision", [((), float(len(other)))]))
    families.append(family("protea_metrics_events", [((), float(state.events))]))
    return families


def _file_families(files: Mapping[str, Mapping[str, Any]], now: float) -> list[Family]:
    out = []
    gate = files.get("gate", {})
    if gate:
        phase, step = str(gate.get("phase", "")), str(gate.get("step", ""))
        out.append(family("protea_gate_phase", [((phase, step), 1.0)]))
        out.append(family("protea_gate_failed", [((), float(phase == "failed"))]))
    watch = files.get("tunnel", {})
    if watch:
        recent = recent_restarts(watch, now)
        out.append(family("protea_tunnel_probe_ok", [((), float(bool(watch.get("last_ok"))))]))
        out.append(family("protea_tunnel_restarts_last_hour", [((), float(len(recent)))]))
        out.append(family("protea_tunnel_restart_budget_spent", [((), float(bool(watch.get("capped"))))]))
        out.append(
            family("protea_tunnel_consecutive_failures", [((), float(watch.get("consecutive_failures", 0)))])
        )
    deployed = files.get("deploy", {})
    if deployed:
        revision, previous = str(deployed.get("revision", "")), str(deployed.get("previous", ""))
        out.append(family("protea_deploy_info", [((revision, previous), 1.0)]))
        if deployed.get("last_exit") is not None:
            out.append(family("protea_deploy_last_tick_exit_code", [((), float(deployed["last_exit"]))]))
        if deployed.get("last_tick_epoch"):
            out.append(
                family(
                    "protea_deploy_last_tick_timestamp_seconds", [((), float(deployed["last_tick_epoch"]))]
                )
            )
    timer = files.get("timer", {})
    if timer:
        out.append(
            family(
                "protea_deploy_paused_until_timestamp_seconds",
                [((), float(timer.get("paused_until") or 0.0))],
            )
        )
    lock = files.get("lock", {})
    owner, task = str(lock.get("owner", "free") or "free"), str(lock.get("task_id", ""))
    out.append(family("protea_stack_owner", [((owner, task), 1.0)]))
    if lock.get("since"):
        out.append(family("protea_stack_owner_since_timestamp_seconds", [((owner,), float(lock["since"]))]))
    queues = files.get("queues", {})
    if queues.get("checked_at"):
        verdicts = [v for v in queues.get("queues", []) if isinstance(v, dict)]
        out.append(family("protea_queue_checked_timestamp_seconds", [((), float(queues["checked_at"]))]))
        out.append(
            family(
                "protea_queue_status", [((str(v.get("name")), str(v.get("status"))), 1.0) for v in verdicts]
            )
        )
        out.append(
            family(
                "protea_queue_messages",
                [((str(v.get("name")),), float(v.get("messages") or 0)) for v in verdicts],
            )
        )
    return out + _autoscale_families(files.get("autoscale", {}))


def _autoscale_families(doc: Mapping[str, Any]) -> list[Family]:
    """From <run>/autoscale.json, which the autoscaler writes at every look."""
    seen = doc.get("queues") if isinstance(doc.get("queues"), dict) else {}
    if not seen:
        return []
    queues = sorted((str(q), v) for q, v in seen.items() if isinstance(v, dict))

    def each(key: str) -> list[tuple[tuple[str, ...], float]]:
        return [((q,), float(v[key])) for q, v in queues if isinstance(v.get(key), (int, float))]

    def last(key: str) -> list[tuple[tuple[str, ...], float]]:
        """From each queue's last change: the reading that caused it, and when."""
        changed = [(q, v["last_change"]) for q, v in queues if isinstance(v.get("last_change"), dict)]
        return [((q,), float(c[key])) for q, c in changed if isinstance(c.get(key), (int, float))]

    changes = doc.get("changes") if isinstance(doc.get("changes"), dict) else {}
    counted = [(tuple(str(k).rsplit(" ", 1)), float(n)) for k, n in (changes or {}).items() if " " in str(k)]
    return [
        family("protea_autoscale_processes", each("count")),
        family("protea_autoscale_min", each("min")),
        family("protea_autoscale_max", each("max")),
        family("protea_autoscale_backlog", each("backlog")),
        family("protea_autoscale_wanted", each("wanted")),
        family("protea_autoscale_pinned", [((q,), float(bool(v.get("pinned")))) for q, v in queues]),
        family("protea_autoscale_changes", counted),
        family("protea_autoscale_last_change_backlog", last("backlog")),
        family("protea_autoscale_last_change_timestamp_seconds", last("at")),
    ]


# --- the edge -------------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return float(int(fields[1]) * os.sysconf("SC_PAGE_SIZE"))


def read_files(run_dir: Path, lock_file: Path) -> dict[str, dict[str, Any]]:
    from datetime import datetime

    files = {
        "gate": read_json(run_dir / "gate.json") or {},
        "tunnel": read_json(run_dir / "tunnel-watch.json") or {},
        "deploy": read_json(run_dir / "deployed.json") or {},
        "lock": lock_document(lock_file),
        "timer": read_json(run_dir / "deploy-timer.json") or {},
        "queues": read_json(run_dir / "queues.json") or {},
        "autoscale": read_json(run_dir / "autoscale.json") or {},
    }
    tick = files["deploy"].get("last_tick_at")
    if tick:
        with contextlib.suppress(ValueError):
            files["deploy"]["last_tick_epoch"] = datetime.fromisoformat(str(tick)).timestamp()
    return files


class Collector:
    """prometheus_client's custom-collector duck type over the listener's state."""

    def __init__(
        self,
        state: Callable[[], MetricsState],
        run_dir: Path,
        lock_file: Path,
        hosts: Callable[[], list[Family]] | None = None,
    ) -> None:
        self.state = state
        self.run_dir = run_dir
        self.lock_file = lock_file
        self.hosts = hosts  # every host's families, when the stack has heartbeats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from protea_supervisor.supervisord.status import process_revision

        files = read_files(self.run_dir, self.lock_file)
        families = samples(self.state(), files, time.time(), rss_bytes, process_revision)
        families += self.hosts() if self.hosts else []
        for each in families:
            kind = CounterMetricFamily if each.kind == "counter" else GaugeMetricFamily
            metric = kind(each.name, each.help, labels=list(each.labels))
            for labels, value in each.samples:
                metric.add_metric(list(labels), value)
            yield metric


def hosts_reader(stack: Any) -> Callable[[], list[Family]]:
    """Reads every host's heartbeat and the declaration at each scrape; a failed read is a 0, not an error."""
    from protea_supervisor.hosts.declared import DeclarationUnavailable, current, server_url
    from protea_supervisor.hosts.heartbeats import read_all

    from .metrics_hosts import host_families

    variable = stack.host.db_url_env

    def read() -> list[Family]:
        url = server_url(stack)
        try:
            declaration = current(url, variable)
            return host_families(read_all(url, variable), declaration.revision if declaration else None, True)
        except DeclarationUnavailable:
            return host_families([], None, False)

    return read


def serve(collector: Collector, host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)


def main(argv: Sequence[str] | None = None) -> None:
    stack, log = listener_stack(argv, "metrics")
    rpc = rpc_factory(os.environ)
    lock = threading.Lock()
    holder = {"state": from_process_info(rpc().supervisor.getAllProcessInfo())}

    def current() -> MetricsState:
        with lock:
            return holder["state"]

    lock_file = resolve_path(None, dict(os.environ), stack.lock.file)
    hosts = hosts_reader(stack) if stack.host.heartbeat else None
    serve(Collector(current, stack.paths.run, lock_file, hosts), stack.metrics.host, stack.metrics.port)
    log(f"metrics: serving http://{stack.metrics.host}:{stack.metrics.port}/metrics")

    def on_event(event: Event) -> None:
        with lock:
            holder["state"] = apply_event(holder["state"], event, time.time())

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
