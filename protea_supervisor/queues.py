"""The stalled-queue detector (today's scripts/queue_heartbeat.py): pure judgement over the RabbitMQ
management API's `/api/queues` and supervisord's process list, plus the one HTTP read it needs.

stalled   messages waiting and no consumer.
starved   messages and consumers, but no acks for longer than the queue's grace (1800 s; 5400 s for the
          batch queues), counted across runs with a small state file.
mismatch  a stack queue whose consumer count differs from the number of RUNNING processes of its worker
          program (a worker stuck without its channel, or a stray consumer).
Idle queues are never a fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protea_supervisor.errors import BrokerUnreachable

DEFAULT_GRACE = 1800


@dataclass(frozen=True)
class Reading:
    name: str
    messages: int
    consumers: int
    ack_rate: float


@dataclass(frozen=True)
class Watch:
    """What the stack says about a queue: its grace, and how many workers should be consuming it."""

    grace: float
    program: str = ""
    running: int | None = None  # RUNNING processes of its worker program; None when not a stack queue


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # ok, idle, stalled, starved, mismatch
    messages: int
    consumers: int
    running: int | None
    detail: str

    @property
    def fault(self) -> bool:
        return self.status in ("stalled", "starved", "mismatch")


def readings(doc: Any, prefix: str, exempt: Sequence[str]) -> list[Reading]:
    """The queues of `/api/queues` whose name starts with `prefix`, minus the exempt ones."""
    out = []
    for queue in doc if isinstance(doc, list) else []:
        name = str(queue.get("name", ""))
        if not name.startswith(prefix) or name in exempt:
            continue
        stats = queue.get("message_stats") or {}
        rate = float((stats.get("ack_details") or {}).get("rate", 0.0))
        messages, consumers = int(queue.get("messages", 0) or 0), int(queue.get("consumers", 0) or 0)
        out.append(Reading(name, messages, consumers, rate))
    return sorted(out, key=lambda r: r.name)


def judge(
    found: Iterable[Reading],
    watches: Mapping[str, Watch],
    stuck_since: Mapping[str, float],
    now: float,
    default_grace: float = DEFAULT_GRACE,
) -> tuple[list[Verdict], dict[str, float]]:
    """Verdicts for every queue read, and when each busy-but-silent queue first looked so."""
    verdicts = []
    since: dict[str, float] = {}
    for reading in found:
        watch = watches.get(reading.name, Watch(default_grace))
        status, detail = "ok", ""
        if reading.messages and not reading.consumers:
            status, detail = "stalled", f"{reading.messages} messages and no consumer"
        elif reading.messages and reading.ack_rate == 0:
            since[reading.name] = stuck_since.get(reading.name, now)
            silent = now - since[reading.name]
            if silent > watch.grace:
                status, detail = "starved", f"no acks for {silent:.0f} s (grace {watch.grace:g} s)"
        elif not reading.messages:
            status = "idle"
        if status in ("ok", "idle") and watch.running is not None and reading.consumers != watch.running:
            status = "mismatch"
            detail = f"{reading.consumers} consumers, {watch.running} {watch.program} processes RUNNING"
        verdicts.append(
            Verdict(reading.name, status, reading.messages, reading.consumers, watch.running, detail)
        )
    return verdicts, since


def running_counts(infos: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """RUNNING processes per group (program), from getAllProcessInfo."""
    counts: dict[str, int] = {}
    for info in infos:
        if info["statename"] == "RUNNING":
            counts[info["group"]] = counts.get(info["group"], 0) + 1
    return counts


def table(verdicts: Sequence[Verdict]) -> str:
    lines = [f"{'QUEUE':<34} {'MESSAGES':>8} {'CONSUMERS':>9} {'WORKERS':>7}  STATUS"]
    for v in verdicts:
        workers = "-" if v.running is None else str(v.running)
        detail = f" ({v.detail})" if v.detail else ""
        lines.append(f"{v.name:<34} {v.messages:>8} {v.consumers:>9} {workers:>7}  {v.status}{detail}")
    return "\n".join(lines)


def fetch_queues(api: str, user: str, password: str, timeout: float = 10.0) -> Any:
    """GET <api>/api/queues; BrokerUnreachable (exit 2) when it cannot be read."""
    import requests

    url = api.rstrip("/") + "/api/queues"
    try:
        response = requests.get(url, auth=(user, password), timeout=timeout)
    except requests.RequestException as why:
        raise BrokerUnreachable(
            f"the RabbitMQ management API at {api} is unreachable ({type(why).__name__})."
        ) from None
    if response.status_code != 200:
        raise BrokerUnreachable(f"the RabbitMQ management API at {api} answered HTTP {response.status_code}.")
    try:
        return response.json()
    except ValueError:
        raise BrokerUnreachable(f"the RabbitMQ management API at {api} did not answer JSON.") from None
