"""Every metric the metrics listener serves: its name, kind, help and labels, in one catalogue that the
listeners build their families from and the reference (`docs/reference/metrics.md`) is generated from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    kind: str  # gauge or counter
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    samples: tuple[tuple[tuple[str, ...], float], ...]


CATALOGUE: dict[str, Spec] = {
    "protea_process_state": Spec(
        "gauge",
        "1 for the state each process is in",
        ("process", "group", "state"),
    ),
    "protea_process_up": Spec(
        "gauge",
        "1 when the process is RUNNING",
        ("process", "group"),
    ),
    "protea_process_restarts": Spec(
        "counter",
        "restarts after an unexpected exit or a failed start, since the metrics listener started "
        "(not a deploy's, an operator's or a one-shot's start)",
        ("process", "group"),
    ),
    "protea_process_uptime_seconds": Spec(
        "gauge",
        "seconds since the process reached RUNNING",
        ("process", "group"),
    ),
    "protea_process_rss_bytes": Spec(
        "gauge",
        "resident memory of the process",
        ("process", "group"),
    ),
    "protea_metrics_events": Spec(
        "counter",
        "events the metrics listener processed",
        (),
    ),
    "protea_stack_owner": Spec(
        "gauge",
        "1 for the stack-owner lock's owner",
        ("owner", "task_id"),
    ),
    "protea_processes_on_other_revision": Spec(
        "gauge",
        "RUNNING processes started with a revision other than the deployed one",
        (),
    ),
    "protea_gate_phase": Spec(
        "gauge",
        "the gate's phase and step",
        ("phase", "step"),
    ),
    "protea_gate_failed": Spec(
        "gauge",
        "1 when the last gate run failed",
        (),
    ),
    "protea_tunnel_probe_ok": Spec(
        "gauge",
        "1 when the last tunnel probe passed",
        (),
    ),
    "protea_tunnel_restarts_last_hour": Spec(
        "gauge",
        "tunnel restarts by the watchdog",
        (),
    ),
    "protea_tunnel_restart_budget_spent": Spec(
        "gauge",
        "1 when the watchdog spent its restart budget and stopped restarting the tunnel",
        (),
    ),
    "protea_tunnel_consecutive_failures": Spec(
        "gauge",
        "failed tunnel probes in a row",
        (),
    ),
    "protea_deploy_info": Spec(
        "gauge",
        "the deployed revision",
        ("revision", "previous"),
    ),
    "protea_deploy_paused_until_timestamp_seconds": Spec(
        "gauge",
        "until when the deploy timer is paused after an escalation (0: not paused)",
        (),
    ),
    "protea_stack_owner_since_timestamp_seconds": Spec(
        "gauge",
        "when the stack-owner lock's holder took it",
        ("owner",),
    ),
    "protea_queue_checked_timestamp_seconds": Spec(
        "gauge",
        "when `protea-supervisor queues` last judged the queues",
        (),
    ),
    "protea_queue_status": Spec(
        "gauge",
        "1 for each queue's verdict at the last check (ok, idle, stalled, starved, mismatch)",
        ("queue", "status"),
    ),
    "protea_queue_messages": Spec(
        "gauge",
        "messages in each queue at the last check",
        ("queue",),
    ),
    "protea_deploy_last_tick_exit_code": Spec(
        "gauge",
        "exit code of the last deploy tick",
        (),
    ),
    "protea_deploy_last_tick_timestamp_seconds": Spec(
        "gauge",
        "when the last deploy tick ran",
        (),
    ),
    "protea_hosts_read_ok": Spec(
        "gauge",
        "1 when the other hosts' heartbeats could be read from Postgres at this scrape",
        (),
    ),
    "protea_host_heartbeat_age_seconds": Spec(
        "gauge",
        "seconds since each host's last heartbeat, by Postgres's clock",
        ("host", "role"),
    ),
    "protea_host_process_up": Spec(
        "gauge",
        "1 when the process is RUNNING on that host, from its last heartbeat",
        ("host", "process", "group"),
    ),
    "protea_host_processes_refused": Spec(
        "gauge",
        "processes whose last start a check refused (revision guard, singleton lock), per host",
        ("host",),
    ),
    "protea_host_processes_off_declared": Spec(
        "gauge",
        "RUNNING processes on a revision other than the declared one, per host",
        ("host",),
    ),
    "protea_autoscale_processes": Spec(
        "gauge",
        "this host's processes for an autoscaled queue, at the autoscaler's last look",
        ("queue",),
    ),
    "protea_autoscale_min": Spec("gauge", "the autoscaled queue's min on this host", ("queue",)),
    "protea_autoscale_max": Spec("gauge", "the autoscaled queue's max on this host", ("queue",)),
    "protea_autoscale_backlog": Spec(
        "gauge",
        "ready plus unacknowledged messages at the autoscaler's last look (none while the broker is silent)",
        ("queue",),
    ),
    "protea_autoscale_wanted": Spec(
        "gauge",
        "the count the backlog asks of this host, within min and max",
        ("queue",),
    ),
    "protea_autoscale_pinned": Spec(
        "gauge",
        "1 while the operator pins the count (`scale Q N`, until `scale Q --auto`)",
        ("queue",),
    ),
    "protea_autoscale_last_change_backlog": Spec(
        "gauge",
        "the backlog the autoscaler read when it last changed the queue's count",
        ("queue",),
    ),
    "protea_autoscale_last_change_timestamp_seconds": Spec(
        "gauge",
        "when the autoscaler last changed the queue's count",
        ("queue",),
    ),
    "protea_autoscale_changes": Spec(
        "counter",
        "changes of the count the autoscaler made, by direction (up, down)",
        ("queue", "direction"),
    ),
}


def family(name: str, values: Iterable[tuple[tuple[str, ...], float]]) -> Family:
    spec = CATALOGUE[name]
    return Family(name, spec.kind, spec.help, spec.labels, tuple(values))
