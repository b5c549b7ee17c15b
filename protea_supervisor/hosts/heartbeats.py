"""Every host's heartbeat in the server's Postgres: one row per host (its role, the revision it deployed,
each process's state, pid, revision and uptime), upserted by the host's heartbeat listener on every state
change and at least every 10 s. Ages are measured by Postgres's clock, so a host with a skewed clock (the
dual-boot node) is judged by the same clock as every other."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protea_supervisor.errors import BackupFailed
from protea_supervisor.hosts.declared import DeclarationUnavailable, database
from protea_supervisor.stackfile.host import HOST_NAME
from protea_supervisor.stackfile.stack import RESERVED

TABLE = "protea_supervisor.heartbeat"
INTERVAL = 10.0  # seconds between two heartbeats of a host when nothing changes
_CREATE = f"""
SELECT pg_advisory_xact_lock(hashtext('{TABLE}'));
CREATE SCHEMA IF NOT EXISTS protea_supervisor;
CREATE TABLE IF NOT EXISTS {TABLE} (
    host text PRIMARY KEY,
    role text NOT NULL,
    revision text NOT NULL,
    processes jsonb NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS lock jsonb NOT NULL DEFAULT '{{}}';"""


@dataclass(frozen=True)
class Beat:
    host: str
    role: str
    revision: str  # what the host's deploy record says it deployed ("" before its first)
    processes: tuple[Mapping[str, Any], ...]  # name, group, state, pid, revision, uptime_s
    age_s: float = 0.0  # seconds since it was sent, by Postgres's clock (when read back)
    lock: Mapping[str, Any] | None = None  # the host's stack-owner lock: owner, task_id, since (epoch s)


def _text(value: str) -> str:
    """An SQL string literal (standard_conforming_strings: only the quote needs doubling)."""
    return "'" + value.replace("'", "''") + "'"


def publish(url: str, variable: str, beat: Beat) -> None:
    if not HOST_NAME.fullmatch(beat.host):
        raise DeclarationUnavailable(f"refusing a heartbeat for host {beat.host!r}.")
    row = ", ".join(_text(v) for v in (beat.host, beat.role, beat.revision))
    processes, lock = _text(json.dumps(list(beat.processes))), _text(json.dumps(dict(beat.lock or {})))
    upsert = (
        f"INSERT INTO {TABLE} (host, role, revision, processes, lock) "
        f"VALUES ({row}, {processes}::jsonb, {lock}::jsonb) "
        "ON CONFLICT (host) DO UPDATE SET role = EXCLUDED.role, revision = EXCLUDED.revision, "
        "processes = EXCLUDED.processes, lock = EXCLUDED.lock, sent_at = now();"
    )
    # The table is made on first use; IF NOT EXISTS under the advisory lock costs next to nothing after.
    try:
        database(url, variable).sql(f"{_CREATE}\n{upsert}")
    except BackupFailed as why:
        raise DeclarationUnavailable(f"heartbeat: {why}") from None


def read_all(url: str, variable: str) -> list[Beat]:
    db = database(url, variable)
    try:
        if db.sql(f"SELECT to_regclass('{TABLE}') IS NOT NULL") != ["t"]:
            return []
        rows = db.sql(
            "SELECT coalesce(json_agg(json_build_object('host', host, 'role', role, 'revision', revision, "
            "'processes', processes, 'lock', lock, 'age_s', extract(epoch FROM now() - sent_at)) "
            "ORDER BY host), '[]') "
            f"FROM {TABLE}"
        )
    except BackupFailed as why:
        raise DeclarationUnavailable(f"reading the heartbeats: {why}") from None
    return [
        Beat(d["host"], d["role"], d["revision"], tuple(d["processes"]), float(d["age_s"]), d.get("lock"))
        for d in json.loads(rows[0] if rows else "[]")
    ]


def server_export(beats: Sequence[Beat]) -> str:
    """'' unless a server's last heartbeat says an export holds its stack-owner lock; then what holds it. A
    stale beat still counts: a server cut off mid-export has not said the export ended."""
    for beat in beats:
        lock = beat.lock or {}
        if beat.role == "server" and lock.get("owner") == "export":
            return f"export task {lock.get('task_id', '?')} holds {beat.host}'s stack-owner lock"
    return ""


def flags(
    beats: Sequence[Beat],
    declared: str | None,
    stale_after: float,
    singletons: Mapping[str, str] | None = None,
) -> list[str]:
    """What an operator must look at: stale hosts, refused starts, processes on a revision other than the
    declared one, a queue worker that runs no revision at all while one is declared (a node's workers right
    after its first `up`, before it followed the declaration), and a singleton queue (`singletons`: its
    program -> its queue) with more than one RUNNING worker in all."""
    found = _doubled(beats, singletons or {})
    for beat in beats:
        if beat.age_s > stale_after:
            found.append(f"{beat.host}: no heartbeat for {beat.age_s:.0f} s (stale after {stale_after:g} s)")
        found += [
            f"{beat.host}: {process.get('name')} refused: {process['refused']}"
            for process in beat.processes
            if process.get("refused")
        ]
        if not declared:
            continue
        for process in beat.processes:
            revision = str(process.get("revision") or "")
            if process.get("state") != "RUNNING":
                continue
            name = process.get("name")
            if revision and revision != declared:
                found.append(f"{beat.host}: {name} runs {revision[:10]}, not the declared {declared[:10]}")
            elif not revision and str(process.get("group", "")) not in RESERVED:
                found.append(f"{beat.host}: {name} runs no revision, not the declared {declared[:10]}")
    return found


def _doubled(beats: Sequence[Beat], singletons: Mapping[str, str]) -> list[str]:
    where: dict[str, list[str]] = {}
    for beat in beats:
        for process in beat.processes:
            group = str(process.get("group", ""))
            if group in singletons and process.get("state") == "RUNNING":
                where.setdefault(group, []).append(f"{process.get('name')} on {beat.host}")
    return [
        f"singleton queue {singletons[group]} has {len(places)} consumers: {', '.join(places)}"
        for group, places in sorted(where.items())
        if len(places) > 1
    ]


def view(
    beats: Sequence[Beat],
    declared: str | None,
    stale_after: float,
    singletons: Mapping[str, str] | None = None,
) -> list[str]:
    """`status --all-hosts` as lines: every host side by side, its processes under it, then the problems."""
    from protea_supervisor.supervisord.status import format_uptime

    out = [f"declared revision: {declared[:10] if declared else 'none yet'}"]
    if not beats:
        out.append("no host has sent a heartbeat (host.heartbeat = true on each host)")
    for beat in beats:
        stale = " STALE" if beat.age_s > stale_after else ""
        deployed = beat.revision[:10] if beat.revision else "(no deploy)"
        out.append(
            f"{beat.host:<16} {beat.role:<6} heartbeat {beat.age_s:.0f} s ago{stale}  deployed {deployed}"
        )
        for p in beat.processes:
            revision = str(p.get("revision") or "")[:10] or "-"
            uptime = f"up {format_uptime(int(p.get('uptime_s') or 0))}" if p.get("state") == "RUNNING" else ""
            pid = f"pid {p.get('pid')}" if p.get("pid") else ""
            out.append(
                f"  {p.get('name', '')!s:<34} {p.get('state', '')!s:<9} {pid:<11} {revision:<11} {uptime}"
            )
    problems = flags(beats, declared, stale_after, singletons)
    out += ["", *(f"PROBLEM: {problem}" for problem in problems)] if problems else ["", "no problem found"]
    return out


def running_elsewhere(beats: Sequence[Beat], own_host: str, stale_after: float) -> dict[str, int]:
    """RUNNING processes per program on every other host whose heartbeat is fresh (a stale host counts
    none: what it runs is unknown), for `queues`' consumer count across hosts."""
    counts: dict[str, int] = {}
    for beat in beats:
        if beat.host == own_host or beat.age_s > stale_after:
            continue
        for process in beat.processes:
            if process.get("state") == "RUNNING":
                group = str(process.get("group", ""))
                counts[group] = counts.get(group, 0) + 1
    return counts
