"""The metrics listener's view of every host (host.heartbeat): each host's heartbeat age and its processes,
read from the server's Postgres at scrape time (`heartbeats.read_all`; one psql call), with a host label.
`host_families` is pure: (beats, declared revision) -> metric families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protea_supervisor.heartbeats import Beat


def host_families(beats: Sequence[Beat], declared: str | None, read_ok: bool) -> list[Any]:
    from .metrics import _family

    families = [
        _family(
            "protea_hosts_read_ok",
            "1 when the other hosts' heartbeats could be read from Postgres at this scrape",
            (),
            [((), float(read_ok))],
        ),
        _family(
            "protea_host_heartbeat_age_seconds",
            "seconds since each host's last heartbeat, by Postgres's clock",
            ("host", "role"),
            (((b.host, b.role), b.age_s) for b in beats),
        ),
        _family(
            "protea_host_process_up",
            "1 when the process is RUNNING on that host, from its last heartbeat",
            ("host", "process", "group"),
            (
                (
                    (b.host, str(p.get("name", "")), str(p.get("group", ""))),
                    float(p.get("state") == "RUNNING"),
                )
                for b in beats
                for p in b.processes
            ),
        ),
        _family(
            "protea_host_processes_refused",
            "processes whose last start a check refused (revision guard, singleton lock), per host",
            ("host",),
            (((b.host,), float(sum(1 for p in b.processes if p.get("refused")))) for b in beats),
        ),
    ]
    if declared:
        off = (((b.host,), float(sum(1 for p in b.processes if _off(p, declared)))) for b in beats)
        families.append(
            _family(
                "protea_host_processes_off_declared",
                "RUNNING processes on a revision other than the declared one, per host",
                ("host",),
                off,
            )
        )
    return families


def _off(process: Any, declared: str) -> bool:
    revision = str(process.get("revision") or "")
    return process.get("state") == "RUNNING" and bool(revision) and revision != declared
