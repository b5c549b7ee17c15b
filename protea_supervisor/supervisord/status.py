"""Status rows: pure assembly from supervisord's process info, plus the /proc and log readers it needs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPAWNED = re.compile(r"spawned: '([^']+)' with pid \d+")
SUPERVISORD_STARTED = "supervisord started with pid"


@dataclass(frozen=True)
class StatusRow:
    name: str
    group: str
    state: str
    pid: int
    rss_mb: float | None
    uptime_s: int
    restarts: int
    description: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spawn_counts(log_text: str) -> dict[str, int]:
    """How many times each process was spawned since supervisord last started, from its own log."""
    start = log_text.rfind(SUPERVISORD_STARTED)
    counts: dict[str, int] = {}
    for match in SPAWNED.finditer(log_text, max(start, 0)):
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def rows(
    infos: Iterable[Mapping[str, Any]],
    rss_kb: Mapping[int, int],
    spawns: Mapping[str, int],
    refused: Mapping[str, str] | None = None,
) -> list[StatusRow]:
    """`refused`: `group:process` -> why the revision guard refused its last start; shown as its
    description while it is not running."""
    result = []
    for info in infos:
        pid = int(info["pid"])  # supervisord reports 0 when no process is alive
        running = info["statename"] in ("RUNNING", "STOPPING") and pid > 0
        reason = (refused or {}).get(f"{info['group']}:{info['name']}", "")
        description = f"refused: {reason}" if reason and not running else str(info.get("description", ""))
        rss = rss_kb.get(pid) if pid else None
        result.append(
            StatusRow(
                name=str(info["name"]),
                group=str(info["group"]),
                state=str(info["statename"]),
                pid=pid,
                rss_mb=round(rss / 1024, 1) if rss is not None else None,
                uptime_s=max(0, int(info["now"]) - int(info["start"])) if running else 0,
                restarts=max(0, spawns.get(str(info["name"]), 0) - 1),
                description=description,
            )
        )
    return result


def format_uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def table(status_rows: Iterable[StatusRow]) -> str:
    lines = [f"{'NAME':<35} {'STATE':<9} {'PID':>8} {'RSS MB':>8} {'UPTIME':>8} {'RESTARTS':>8}"]
    for row in status_rows:
        rss = f"{row.rss_mb:.1f}" if row.rss_mb is not None else "-"
        pid = str(row.pid) if row.pid else "-"
        uptime = format_uptime(row.uptime_s) if row.pid else "-"
        line = f"{row.name:<35} {row.state:<9} {pid:>8} {rss:>8} {uptime:>8} {row.restarts:>8}"
        # A start a check refused says why on its own line's end, as `--json` and `--all-hosts` do.
        lines.append(f"{line}  {row.description}" if row.description.startswith("refused: ") else line)
    return "\n".join(lines)


# --- edge readers ---------------------------------------------------------------------------------------


def group_rss_kb(pids: Iterable[int], proc: Path = Path("/proc")) -> dict[int, int]:
    """RSS of each pid's whole process group (supervisord starts every child as a group leader), so a
    wrapper such as npm counts the node server it forked."""
    wanted = set(pids)
    totals: dict[int, int] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = (proc / entry.name / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp not in wanted:
                continue
            status = (proc / entry.name / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        match = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
        if match:
            totals[pgrp] = totals.get(pgrp, 0) + int(match.group(1))
    return totals


def read_tail(path: Path, max_bytes: int = 4 * 1024 * 1024) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def process_revision(pid: int) -> str | None:
    """PROTEA_REVISION in a running process's environment (None when unreadable or unset)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(b"PROTEA_REVISION="):
            return item.split(b"=", 1)[1].decode("utf-8", "replace")
    return None


def older_revision(revisions: Mapping[str, str | None], deployed: str) -> list[str]:
    """Processes started with a revision other than the deployed one (those without one are not PROTEA's
    code, or predate the first tick)."""
    return sorted(
        name for name, revision in revisions.items() if revision and deployed and revision != deployed
    )
