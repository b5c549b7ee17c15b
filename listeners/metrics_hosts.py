"""The metrics listener's view of every host (host.heartbeat): each host's heartbeat age and its processes,
read from the server's Postgres at scrape time (`heartbeats.read_all`; one psql call), with a host label.
`host_families` is pure: (beats, declared revision) -> metric families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protea_supervisor.hosts.heartbeats import Beat

from .families import Family, family


def host_families(beats: Sequence[Beat], declared: str | None, read_ok: bool) -> list[Family]:
    families = [
        family("protea_hosts_read_ok", [((), float(read_ok))]),
        family("protea_host_heartbeat_age_seconds", (((b.host, b.role), b.age_s) for b in beats)),
        family(
            "protea_host_process_up",
            (
                (
                    (b.host, str(p.get("name", "")), str(p.get("group", ""))),
                    float(p.get("state") == "RUNNING"),
                )
                for b in beats
                for p in b.processes
            ),
        ),
        family(
            "protea_host_processes_refused",
            (((b.host,), float(sum(1 for p in b.processes if p.get("refused")))) for b in beats),
        ),
    ]
    if declared:
        off = (((b.host,), float(sum(1 for p in b.processes if _off(p, declared)))) for b in beats)
        families.append(family("protea_host_processes_off_declared", off))
    return families


def _off(process: Any, declared: str) -> bool:
    revision = str(process.get("revision") or "")
    return process.get("state") == "RUNNING" and bool(revision) and revision != declared
