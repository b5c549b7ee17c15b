"""The tunnel watchdog: a dead ngrok tunnel is found in seconds and restarted, without flapping.

`handle` is pure: (config, state, event, now) -> (state, actions). The probes keep their own clock: each
answer schedules the next probe `probe_interval` s after the last one was sent (a Probe action carries its
delay), so the pace is the stack's, not supervisord's TICK_5; the tick is only a safety net (a probe that
never reported, a deferred start, a restart waiting out its backoff). A failed probe is confirmed
`confirm_interval` s later, and a probe still unanswered after `confirm_interval` (a hung tunnel: the real
ngrok failure) does not hold the confirmations back behind its own timeout: the next one is asked while it
is in flight. Probes run in threads and report back (`slow`, then their result) as REMOTE_COMMUNICATION
events. The tunnel program has autorestart=false: this listener is the only thing that restarts it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor.locks.operation import attempt
from protea_supervisor.stackfile.files import read_json, write_json
from protea_supervisor.stackfile.stack import TunnelWatch

from .actions import Log
from .clock import stepped_line, unstepped
from .deploy_timer import COMM_TYPE as TIMER_COMM_TYPE
from .edge import (
    ListenerLog,
    Rpc,
    call_tolerating,
    execute_each,
    listener_stack,
    rpc_factory,
    send_event,
)
from .protocol import Event, run

COMM_TYPE = "protea-tunnel-watch"
STATE_FILE = "tunnel-watch.json"
HOUR = 3600.0
TUNNEL = "tunnel:tunnel"


@dataclass(frozen=True)
class WatchConfig:
    """What to probe (from the stack's probes) and the rules (the stack's tunnel_watch record, as is)."""

    public_url: str
    agent_url: str
    rules: TunnelWatch


@dataclass(frozen=True)
class WatchState:
    tunnel: str = "UNKNOWN"
    armed: bool = False  # started by the gate (or by hand); a deliberate stop disarms
    started_at: float = 0.0
    tunnel_pid: int = 0  # the tunnel process the failures were counted against
    failures: int = 0
    in_flight: tuple[int, ...] = ()
    probe_id: int = 0
    probe_asked_at: float = 0.0
    next_probe_at: float = 0.0
    last_probe_at: float = 0.0
    last_ok: bool | None = None
    last_detail: str = ""
    restarts: tuple[float, ...] = ()
    backoff: float = 0.0
    next_restart_at: float = 0.0
    restarting: bool = False
    capped: bool = False
    # A start the operation lock deferred (another command was changing the stack): tried again on ticks.
    start_pending: bool = False
    # The last event's wall time, to see the clock step back (clock.py); bookkeeping, not persisted.
    clock: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Probe:
    probe_id: int
    delay: float
    # Report `slow` when no answer came this many seconds after the probe was sent (0: never).
    slow_after: float = 0.0


@dataclass(frozen=True)
class StartTunnel:
    pass


@dataclass(frozen=True)
class StopTunnel:
    pass


@dataclass(frozen=True)
class Publish:
    state: WatchState


@dataclass(frozen=True)
class ReportOutage:
    """Tell the deploy timer (its trigger; it keeps its own spacing) that the tunnel had to be restarted."""

    why: str


Action = Probe | StartTunnel | StopTunnel | Publish | Log | ReportOutage


# --- the pure handler -----------------------------------------------------------------------------------


def public_verdict(
    status: int | None, headers: Mapping[str, str], error: str, down_statuses: Sequence[int]
) -> tuple[bool, str]:
    """The rule for the public URL: up unless no answer, a timeout, a 5xx, a listed status (402: expired
    session), or an answer carrying ngrok's own error code (its "tunnel not found" pages)."""
    if status is None:
        return False, f"public URL: {error or 'no answer'}"
    code = next((v for k, v in headers.items() if k.lower() == "ngrok-error-code"), "")
    if code:
        return False, f"public URL: HTTP {status} {code}"
    if status >= 500 or status in down_statuses:
        return False, f"public URL: HTTP {status}"
    return True, f"public URL: HTTP {status}"


def agent_verdict(listing: Any, public_url: str) -> tuple[bool, str]:
    """The agent API must list a tunnel for the configured domain (any tunnel when none is configured)."""
    tunnels = listing.get("tunnels") if isinstance(listing, dict) else None
    if not isinstance(tunnels, list):
        return False, "agent API: no tunnel list"
    want = _hostname(public_url) if public_url else None
    for tunnel in tunnels:
        url = tunnel.get("public_url", "") if isinstance(tunnel, dict) else ""
        if want is None or _hostname(str(url)) == want:
            return True, f"agent API: {url}"
    return False, f"agent API: no tunnel for {want or 'any domain'}"


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # what the agent API said is not a URL
        return None


def resume(
    config: WatchConfig, saved: WatchState | None, tunnel_state: str, tunnel_pid: int, now: float
) -> WatchState:
    """Listener (re)start: restart history, backoff and (for the same tunnel process) the consecutive failures
    survive; the tunnel's state comes from supervisord."""
    base = saved or WatchState()
    armed = tunnel_state in ("STARTING", "RUNNING") or (base.armed and tunnel_state in ("EXITED", "FATAL"))
    same_tunnel = tunnel_state == "RUNNING" and tunnel_pid > 0 and base.tunnel_pid == tunnel_pid
    return replace(
        base,
        tunnel=tunnel_state,
        tunnel_pid=tunnel_pid if tunnel_state == "RUNNING" else 0,
        armed=armed,
        in_flight=(),
        restarting=False,
        failures=base.failures if same_tunnel else 0,
        started_at=base.started_at if same_tunnel and base.started_at else now,
        next_probe_at=now,
    )


def begin(config: WatchConfig, state: WatchState, now: float) -> tuple[WatchState, list[Action]]:
    """The listener has (re)started: the clock starts with a probe now, when there is a tunnel to watch."""
    return _next_probe(config, state, now)


def lost_after(rules: TunnelWatch) -> float:
    """A probe that has not reported this long after it was sent never will (its thread or its report was
    lost): a probe makes at most two requests, each failing within about two timeouts."""
    return 4 * rules.probe_timeout + rules.confirm_interval + 10


# The watchdog's wall times: a clock stepped back moves them all (see clock.py).
MOMENTS = ("started_at", "probe_asked_at", "next_probe_at", "last_probe_at", "restarts", "next_restart_at")


def handle(
    config: WatchConfig, state: WatchState, event: Event, now: float
) -> tuple[WatchState, list[Action]]:
    if event.name.startswith("TICK_"):
        now = float(event.fields.get("when", now))
    state, by = unstepped(state, now, MOMENTS)
    state, actions = _handle(config, state, event, now)
    return state, [*([Log(stepped_line("tunnel-watch", by))] if by else []), *actions]


def _handle(
    config: WatchConfig, state: WatchState, event: Event, now: float
) -> tuple[WatchState, list[Action]]:
    if event.name.startswith("TICK_"):
        return _tick(config, state, now)
    if event.name.startswith("PROCESS_STATE_") and event.process == TUNNEL:
        if event.state == "RUNNING":
            state = replace(state, tunnel_pid=int(event.fields.get("pid", "0") or 0))
        return _tunnel_event(config, state, event.state, now)
    if event.name == "REMOTE_COMMUNICATION" and event.fields.get("type") == COMM_TYPE:
        try:
            message = json.loads(event.data)
        except ValueError:
            return state, [Log("tunnel-watch: ignored a malformed message")]
        if message.get("command") == "reset":
            state = replace(state, restarts=(), backoff=0.0, next_restart_at=0.0, capped=False)
            actions: list[Action] = [
                Log("tunnel-watch: reset by an operator: restart budget and backoff cleared")
            ]
            state, more = _tick(config, state, now)
            return state, [*actions, *more, Publish(state)]
        if message.get("kind") == "busy":
            return _deferred(
                config, state, str(message.get("action", "")), str(message.get("holder", "")), now
            )
        probe_id = message.get("probe_id")
        if probe_id not in state.in_flight:
            return state, []  # a probe from before a restart: it says nothing about the new process
        if message.get("kind") == "probe":
            ok, detail = bool(message.get("ok")), str(message.get("detail", ""))
            return _probe_result(config, state, probe_id, ok, detail, now)
        if message.get("kind") == "slow":
            return _slow_probe(config, state, now)
    return state, []


def _deferred(
    config: WatchConfig, state: WatchState, action: str, holder: str, now: float
) -> tuple[WatchState, list[Action]]:
    """The executor could not take the operation lock: another command is changing the stack. The restart
    does not count against the budget, and is tried again on the next tick."""
    state = replace(
        state,
        restarts=state.restarts[:-1],
        restarting=False,
        next_restart_at=now,
        failures=config.rules.failures if state.tunnel == "RUNNING" else state.failures,
        start_pending=action == "start",
    )
    return state, [Log(f"tunnel-watch: {action} deferred: {holder} is changing the stack"), Publish(state)]


def _tick(config: WatchConfig, state: WatchState, now: float) -> tuple[WatchState, list[Action]]:
    if not state.armed:
        return state, []
    if state.start_pending and state.tunnel == "STOPPED":
        return replace(state, start_pending=False), [StartTunnel(), Log("tunnel-watch: starting the tunnel")]
    if state.tunnel in ("EXITED", "FATAL"):
        return _restart(config, state, now, "still down")
    if state.tunnel == "RUNNING" and state.failures >= config.rules.failures:
        state, actions = _restart(config, state, now, "still failing")
        if actions or state.restarting:
            return state, actions
        # No restart allowed yet (backoff, or the hourly budget): keep probing, so `status` stays true.
    lost = state.in_flight and now > state.probe_asked_at + lost_after(config.rules)
    if state.tunnel == "RUNNING" and lost:
        state = replace(state, in_flight=())
        state, actions = _next_probe(config, state, now)
        return state, [Log("tunnel-watch: a probe never reported; probing again"), *actions]
    return _next_probe(config, state, now)


def _next_probe(config: WatchConfig, state: WatchState, now: float) -> tuple[WatchState, list[Action]]:
    """Keep the clock going: with a watched, running tunnel and no probe on its way, ask the next one for
    `next_probe_at` (now, when that is past)."""
    if not state.armed or state.tunnel != "RUNNING" or state.in_flight or state.restarting:
        return state, []
    return _probe(config, state, max(0.0, state.next_probe_at - now), now)


def _probe(
    config: WatchConfig, state: WatchState, delay: float, now: float
) -> tuple[WatchState, list[Action]]:
    # The next regular probe is due one interval after this one was asked for, not after it answered.
    probe_id = state.probe_id + 1
    state = replace(
        state, in_flight=(*state.in_flight, probe_id), probe_id=probe_id, probe_asked_at=now + delay
    )
    return state, [Probe(probe_id, delay, config.rules.confirm_interval)]


def _slow_probe(config: WatchConfig, state: WatchState, now: float) -> tuple[WatchState, list[Action]]:
    """A probe has had no answer for `confirm_interval` s: ask the next one now rather than after its timeout,
    but never more at once than the failures still needed for a restart."""
    in_grace = now < state.started_at + config.rules.grace
    needed = config.rules.failures - state.failures
    if state.tunnel != "RUNNING" or in_grace or len(state.in_flight) >= needed:
        return state, []
    return _probe(config, state, 0.0, now)


def _tunnel_event(
    config: WatchConfig, state: WatchState, new: str, now: float
) -> tuple[WatchState, list[Action]]:
    state = replace(state, tunnel=new)
    if new == "RUNNING":
        # Probes in the grace period after a start do not count (ngrok needs a moment to bind the domain).
        state = replace(state, armed=True, started_at=now, failures=0, next_probe_at=now, in_flight=())
        state = replace(state, start_pending=False)
        state, actions = _next_probe(config, state, now)
        return state, [*actions, Publish(state)]
    if new == "STOPPED":
        if state.restarting:
            return replace(state, restarting=False), [StartTunnel(), Log("tunnel-watch: starting the tunnel")]
        if state.start_pending:
            return state, []
        state = replace(state, armed=False, failures=0)
        return state, [Log("tunnel-watch: tunnel stopped by hand; not watching"), Publish(state)]
    if new in ("EXITED", "FATAL") and state.armed and not state.restarting:
        return _restart(config, state, now, f"tunnel {new}")
    return state, []


def _probe_result(
    config: WatchConfig, state: WatchState, probe_id: int, ok: bool, detail: str, now: float
) -> tuple[WatchState, list[Action]]:
    in_flight = tuple(i for i in state.in_flight if i != probe_id)
    state = replace(state, in_flight=in_flight, last_probe_at=now, last_ok=ok, last_detail=detail)
    in_grace = now < state.started_at + config.rules.grace
    if ok or state.tunnel != "RUNNING":
        healthy = ok and not in_grace
        state = replace(
            state,
            failures=0,
            next_probe_at=state.probe_asked_at + config.rules.probe_interval,
            backoff=0.0 if healthy else state.backoff,
        )
        state, actions = _next_probe(config, state, now)
        return state, [*actions, Publish(state)]
    if in_grace:
        state = replace(state, next_probe_at=now + config.rules.confirm_interval)
        state, actions = _next_probe(config, state, now)
        return state, [*actions, Publish(state)]
    state = replace(state, failures=state.failures + 1)
    if state.failures >= config.rules.failures:
        state = replace(state, next_probe_at=now + config.rules.probe_interval)
        state, actions = _restart(config, state, now, f"{state.failures} failed probes ({detail})")
        # No restart allowed yet (backoff, or the hourly budget): the clock goes on, so `status` stays true.
        state, more = _next_probe(config, state, now)
        return state, [*actions, *more, Publish(state)]
    log = Log(f"tunnel-watch: probe failed ({state.failures}/{config.rules.failures}): {detail}")
    if state.in_flight:  # the confirmation asked while this one hung is already on its way
        return state, [log, Publish(state)]
    state, actions = _probe(config, state, config.rules.confirm_interval, now)
    return state, [*actions, log, Publish(state)]


def _restart(config: WatchConfig, state: WatchState, now: float, why: str) -> tuple[WatchState, list[Action]]:
    if state.restarting or state.tunnel in ("STARTING", "STOPPING", "BACKOFF"):
        return state, []
    recent = tuple(t for t in state.restarts if now - t < HOUR)
    if len(recent) >= config.rules.max_restarts_per_hour:
        if state.capped:
            return replace(state, restarts=recent), []
        state = replace(state, restarts=recent, capped=True)
        message = (
            f"tunnel-watch: RESTART BUDGET SPENT: {len(recent)} restarts in the last hour; the tunnel stays "
            f"as it is ({why}) until {datetime.fromtimestamp(recent[0] + HOUR, UTC):%H:%M:%S} UTC or "
            "`protea-supervisor tunnel reset`"
        )
        return state, [Log(message), Publish(state)]
    if now < state.next_restart_at:
        return state, []
    backoff = (
        config.rules.backoff_initial
        if not state.backoff
        else min(state.backoff * 2, config.rules.backoff_max)
    )
    state = replace(
        state,
        restarts=(*recent, now),
        backoff=backoff,
        next_restart_at=now + backoff,
        failures=0,
        capped=False,
        in_flight=(),
    )
    log = Log(
        f"tunnel-watch: restarting the tunnel: {why} (restart {len(state.restarts)} this hour; "
        f"next no sooner than {backoff:g} s)"
    )
    if state.tunnel == "RUNNING":
        return replace(state, restarting=True), [log, StopTunnel(), Publish(state), ReportOutage(why)]
    return state, [log, StartTunnel(), Publish(state), ReportOutage(why)]


# --- state file -----------------------------------------------------------------------------------------


def state_document(state: WatchState) -> dict[str, Any]:
    return {
        "tunnel": state.tunnel,
        "armed": state.armed,
        "last_probe_at": state.last_probe_at,
        "last_ok": state.last_ok,
        "last_detail": state.last_detail,
        "consecutive_failures": state.failures,
        "restarts": list(state.restarts),
        "backoff": state.backoff,
        "next_restart_at": state.next_restart_at,
        "capped": state.capped,
        "started_at": state.started_at,
        "start_pending": state.start_pending,
        "tunnel_pid": state.tunnel_pid,
    }


def state_from_document(doc: Mapping[str, Any]) -> WatchState:
    return WatchState(
        armed=bool(doc.get("armed", False)),
        started_at=float(doc.get("started_at", 0.0)),
        last_probe_at=float(doc.get("last_probe_at", 0.0)),
        last_ok=doc.get("last_ok"),
        last_detail=str(doc.get("last_detail", "")),
        restarts=tuple(float(t) for t in doc.get("restarts", [])),
        backoff=float(doc.get("backoff", 0.0)),
        next_restart_at=float(doc.get("next_restart_at", 0.0)),
        capped=bool(doc.get("capped", False)),
        failures=int(doc.get("consecutive_failures", 0)),
        tunnel_pid=int(doc.get("tunnel_pid", 0)),
        start_pending=bool(doc.get("start_pending", False)),
    )


# --- the edge -------------------------------------------------------------------------------------------


def probe_once(config: WatchConfig) -> tuple[bool, str]:
    import requests

    try:
        response = requests.head(config.public_url, timeout=config.rules.probe_timeout, allow_redirects=False)
        public_ok, public = public_verdict(
            response.status_code, dict(response.headers), "", config.rules.down_statuses
        )
    except requests.Timeout:
        public_ok, public = public_verdict(
            None, {}, f"no answer within {config.rules.probe_timeout:g} s", config.rules.down_statuses
        )
    except requests.RequestException as why:
        public_ok, public = public_verdict(None, {}, type(why).__name__, config.rules.down_statuses)
    if not config.agent_url:
        return public_ok, public
    try:
        listing = requests.get(config.agent_url, timeout=config.rules.probe_timeout).json()
        agent_ok, agent = agent_verdict(listing, config.public_url)
    except (requests.RequestException, ValueError) as why:
        agent_ok, agent = False, f"agent API: {type(why).__name__}"
    return public_ok and agent_ok, f"{public}; {agent}"


class Executor:
    def __init__(self, rpc: Rpc, config: WatchConfig, state_path: Path, log: ListenerLog) -> None:
        self.rpc = rpc
        self.config = config
        self.state_path = state_path
        self.log = log
        self.run_dir = state_path.parent

    def _under_lock(self, action: str, method: str, harmless: str) -> None:
        """A restart is a change to the stack: it takes the operation lock, without waiting. When another
        command holds it (and does not spare the tunnel, as a tick does), the handler hears it is deferred."""
        with attempt(self.run_dir, "tunnel-watch", "tunnel") as holder:
            if holder is None:
                call_tolerating(self.rpc, method, TUNNEL, False, harmless=harmless)
                return
        message = {"kind": "busy", "action": action, "holder": holder.describe()}
        threading.Thread(target=send_event, args=(self.rpc, COMM_TYPE, message), daemon=True).start()

    def execute(self, actions: Sequence[Action]) -> None:
        execute_each(actions, self._one, self.log, "tunnel-watch")

    def _one(self, action: Action) -> None:
        if isinstance(action, Log):
            self.log(action.message)
        elif isinstance(action, Probe):
            threading.Thread(target=self._probe, args=(action,), daemon=True).start()
        elif isinstance(action, StartTunnel):
            self._under_lock("start", "startProcess", "ALREADY_STARTED")
        elif isinstance(action, StopTunnel):
            self._under_lock("stop", "stopProcess", "NOT_RUNNING")
        elif isinstance(action, Publish):
            write_json(self.state_path, state_document(action.state))
        elif isinstance(action, ReportOutage):
            message = {"kind": "trigger", "trigger": "tunnel", "reason": action.why[:200]}
            threading.Thread(
                target=send_event, args=(self.rpc, TIMER_COMM_TYPE, message), daemon=True
            ).start()

    def _probe(self, probe: Probe) -> None:
        time.sleep(probe.delay)
        answered = threading.Event()
        if probe.slow_after:
            threading.Thread(target=self._watch_slow, args=(probe, answered), daemon=True).start()
        try:
            ok, detail = probe_once(self.config)
        except Exception as why:
            ok, detail = False, type(why).__name__
        answered.set()
        send_event(
            self.rpc, COMM_TYPE, {"kind": "probe", "probe_id": probe.probe_id, "ok": ok, "detail": detail}
        )

    def _watch_slow(self, probe: Probe, answered: threading.Event) -> None:
        if not answered.wait(probe.slow_after):
            send_event(self.rpc, COMM_TYPE, {"kind": "slow", "probe_id": probe.probe_id})


def config_from_stack(stack: Any) -> WatchConfig:
    return WatchConfig(stack.probes.public_url, stack.probes.ngrok_api_url, stack.tunnel_watch)


def reset_message() -> str:
    return json.dumps({"command": "reset"})


def main(argv: Sequence[str] | None = None) -> None:
    stack, log = listener_stack(argv, "tunnel watchdog")
    config = config_from_stack(stack)
    rpc = rpc_factory(os.environ)
    state_path = stack.paths.run / STATE_FILE
    executor = Executor(rpc, config, state_path, log)
    doc = read_json(state_path)
    info = rpc().supervisor.getProcessInfo(TUNNEL)
    saved = state_from_document(doc) if doc else None
    now = time.time()
    state, actions = begin(config, resume(config, saved, info["statename"], int(info["pid"]), now), now)
    holder = {"state": state}
    watched = " and ".join(url for url in (config.public_url, config.agent_url) if url) or "nothing"
    log(f"tunnel-watch: watching {watched} every {config.rules.probe_interval:g} s")
    executor.execute(actions)

    def on_event(event: Event) -> None:
        state, actions = handle(config, holder["state"], event, time.time())
        holder["state"] = state
        executor.execute(actions)

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
