"""The stalled-queue detector (today's scripts/queue_heartbeat.py): pure judgement over the RabbitMQ
management API's `/api/queues` and supervisord's process list, plus the one HTTP read it needs.

stalled   messages waiting and no consumer.
starved   messages and consumers, but the queue's ack total (`message_stats.ack`) has not moved for longer
          than the queue's grace (1800 s; 5400 s for the batch queues), counted across runs with a small
          state file. The total, not RabbitMQ's momentary rate: a batch queue that acks once per long batch
          reads a rate of 0 most of the time and is healthy.
mismatch  a stack queue whose consumer count differs from the number of RUNNING processes of its worker
          program (a worker stuck without its channel, or a stray consumer), whenever supervisord answers.
Idle queues are never a fault. An answer that is not the queue list is refused (BrokerAnswerInvalid).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protea_supervisor.errors import BrokerAnswerInvalid, BrokerUnreachable

DEFAULT_GRACE = 1800


@dataclass(frozen=True)
class Reading:
    name: str
    messages: int
    consumers: int
    acks: int  # message_stats.ack: acks since the queue (or the broker's statistics) began


@dataclass(frozen=True)
class Seen:
    """A busy queue as an earlier run saw it: its ack total, and since when that total has not moved."""

    acks: int
    since: float


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


def _count(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BrokerAnswerInvalid(f"{where}: {key} is {value!r}, not a count.")
    return value


def readings(doc: Any, prefix: str, exempt: Sequence[str]) -> list[Reading]:
    """The queues of `/api/queues` whose name starts with `prefix`, minus the exempt ones."""
    if not isinstance(doc, list):
        raise BrokerAnswerInvalid(f"/api/queues answered a {type(doc).__name__}, not a list of queues.")
    out = []
    for n, queue in enumerate(doc):
        if not isinstance(queue, dict) or not isinstance(queue.get("name"), str):
            raise BrokerAnswerInvalid(f"/api/queues entry {n} is not a queue with a name.")
        name = queue["name"]
        if not name.startswith(prefix) or name in exempt:
            continue
        where = f"/api/queues entry {name!r}"
        stats = queue.get("message_stats") or {}
        if not isinstance(stats, dict):
            raise BrokerAnswerInvalid(f"{where}: message_stats is not an object.")
        out.append(
            Reading(name, _count(queue, "messages", where), _count(queue, "consumers", where),
                    _count(stats, "ack", where))
        )  # fmt: skip
    return sorted(out, key=lambda r: r.name)


def seen_from_state(doc: Any) -> dict[str, Seen]:
    """The state file's record; anything it cannot vouch for (an older format, a damaged file) is not read,
    which only restarts the silence clock."""
    seen = {}
    for name, entry in (doc if isinstance(doc, dict) else {}).items():
        try:
            seen[str(name)] = Seen(int(entry["acks"]), float(entry["since"]))
        except (TypeError, KeyError, ValueError):
            continue
    return seen


def judge(
    found: Iterable[Reading],
    watches: Mapping[str, Watch],
    seen: Mapping[str, Seen],
    now: float,
    default_grace: float = DEFAULT_GRACE,
) -> tuple[list[Verdict], dict[str, Seen]]:
    """Verdicts for every queue read, and the busy queues' ack totals and since when each has not moved."""
    verdicts = []
    busy: dict[str, Seen] = {}
    for reading in found:
        watch = watches.get(reading.name, Watch(default_grace))
        status, detail = "ok", ""
        if reading.messages and not reading.consumers:
            status, detail = "stalled", f"{reading.messages} messages and no consumer"
        elif reading.messages:
            before = seen.get(reading.name)
            moved = before is None or before.acks != reading.acks  # a reset total counts as a move
            busy[reading.name] = Seen(reading.acks, now if moved or before is None else before.since)
            silent = now - busy[reading.name].since
            if silent > watch.grace:
                status, detail = (
                    "starved",
                    f"ack total {reading.acks} unchanged for {silent:.0f} s (grace {watch.grace:g} s)",
                )
        else:
            status = "idle"
        if status in ("ok", "idle") and watch.running is not None and reading.consumers != watch.running:
            status = "mismatch"
            detail = f"{reading.consumers} consumers, {watch.running} {watch.program} processes RUNNING"
        verdicts.append(
            Verdict(reading.name, status, reading.messages, reading.consumers, watch.running, detail)
        )
    return verdicts, busy


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
        raise BrokerAnswerInvalid(f"the RabbitMQ management API at {api} did not answer JSON.") from None


def rabbit_credentials(env: dict[str, str]) -> tuple[str, str]:
    """PROTEA_RABBIT_USER/PASS (today's script), else the user in PROTEA_AMQP_URL, else guest/guest."""
    from urllib.parse import unquote, urlsplit

    if env.get("PROTEA_RABBIT_USER"):
        return env["PROTEA_RABBIT_USER"], env.get("PROTEA_RABBIT_PASS", "")
    try:
        amqp = urlsplit(env.get("PROTEA_AMQP_URL", ""))
    except ValueError:
        return "guest", "guest"
    if amqp.username:
        return unquote(amqp.username), unquote(amqp.password or "")
    return "guest", "guest"
