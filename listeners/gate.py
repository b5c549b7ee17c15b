"""The readiness gate listener's edge: the executor (XML-RPC with wait=False, probes in threads, the state
file) and `main`, which wires the pure handler (`gate_handler.py`) to the protocol loop. Probe results come
back as REMOTE_COMMUNICATION events that the prober sends through supervisord, so every input reaches the
handler through the same loop and the listener acknowledges each event at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from protea_supervisor.hosts.guard import read_refusals
from protea_supervisor.stackfile.files import write_json
from protea_supervisor.stackfile.host import REFUSALS, REFUSED_EXIT
from protea_supervisor.stackfile.overrides import with_overrides
from protea_supervisor.supervisord.gate_contract import read_state
from protea_supervisor.supervisord.probes import parse_infra, wait_http, wait_ports

from .actions import Log
from .edge import (
    ListenerLog,
    Rpc,
    call_tolerating,
    execute_each,
    listener_stack,
    rpc_factory,
    send_event,
)
from .gate_handler import (
    COMM_TYPE,
    OWN_REFUSAL,
    STATE_FILE,
    Action,
    GatePlan,
    GateState,
    Probe,
    Proc,
    Publish,
    Start,
    handle,
    refresh,
    resume,
    snapshot,
    state_document,
    state_from_document,
    with_live,
)
from .protocol import Event, run

__all__ = ["main"]


# --- the edge: executor and main ------------------------------------------------------------------------


class Executor:
    """Turns actions into XML-RPC calls, probe threads and the state file."""

    def __init__(
        self, rpc: Rpc, plan: GatePlan, run_dir: Path, logs_dir: Path, supervisord_pid: int, log: ListenerLog
    ) -> None:
        self.rpc = rpc
        self.plan = plan
        self.run_dir = run_dir
        self.logs_dir = logs_dir
        self.supervisord_pid = supervisord_pid
        self.log = log

    def execute(self, actions: Sequence[Action]) -> None:
        execute_each(actions, self._one, self.log, "gate")

    def _one(self, action: Action) -> None:
        if isinstance(action, Log):
            self.log(action.message)
        elif isinstance(action, Start):
            self.log(f"gate: starting {action.namespec}")
            call_tolerating(self.rpc, "startProcess", action.namespec, False, harmless="ALREADY_STARTED")
        elif isinstance(action, Probe):
            threading.Thread(target=self._probe, args=(action,), daemon=True).start()
        elif isinstance(action, Publish):
            self.publish(action.state)

    def publish(self, state: GateState) -> None:
        tail: list[str] = []
        if state.phase == "failed" and state.failed_process:
            log = self.logs_dir / f"{state.failed_process.split(':', 1)[1]}.log"
            try:
                tail = [self.log.redact(line) for line in log.read_text(errors="replace").splitlines()[-8:]]
            except OSError:
                tail = []
        doc = state_document(state, self.supervisord_pid, tail)
        if state.phase == "failed" and state.failed_process:
            doc["reason"] += self._exit_detail(state.failed_process)
        write_json(self.run_dir / STATE_FILE, doc)

    def _exit_detail(self, namespec: str) -> str:
        """The exit status or spawn error, which the EXITED event does not carry."""
        try:
            info = self.rpc().supervisor.getProcessInfo(namespec)
        except Exception:
            return ""
        if info.get("statename") == "EXITED":
            return f" (exit status {info.get('exitstatus')})"
        return f" ({info['spawnerr']})" if info.get("spawnerr") else ""

    def _probe(self, probe: Probe) -> None:
        try:
            if probe.kind == "infra":
                self.log("gate: waiting for " + ", ".join(f"{t.host}:{t.port}" for t in self.plan.infra))
                closed = wait_ports(self.plan.infra, self.plan.infra_timeout)
                ok, detail = not closed, ", ".join(closed)
            else:
                url = self.plan.api_url if probe.kind == "api" else self.plan.web_url
                timeout = self.plan.api_timeout if probe.kind == "api" else self.plan.web_timeout
                self.log(f"gate: waiting for {url}")
                problem = wait_http(url, timeout)
                ok, detail = not problem, problem
        except Exception as why:
            ok, detail = False, f"{type(why).__name__}"
        message = {
            "kind": "probe",
            "probe": probe.kind,
            "ok": ok,
            "detail": detail,
            "generation": probe.generation,
        }
        send_event(self.rpc, COMM_TYPE, message)


def live_processes(rpc: Rpc, run_dir: Path) -> dict[str, Proc]:
    """supervisord's processes, less those a scale-down removed that are still finishing their job: they are
    no longer in the config, and must be neither waited for nor started. Each carries the reason a check
    refused its last start, if one did."""
    proxy = rpc()
    infos = proxy.supervisor.getAllProcessInfo()
    leaving = {name for names in proxy.protea.getDraining().values() for name in names}
    return snapshot((i for i in infos if i["name"] not in leaving), read_refusals(run_dir / REFUSALS))


def with_refusal(event: Event, run_dir: Path, rpc: Rpc) -> Event:
    """A process that stopped carries the reason a check refused its start (the wrapper wrote it before it
    exited 78), or says it exited 78 on its own (the event carries no exit status: supervisord is asked), so
    the handler takes the refusal as final."""
    if not event.name.startswith("PROCESS_STATE_") or event.state not in ("EXITED", "BACKOFF", "FATAL"):
        return event
    reason = read_refusals(run_dir / REFUSALS).get(event.process, "")
    if not reason and event.state == "EXITED" and event.fields.get("expected") != "1":
        with contextlib.suppress(Exception):  # gone since (a scale-down): nothing to take as final
            if rpc().supervisor.getProcessInfo(event.process)["exitstatus"] == REFUSED_EXIT:
                reason = OWN_REFUSAL
    return replace(event, fields={**event.fields, "refused": reason}) if reason else event


def plan_from_stack(stack: Any, environ: Mapping[str, str]) -> tuple[GatePlan, list[str]]:
    enabled = {p.role for p in stack.programs if p.enabled}
    infra, problems = parse_infra(stack.probes.infra_from_env, environ)
    plan = GatePlan(
        infra=tuple(infra),
        infra_timeout=float(stack.probes.infra_timeout),
        migrate="migrate" if "migrate" in enabled else None,
        api="api" if "api" in enabled else None,
        api_url=stack.probes.api_ready_url,
        api_timeout=float(stack.probes.api_ready_timeout),
        workers=tuple(q.program for q in stack.queues if q.processes),
        web="web" if "web" in enabled else None,
        web_url=stack.probes.web_url,
        web_timeout=float(stack.probes.web_timeout),
        tunnel="tunnel" if "tunnel" in enabled else None,
        start_timeout=float(stack.probes.start_timeout),
    )
    return plan, problems


def main(argv: Sequence[str] | None = None) -> None:
    stack, log = listener_stack(argv, "readiness gate")
    stack = with_overrides(stack)
    plan, problems = plan_from_stack(stack, os.environ)
    rpc = rpc_factory(os.environ)
    pid = int(rpc().supervisor.getPID())
    executor = Executor(rpc, plan, stack.paths.run, stack.paths.logs, pid, log)
    for problem in problems:
        log(f"gate: {problem}")

    doc = read_state(stack.paths.run)
    saved = state_from_document(doc) if doc else None
    same = doc is not None and doc.get("supervisord_pid") == pid
    state, actions = resume(plan, saved, live_processes(rpc, stack.paths.run), time.time(), same)
    # Said at once, whatever it decided: a tick that starts right after a boot waits until the state file is
    # this supervisord's (rollout.wait_gate_idle).
    executor.execute([*actions, *([] if any(isinstance(a, Publish) for a in actions) else [Publish(state)])])
    holder = {"state": state}
    plans = {"plan": plan}

    def live() -> dict[str, Proc]:
        return live_processes(rpc, stack.paths.run)

    def on_event(event: Event) -> None:
        now = time.time()
        if event.name.startswith("TICK_"):
            # While a run waits, look at supervisord's live process list every 5 s: the step's deadline is
            # checked, and processes a scale-down dropped (which send no event) stop being waited for.
            if holder["state"].phase != "running":
                return
            new_state, actions = refresh(plans["plan"], holder["state"], live(), now)
        else:
            ours = event.name == "REMOTE_COMMUNICATION" and event.fields.get("type") == COMM_TYPE
            if ours and holder["state"].phase != "running":
                # A new run starts from what supervisord has now, not from what the events built up: its
                # processes, and its worker groups (a queue `scale` added or removed since this started).
                procs = live()
                holder["state"] = with_live(holder["state"], procs)
                plans["plan"] = plans["plan"].with_live_workers(procs)
            new_state, actions = handle(
                plans["plan"], holder["state"], with_refusal(event, stack.paths.run, rpc), now
            )
        holder["state"] = new_state
        executor.execute(actions)

    run(on_event, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


if __name__ == "__main__":
    main()
