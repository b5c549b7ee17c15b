"""The deploy timer: starts the `deploy-tick` one-shot on a schedule, on triggers, and after failures.

`handle` is pure: (config, state, event, now) -> (state, actions). TICK_5 paces it; the poll interval (with
a deterministic jitter) counts from TICK payloads. Triggers start a tick at once: a new commit seen by a
cheap `git ls-remote` (run off the loop; the first sighting after a start only records the sha), a manual
trigger (`protea-supervisor trigger`: a marker file and a REMOTE_COMMUNICATION event), and a tunnel outage
reported by the watchdog (at most once per `tunnel_trigger_spacing`). Each tick's exit code arrives with its
PROCESS_STATE_EXITED event (the edge adds it). Failures run the retry ladder, then the escalation command
and a pause; prerequisite failures (exit 40) back off and never escalate. Never two ticks at once.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protea_supervisor.deploy.plan import MEANING, NOOP, PREREQUISITES_DOWN, REDEPLOYED
from protea_supervisor.humane import iso
from protea_supervisor.stackfile.files import read_json, write_json

from .actions import Log
from .clock import stepped_line, unstepped
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

COMM_TYPE = "protea-deploy-timer"
STATE_FILE = "deploy-timer.json"
MARKER_FILE = "deploy-trigger"
TICK = "deploy-tick:deploy-tick"


@dataclass(frozen=True)
class TimerConfig:
    poll_interval: float
    jitter: float
    retry_ladder: tuple[int, ...]
    pause_after_escalation: float
    escalation_command: str
    check_interval: float  # how often `git ls-remote` looks for a new commit (0: never)
    tunnel_trigger_spacing: float = 300.0
    # A compute node: the check reads the revision the server declared, and its first sighting triggers a
    # tick too (the node may have been down while the server moved on).
    follow: bool = False


@dataclass(frozen=True)
class TimerState:
    next_poll_at: float = 0.0
    running: bool = False
    started_at: float = 0.0
    reason: str = ""
    serial: int = 0
    pending: str = ""  # a trigger waiting for the running tick to end
    ladder_step: int = 0  # retries spent after the last success
    retry_at: float = 0.0
    prereq_backoff: float = 0.0
    paused_until: float = 0.0
    last_exit: int | None = None
    last_tick_at: float = 0.0
    seen_sha: str = ""
    checking: bool = False
    next_check_at: float = 0.0
    last_tunnel_trigger_at: float = 0.0
    # The last event's wall time, to see the clock step back (clock.py); bookkeeping, not persisted.
    clock: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class StartTick:
    reason: str


@dataclass(frozen=True)
class CheckRemote:
    pass


@dataclass(frozen=True)
class Escalate:
    kind: str
    exit_code: int


@dataclass(frozen=True)
class Publish:
    state: TimerState


@dataclass(frozen=True)
class Notify:
    """A deploy notification for the webhooks: escalated, paused or resumed."""

    event: str
    summary: str


Action = StartTick | CheckRemote | Escalate | Publish | Log | Notify


# --- the pure handler -----------------------------------------------------------------------------------


def jitter_for(config: TimerConfig, serial: int) -> float:
    """A spread that differs from tick to tick yet replays the same: Knuth's multiplicative hash."""
    if config.jitter <= 0:
        return 0.0
    return float((serial * 2654435761) % (int(config.jitter) + 1))


def resume(config: TimerConfig, saved: TimerState | None, tick_state: str, exitstatus: int | None,
           stopped_at: float, now: float) -> tuple[TimerState, list[Action]]:  # fmt: skip
    """Listener (re)start. Schedule and ladder survive; a tick that ended while we were down is accounted
    for once; the remote sha is sighted afresh (a restart never deploys by itself)."""
    state = replace(saved or TimerState(), seen_sha="", checking=False, next_check_at=now)
    if not state.next_poll_at:
        state = replace(state, next_poll_at=now + config.poll_interval + jitter_for(config, 0))
    if tick_state in ("STARTING", "RUNNING", "STOPPING", "BACKOFF"):
        return replace(state, running=True), [Log("deploy-timer: a tick is running; waiting for it")]
    if state.running and exitstatus is not None and stopped_at >= state.started_at:
        return _tick_exited(config, replace(state, running=False), exitstatus, now)
    return replace(state, running=False), []


# The timer's wall times: a clock stepped back moves them all (see clock.py).
MOMENTS = ("next_poll_at", "started_at", "retry_at", "paused_until", "last_tick_at", "next_check_at",
           "last_tunnel_trigger_at")  # fmt: skip


def handle(
    config: TimerConfig, state: TimerState, event: Event, now: float
) -> tuple[TimerState, list[Action]]:
    if event.name.startswith("TICK_"):
        now = float(event.fields.get("when", now))
    state, by = unstepped(state, now, MOMENTS)
    state, actions = _handle(config, state, event, now)
    stepped: list[Action] = [Log(stepped_line("deploy-timer", by)), Publish(state)] if by else []
    return state, [*stepped, *actions]


def _handle(
    config: TimerConfig, state: TimerState, event: Event, now: float
) -> tuple[TimerState, list[Action]]:
    if event.name.startswith("TICK_"):
        return _tick(config, state, now)
    if event.name.startswith("PROCESS_STATE_") and event.process == TICK:
        if event.state in ("STARTING", "RUNNING"):
            return replace(state, running=True), []
        if event.state in ("EXITED", "FATAL"):
            if not state.running:  # redelivered after a listener restart, and already accounted for
                return state, []
            code = int(event.fields.get("exitstatus", "-1")) if event.state == "EXITED" else -1
            return _tick_exited(config, replace(state, running=False, last_tick_at=now), code, now)
        if event.state == "STOPPED":  # stopped by hand: not a result
            state = replace(state, running=False)
            return state, [Log("deploy-timer: the tick was stopped by hand"), Publish(state)]
        return state, []
    if event.name == "REMOTE_COMMUNICATION" and event.fields.get("type") == COMM_TYPE:
        try:
            message = json.loads(event.data)
        except ValueError:
            return state, [Log("deploy-timer: ignored a malformed message")]
        return _message(config, state, message, now)
    return state, []


def _message(
    config: TimerConfig, state: TimerState, message: Mapping[str, Any], now: float
) -> tuple[TimerState, list[Action]]:
    kind = message.get("kind")
    if kind == "trigger":
        trigger = str(message.get("trigger", "manual"))
        if trigger == "tunnel":
            last = state.last_tunnel_trigger_at
            if last and now - last < config.tunnel_trigger_spacing:
                return state, []
            state = replace(state, last_tunnel_trigger_at=now)
        reason = str(message.get("reason", ""))[:200]
        note = f"deploy-timer: trigger {trigger}" + (f": {reason}" if reason else "")
        return _trigger(config, state, trigger, now, [Log(note)])
    if kind == "remote":
        state = replace(state, checking=False)
        sha = str(message.get("sha", ""))
        if not sha:
            what = "reading the declared revision" if config.follow else "ls-remote"
            return state, [Log(f"deploy-timer: {what} failed: {message.get('detail', '')}")]
        if sha == state.seen_sha or not (state.seen_sha or config.follow):
            return replace(state, seen_sha=sha), []
        if config.follow:
            seen = Log(f"deploy-timer: declared {state.seen_sha[:10] or '(none seen)'} -> {sha[:10]}")
            return _trigger(config, replace(state, seen_sha=sha), "declared", now, [seen])
        seen = Log(f"deploy-timer: new commit {state.seen_sha[:10]} -> {sha[:10]}")
        return _trigger(config, replace(state, seen_sha=sha), "new-commit", now, [seen])
    return state, []


def _trigger(
    config: TimerConfig, state: TimerState, trigger: str, now: float, actions: list[Action]
) -> tuple[TimerState, list[Action]]:
    if state.running:
        state = replace(state, pending=trigger)
        return state, [
            *actions,
            Log("deploy-timer: a tick is running; the trigger waits for it"),
            Publish(state),
        ]
    if now < state.paused_until and trigger != "manual":
        return state, [*actions, Log("deploy-timer: paused after an escalation; only a manual trigger runs")]
    state, more = _start(state, f"trigger:{trigger}", now)
    return state, [*actions, *more]


def _tick(config: TimerConfig, state: TimerState, now: float) -> tuple[TimerState, list[Action]]:
    actions: list[Action] = []
    if config.check_interval and not state.checking and now >= state.next_check_at:
        state = replace(state, checking=True, next_check_at=now + config.check_interval)
        actions.append(CheckRemote())
    if state.running or now < state.paused_until:
        return state, actions
    if state.paused_until:
        state = replace(state, paused_until=0.0)
        actions += [
            Notify("resumed", "the pause after the escalation is over"),
            Log("resumed"),
            Publish(state),
        ]
    if state.pending:
        state, more = _start(replace(state, pending=""), f"trigger:{state.pending}", now)
        return state, [*actions, *more]
    if state.retry_at and now >= state.retry_at:
        state, more = _start(replace(state, retry_at=0.0), "retry", now)
        return state, [*actions, *more]
    if not state.retry_at and now >= state.next_poll_at:
        state, more = _start(state, "poll", now)
        return state, [*actions, *more]
    return state, actions


def _start(state: TimerState, reason: str, now: float) -> tuple[TimerState, list[Action]]:
    state = replace(state, running=True, started_at=now, reason=reason, serial=state.serial + 1)
    return state, [Log(f"tick scheduled: {reason}"), StartTick(reason), Publish(state)]


def _tick_exited(
    config: TimerConfig, state: TimerState, code: int, now: float
) -> tuple[TimerState, list[Action]]:
    meaning = MEANING.get(code, "failed")
    state = replace(state, last_exit=code, last_tick_at=now)
    log = [Log(f"tick exit={code} {meaning}")]
    next_poll = now + config.poll_interval + jitter_for(config, state.serial)
    if code in (NOOP, REDEPLOYED):
        resumed: list[Action] = []
        if state.paused_until > now:  # a manual tick succeeded during the pause: the pause is over
            resumed = [Notify("resumed", f"a tick succeeded during the pause (exit {code})"), Log("resumed")]
        state = replace(
            state, ladder_step=0, retry_at=0.0, prereq_backoff=0.0, next_poll_at=next_poll, paused_until=0.0
        )
        return state, [*log, *resumed, Publish(state)]
    ladder = config.retry_ladder or (0,)
    if code == PREREQUISITES_DOWN:
        # The operator is the recovery path for infrastructure: back off, never escalate.
        backoff = min(state.prereq_backoff * 2 if state.prereq_backoff else ladder[0], max(ladder)) or 1
        state = replace(state, prereq_backoff=backoff, retry_at=now + backoff, next_poll_at=next_poll)
        return state, [*log, Log(f"retry in {backoff:g}s"), Publish(state)]
    if state.ladder_step < len(config.retry_ladder):
        wait = config.retry_ladder[state.ladder_step]
        state = replace(state, ladder_step=state.ladder_step + 1, retry_at=now + wait, next_poll_at=next_poll)
        return state, [*log, Log(f"retry in {wait}s"), Publish(state)]
    until = now + config.pause_after_escalation
    state = replace(
        state, ladder_step=0, retry_at=0.0, paused_until=until, next_poll_at=max(next_poll, until)
    )
    when = iso(until)
    kind = "rollback" if code == 21 else "fetch" if code == 30 else "deploy"
    retries = len(config.retry_ladder)
    return state, [
        *log,
        Escalate(kind, code),
        Log("escalated"),
        Notify("escalated", f"tick exit={code} ({meaning}) after {retries} retries"),
        Log(f"paused until {when}"),
        Notify("paused", f"no timed tick until {when}; a manual trigger still runs one"),
        Publish(state),
    ]


# --- state file -----------------------------------------------------------------------------------------

_PERSISTED = (
    "next_poll_at", "running", "started_at", "reason", "serial", "pending", "ladder_step", "retry_at",
    "prereq_backoff", "paused_until", "last_exit", "last_tick_at", "last_tunnel_trigger_at",
)  # fmt: skip


def state_document(state: TimerState) -> dict[str, Any]:
    return {key: getattr(state, key) for key in _PERSISTED}


def state_from_document(doc: Mapping[str, Any]) -> TimerState:
    known = {key: doc[key] for key in _PERSISTED if key in doc}
    return replace(TimerState(), **known)


def next_tick_at(state: Mapping[str, Any]) -> float:
    """When the next tick is due, for `status`."""
    due = state.get("retry_at") or state.get("next_poll_at") or 0.0
    return float(max(due, state.get("paused_until") or 0.0))


# --- the edge -------------------------------------------------------------------------------------------


def ls_remote(repository: Path, remote: str, ref: str) -> tuple[str, str]:
    result = subprocess.run(
        ["git", "-C", str(repository), "ls-remote", remote, f"refs/heads/{ref}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not result.stdout.strip():
        return "", (result.stderr.strip().splitlines() or ["no such ref"])[-1]
    return result.stdout.split()[0], ""


def declared_revision(stack: Any) -> tuple[str, str]:
    """A node's check: the revision the server declared in Postgres (its URL from the env files)."""
    from protea_supervisor.hosts.declared import DeclarationUnavailable, current, server_url

    try:
        declaration = current(server_url(stack), stack.host.db_url_env)
    except DeclarationUnavailable as why:
        return "", str(why)
    return (declaration.revision, "") if declaration else ("", "no revision is declared yet")


class Executor:
    def __init__(self, rpc: Rpc, stack: Any, state_path: Path, log: ListenerLog) -> None:
        self.rpc = rpc
        self.stack = stack
        self.state_path = state_path
        self.log = log

    def execute(self, actions: Sequence[Action]) -> None:
        execute_each(actions, self._one, self.log, "deploy-timer")

    def _one(self, action: Action) -> None:
        if isinstance(action, Log):
            self.log(action.message)
        elif isinstance(action, StartTick):
            call_tolerating(self.rpc, "startProcess", TICK, False, harmless="ALREADY_STARTED")
        elif isinstance(action, CheckRemote):
            threading.Thread(target=self._check_remote, daemon=True).start()
        elif isinstance(action, Escalate):
            self._escalate(action)
        elif isinstance(action, Publish):
            write_json(self.state_path, state_document(action.state))
        elif isinstance(action, Notify):
            self._notify(action)

    def _check_remote(self) -> None:
        deploy = self.stack.deploy
        try:
            if self.stack.host.node:
                sha, detail = declared_revision(self.stack)
            else:
                sha, detail = ls_remote(deploy.repository, deploy.remote, deploy.ref)
        except (OSError, subprocess.SubprocessError) as why:
            sha, detail = "", type(why).__name__
        send_event(self.rpc, COMM_TYPE, {"kind": "remote", "sha": sha, "detail": detail})

    def _notify(self, action: Notify) -> None:
        from protea_supervisor.deploy.notify import Event, host_name, now_iso, send_detached

        event = Event(
            action.event, self.stack.name, host_name(), now_iso(), action.summary, trigger="deploy timer"
        )
        send_detached(self.stack, event, self.log)

    def _escalate(self, action: Escalate) -> None:
        command = self.stack.deploy.escalation_command
        if not command:
            self.log("deploy-timer: no escalation_command is configured; nothing to run")
            return
        env = {**os.environ, "FAIL_KIND": action.kind, "FAIL_EXIT": str(action.exit_code)}
        # Not waited for: the escalation must not hold up the event loop.
        subprocess.Popen(
            ["bash", "-c", command], env=env, cwd=str(self.stack.paths.run),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def marker_text(reason: str, trigger_id: str) -> str:
    """What `trigger` writes into the marker file: the reason and the id its event carries too."""
    return json.dumps({"reason": reason, "id": trigger_id}) + "\n"


def consume_marker(run_dir: Path) -> tuple[str, str] | None:
    """The manual trigger's marker file as (reason, id), and the file is gone; None when there is none. A
    marker of plain text (written by hand or by another tool) is all reason, with no id."""
    path = run_dir / MARKER_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        path.unlink()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("reason"), str):
        return doc["reason"][:200].strip(), str(doc.get("id", ""))
    return text[:200].strip(), ""


def manual_trigger_id(event: Event) -> str | None:
    """For a manual trigger's event, the id it carries ('' when it has none, as from another tool); None for
    any other event."""
    if event.name != "REMOTE_COMMUNICATION" or event.fields.get("type") != COMM_TYPE:
        return None
    try:
        message = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if message.get("kind") != "trigger" or message.get("trigger") != "manual":
        return None
    return str(message.get("id", ""))


def trigger_message(reason: str, trigger: str = "manual", trigger_id: str = "") -> str:
    message = {"kind": "trigger", "trigger": trigger, "reason": reason}
    return json.dumps({**message, "id": trigger_id} if trigger_id else message)


def config_from_stack(stack: Any) -> TimerConfig:
    deploy = stack.deploy
    return TimerConfig(
        poll_interval=float(deploy.poll_interval),
        jitter=float(deploy.jitter),
        retry_ladder=tuple(deploy.retry_ladder),
        pause_after_escalation=float(deploy.pause_after_escalation),
        escalation_command=deploy.escalation_command,
        check_interval=float(deploy.check_interval),
        follow=stack.host.node,
    )


def main(argv: Sequence[str] | None = None) -> None:
    stack, log = listener_stack(argv, "deploy timer")
    config = config_from_stack(stack)
    rpc = rpc_factory(os.environ)
    state_path = stack.paths.run / STATE_FILE
    executor = Executor(rpc, stack, state_path, log)
    doc = read_json(state_path)
    info = rpc().supervisor.getProcessInfo(TICK)
    state, actions = resume(
        config,
        state_from_document(doc) if doc else None,
        info["statename"],
        int(info["exitstatus"]) if info["statename"] == "EXITED" else None,
        float(info["stop"]),
        time.time(),
    )
    executor.execute([*actions, Publish(state)])
    log(f"deploy-timer: polling every {config.poll_interval:g} s (+ up to {config.jitter:g} s)")
    holder = {"state": state}

    def feed(event: Event) -> None:
        new, actions = handle(config, holder["state"], event, time.time())
        holder["state"] = new
        executor.execute(actions)

    # Ids of triggers taken from their marker file at a tick: `trigger` writes the marker before it sends the
    # event, so a TICK_5 in between finds the marker first, and the event that follows is the same trigger.
    taken: collections.deque[str] = collections.deque(maxlen=32)

    def on_event(event: Event) -> None:
        if event.name.startswith("TICK_"):
            # A trigger written while supervisord did not answer (or by a tool without XML-RPC).
            marker = consume_marker(stack.paths.run)
            if marker is not None:
                reason, marker_id = marker
                if marker_id:
                    taken.append(marker_id)
                data = trigger_message(reason, trigger_id=marker_id)
                feed(Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=data))
        elif (manual := manual_trigger_id(event)) is not None:
            consume_marker(stack.paths.run)  # `trigger` wrote both: this event is the one to act on
            if manual and manual in taken:
                log(f"deploy-timer: trigger {manual} was already taken from its marker file")
                return
        if event.name == "PROCESS_STATE_EXITED" and event.process == TICK:
            # The exit code is not in the event's payload; supervisord has it.
            status = rpc().supervisor.getProcessInfo(TICK)["exitstatus"]
            event = replace(event, fields={**event.fields, "exitstatus": str(status)})
        feed(event)

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
