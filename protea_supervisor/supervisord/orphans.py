"""Orphans: programs of this stack still running after their supervisord died (OOM killer, kill -9).

supervisord puts `SUPERVISOR_SERVER_URL=unix://<run>/supervisor.sock` in every child's environment, so a
process carries its stack's mark for its whole life, and children it forks (node under npm) inherit it.
A marked process that does not descend from the live supervisord is an orphan. Each program was started
as a process-group leader, so an orphan is stopped the way supervisord would have stopped it: its stop
signal to the whole group, its grace, then SIGKILL to the group.

`judge` is pure (records in, orphans out); `scan` reads /proc and `stop` sends the signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protea_supervisor.progress import Ticker, names

MARK = "SUPERVISOR_SERVER_URL"


@dataclass(frozen=True)
class ProcRecord:
    pid: int
    ppid: int
    pgid: int
    environ: Mapping[str, str]


@dataclass(frozen=True)
class Orphan:
    """One orphaned process group: its leader, the program it was, and what stops it."""

    pgid: int
    program: str  # supervisord's process name (worker-jobs-2), or "" when unknown
    group: str
    pids: tuple[int, ...]


def stack_mark(socket_path: Path) -> str:
    return f"unix://{socket_path}"


def judge(records: Iterable[ProcRecord], mark: str, supervisord_pid: int | None, me: int) -> list[Orphan]:
    """Marked processes outside the live supervisord's tree (all of them when it is down), by group."""
    table = {r.pid: r for r in records}

    def ancestors(pid: int) -> set[int]:
        seen: set[int] = set()
        while pid in table and pid not in seen and pid > 1:
            seen.add(pid)
            pid = table[pid].ppid
        return seen | {pid}

    mine = ancestors(me)
    groups: dict[int, list[ProcRecord]] = {}
    for record in table.values():
        if record.environ.get(MARK) != mark or record.pid in mine:
            continue
        if supervisord_pid is not None and supervisord_pid in ancestors(record.pid):
            continue
        groups.setdefault(record.pgid, []).append(record)
    orphans = []
    for pgid, members in sorted(groups.items()):
        leader = table.get(pgid) or min(members, key=lambda r: r.pid)
        orphans.append(
            Orphan(
                pgid=pgid,
                program=leader.environ.get("SUPERVISOR_PROCESS_NAME", ""),
                group=leader.environ.get("SUPERVISOR_GROUP_NAME", ""),
                pids=tuple(sorted(r.pid for r in members)),
            )
        )
    return orphans


def describe(orphans: Iterable[Orphan]) -> str:
    return names([f"{o.program or '?'} (pid {o.pgid})" for o in orphans])


# --- the edge -------------------------------------------------------------------------------------------


def scan(proc: Path = Path("/proc")) -> list[ProcRecord]:
    records = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = (proc / entry.name / "stat").read_text()
            environ = (proc / entry.name / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        env = {}
        for item in environ.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key in (
                b"SUPERVISOR_SERVER_URL",
                b"SUPERVISOR_PROCESS_NAME",
                b"SUPERVISOR_GROUP_NAME",
            ):
                env[key.decode()] = value.decode("utf-8", "replace")
        records.append(ProcRecord(int(entry.name), int(fields[1]), int(fields[2]), env))
    return records


def find(socket_path: Path, supervisord_pid: int | None) -> list[Orphan]:
    return judge(scan(), stack_mark(socket_path), supervisord_pid, os.getpid())


def stop(
    orphans: list[Orphan],
    rules: Callable[[Orphan], tuple[str, float]],
    report: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> list[Orphan]:
    """Stop every orphaned group at once with its stop signal; SIGKILL the groups still alive after their
    grace. `rules` gives (signal name, grace) for an orphan. Returns the groups that had to be killed."""
    began = clock()
    deadline = {}
    for orphan in orphans:
        signame, grace = rules(orphan)
        _signal_group(orphan.pgid, getattr(signal, f"SIG{signame}"))
        deadline[orphan.pgid] = began + grace
    killed = []
    ticker = Ticker(report)
    waiting = list(orphans)
    while waiting:
        alive = {record.pgid for record in scan()}  # zombies are left out: an exited group is gone
        waiting = [o for o in waiting if o.pgid in alive]
        for orphan in [o for o in waiting if clock() >= deadline[o.pgid] and o not in killed]:
            _signal_group(orphan.pgid, signal.SIGKILL)
            killed.append(orphan)
        if waiting:
            ticker.say(f"  waiting for {len(waiting)} orphan(s) to finish (each within its grace): "
                       f"{describe(waiting)}")  # fmt: skip
            time.sleep(0.2)
    return killed


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
