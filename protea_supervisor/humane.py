"""Output a person reads: ages ("41 s ago"), ISO times for machines, and the gate's and the tunnel
watchdog's state files as lines (long name lists are `progress.names`). Pure: every function takes `now`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def ago(then: float, now: float) -> str:
    """41 s ago, 12 min ago, 3 h ago, 5 d ago; "in 8 s" for a time ahead."""
    seconds = now - then
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 100:
        amount = f"{seconds:.0f} s"
    elif seconds < 100 * 60:
        amount = f"{seconds / 60:.0f} min"
    elif seconds < 48 * 3600:
        amount = f"{seconds / 3600:.0f} h"
    else:
        amount = f"{seconds / 86400:.0f} d"
    return f"in {amount}" if ahead else f"{amount} ago"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def isoified(doc: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`doc` with the epoch seconds under `keys` as ISO times (0 or absent: null); lists of epochs too."""
    out = dict(doc)
    for key in keys:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [iso(v) for v in value if isinstance(v, int | float)]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = iso(value) if value else None
    return out


GATE_TIMES = ("since", "finished_at")
TUNNEL_TIMES = (
    "started_at",
    "probe_asked_at",
    "next_probe_at",
    "last_probe_at",
    "restarts",
    "next_restart_at",
)


def gate_lines(doc: Mapping[str, Any] | None, now: float) -> list[str]:
    if not doc:
        return ["gate: never ran on this host"]
    phase = doc.get("phase", "unknown")
    since = f" since {iso(doc['since'])} ({ago(doc['since'], now)})" if doc.get("since") else ""
    lines = []
    if phase == "running":
        lines.append(f"gate: running, at step {doc.get('step', '?')}{since}")
    elif phase == "done":
        finished = doc.get("finished_at") or doc.get("since")
        at = f" at {iso(finished)} ({ago(finished, now)})" if finished else ""
        lines.append(f"gate: done{at}")
    else:
        lines.append(f"gate: {phase} at step {doc.get('step', '?')}{since}")
        if doc.get("reason"):
            lines.append(f"  reason: {doc['reason'].splitlines()[0]}")
        if doc.get("failed_process"):
            lines.append(f"  process: {doc['failed_process']}")
    if doc.get("generation") is not None:
        lines.append(f"  gate run {doc['generation']}")
    return lines


def tunnel_lines(doc: Mapping[str, Any] | None, now: float, max_per_hour: int | None = None) -> list[str]:
    if not doc:
        return ["tunnel watch: no state yet (the watchdog has not seen the tunnel)"]
    armed = "watched" if doc.get("armed") else "not watched (stopped on purpose, or not started yet)"
    lines = [f"tunnel: {doc.get('tunnel', 'UNKNOWN')}, {armed}"]
    lines.append(f"  last probe: {probe_text(doc, now)}")
    lines.append(f"  consecutive failures: {doc.get('consecutive_failures', 0)}")
    recent = recent_restarts(doc, now)
    cap = f" (of {max_per_hour} allowed)" if max_per_hour else ""
    last = f", last {ago(max(recent), now)}" if recent else ""
    lines.append(f"  restarts in the last hour: {len(recent)}{cap}{last}")
    if doc.get("capped"):
        lines.append("  RESTART BUDGET SPENT: `protea-supervisor tunnel reset` allows restarts again")
    if doc.get("next_restart_at", 0) > now:
        lines.append(f"  next restart allowed {ago(doc['next_restart_at'], now)}")
    return lines


def tunnel_line(doc: Mapping[str, Any], now: float) -> str:
    """The watchdog in the one line `status` gives it."""
    budget = "; RESTART BUDGET SPENT" if doc.get("capped") else ""
    wait = doc.get("next_restart_at", 0) - now
    later = f"; next restart allowed in {wait:.0f} s" if wait > 0 else ""
    return (
        f"tunnel watch: last probe {probe_text(doc, now)}; {doc.get('consecutive_failures', 0)} "
        f"consecutive failures; {len(recent_restarts(doc, now))} restarts in the last hour{later}{budget}"
    )


def recent_restarts(doc: Mapping[str, Any], now: float) -> list[float]:
    return [float(t) for t in doc.get("restarts", []) if now - float(t) < 3600]


def probe_text(doc: Mapping[str, Any], now: float) -> str:
    """The last probe's verdict and age, marked stale when it was taken before the tunnel's current start."""
    at = doc.get("last_probe_at") or 0
    if not at:
        return "never probed"
    verdict = "ok" if doc.get("last_ok") else "FAILED"
    detail = f" ({doc['last_detail']})" if doc.get("last_detail") else ""
    stale = " [stale: from before the tunnel's current start]" if at < (doc.get("started_at") or 0) else ""
    return f"{verdict} {ago(at, now)}{detail}{stale}"


def autoscale_line(
    queue: str, count: int, bounds: str, pinned: bool, entry: Mapping[str, Any], now: float
) -> str:
    """An autoscaled queue in `status`: its count, why it is what it is, and its last change."""
    if pinned:
        return (
            f"autoscale {queue}: pinned at {count} by the operator (`scale {queue} --auto` resumes; {bounds})"
        )
    if not entry:
        return f"autoscale {queue}: {count} ({bounds}); the autoscaler has not looked yet"
    line = f"autoscale {queue}: {count} ({bounds}): {entry.get('why', '')}"
    change = entry.get("last_change")
    if isinstance(change, dict) and change.get("at"):
        line += (
            f"; last change {ago(float(change['at']), now)}: {change.get('from')} -> {change.get('to')} "
            f"(backlog {change.get('backlog')})"
        )
    return line
