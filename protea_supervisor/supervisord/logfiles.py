"""Logs of processes that no longer exist (a scale-down, a removed queue or program) are deleted once
they are older than `control.log_retention_days`; logs of the stack's own processes never are, and
neither is any file the stack did not write: only names recorded in `<run>/processes-seen.json` while
they were part of the stack are candidates.

`stale_logs` decides from names and ages alone; `prune_logs` reads the folder, deletes, and keeps the record.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from protea_supervisor.stackfile.files import write_atomic
from protea_supervisor.stackfile.stack import LISTENERS, Stack

DAY = 86400
SEEN_FILE = "processes-seen.json"
# <process>.log and supervisord's backups of it, <process>.log.1 ... <process>.log.N
_LOG = re.compile(r"(?P<process>.+)\.log(\.\d+)?")


def stack_processes(stack: Stack) -> set[str]:
    """Every process name whose log belongs to the stack as it is now (counts with overrides)."""
    names = {p.role for p in stack.programs} | set(LISTENERS) | {"deploy-tick"}
    for queue in stack.queues:
        names |= set(queue.process_names())
    return names


def stale_logs(
    ages: Mapping[str, float], current: Collection[str], seen: Collection[str], now: float, days: int
) -> list[str]:
    """The log files (name -> mtime) of processes once `seen` in the stack but not `current`, untouched
    for more than `days` days."""
    if days <= 0:
        return []
    stale = []
    for name, mtime in ages.items():
        match = _LOG.fullmatch(name)
        if not match or match["process"] in current or match["process"] not in seen:
            continue
        if now - mtime > days * DAY:
            stale.append(name)
    return sorted(stale)


def process_of(log_name: str) -> str:
    match = _LOG.fullmatch(log_name)
    return match["process"] if match else log_name


def prune_logs(stack: Stack, report: Callable[[str], None], now: float | None = None) -> list[str]:
    """Record the stack's processes as seen, then delete what `stale_logs` picks. Returns the deleted."""
    now = time.time() if now is None else now
    record = stack.paths.run / SEEN_FILE
    try:
        seen = set(json.loads(record.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        seen = set()
    current = stack_processes(stack)
    folder: Path = stack.paths.logs
    try:
        ages = {p.name: p.stat().st_mtime for p in folder.iterdir() if p.is_file()}
    except FileNotFoundError:
        ages = {}
    stale = stale_logs(ages, current, seen, now, stack.control.log_retention_days)
    for name in stale:
        (folder / name).unlink(missing_ok=True)
    gone = {process_of(n) for n in stale}
    left = {process_of(n) for n in ages if n not in stale}
    # A removed process stays recorded while a log of it remains, so that it is deleted in its time.
    keep = current | {name for name in seen - gone if name in left}
    if keep != seen:
        write_atomic(record, json.dumps(sorted(keep)) + "\n", mode=0o600)
    if gone:
        report(
            f"deleted the logs of {len(gone)} removed process(es), untouched for more than "
            f"{stack.control.log_retention_days} d (control.log_retention_days)"
        )
    return stale
