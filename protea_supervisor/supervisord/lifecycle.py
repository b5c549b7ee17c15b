"""Starting and stopping the whole stack: following the gate, `down`'s parallel drain, orphan recovery.

The edge the CLI, the tick and restore share. It never prints: every line goes to `report`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protea_supervisor.errors import GateFailed, StackFailed, StopTimeout, SupervisorDown
from protea_supervisor.progress import Ticker, names
from protea_supervisor.stackfile.env import redact, secret_values
from protea_supervisor.stackfile.stack import LISTENERS, Stack
from protea_supervisor.supervisord import orphans
from protea_supervisor.supervisord.apply import START_DEADLINE, wait_started, wait_until_gone_or_down
from protea_supervisor.supervisord.control import (
    RUNNING_STATES,
    Supervisor,
    daemon_pids,
    start_daemon,
    wait_gone,
)
from protea_supervisor.supervisord.gate_contract import CHAIN, COMM_TYPE, STEPS, start_request
from protea_supervisor.supervisord.gate_contract import read_state as read_gate_state

Report = Callable[[str], None]
POLL = 0.2
RESEND_AFTER = 10.0
# How long a command waits for a supervisord of this stack that runs but does not answer (starting, busy).
DAEMON_WAIT = 60.0
STEP_ORDER = {name: i for i, name in enumerate(STEPS)}  # steps finished at the same moment show in order


def gate_deadline(stack: Stack) -> float:
    """A bound on a whole gate run (each of its steps has its own, shorter one)."""
    probes = stack.probes
    return (
        probes.infra_timeout + probes.api_ready_timeout + probes.web_timeout + 2 * probes.start_timeout + 120
    )


def start_listeners(supervisor: Supervisor, report: Report) -> None:
    """Start the listeners an interrupted `down` (or `supervisorctl stop`) left stopped: without the gate
    nothing can start the stack."""
    infos = supervisor.all_process_info()
    stopped = [i["name"] for i in infos if i["group"] in LISTENERS and i["statename"] not in RUNNING_STATES]
    if not stopped:
        return
    report(f"starting the stopped listener(s): {names(stopped)}")
    for name in stopped:
        supervisor.start(f"{name}:{name}")
    for name in stopped:
        wait_started(supervisor, name, START_DEADLINE, report=report)


def run_gate(stack: Stack, supervisor: Supervisor, report: Report, retry: bool = False) -> dict[str, Any]:
    """Ask the gate listener to run and follow its state file until it is done (its final state is
    returned) or has failed (GateFailed)."""
    start_listeners(supervisor, report)
    request, payload = start_request(retry)
    supervisor.send_comm(COMM_TYPE, payload)
    began = sent = time.monotonic()
    deadline = gate_deadline(stack)
    shown: set[str] = set()
    ticker = Ticker(report)
    while True:
        doc = read_gate_state(stack.paths.run) or {}
        mine = request in doc.get("requests", [])
        finished = sorted(
            (s for s in doc.get("steps", []) if s["finished_at"]),
            key=lambda s: (s["finished_at"], STEP_ORDER.get(s["step"], len(STEP_ORDER))),
        )
        for step in finished if mine else []:
            if step["finished_at"] and step["step"] not in shown:
                shown.add(step["step"])
                report(f"  {step['step']:<8} ready in {step['finished_at'] - step['started_at']:.1f} s")
        if mine and doc.get("phase") == "done":
            return doc
        if mine and doc.get("phase") in ("failed", "cancelled"):
            raise _gate_failure(stack, doc)
        if mine and doc.get("phase") == "running":
            ticker.say(f"  {doc.get('step', ''):<8} ...")
        elif not mine:
            ticker.say("  waiting for the gate listener to take the request")
            if time.monotonic() - sent > RESEND_AFTER:
                # Not taken yet: the listener may have died with it in hand. The same request is idempotent.
                supervisor.send_comm(COMM_TYPE, payload)
                sent = time.monotonic()
        gate = [i for i in supervisor.all_process_info() if i["group"] == "gate"]
        # EXITED is transient: autorestart brings the listener back and it resumes. FATAL and STOPPED are not.
        if gate and gate[0]["statename"] in ("FATAL", "STOPPED"):
            raise GateFailed(
                f"the gate listener is {gate[0]['statename']}; see {stack.paths.logs}/gate.log.", "gate"
            )
        if time.monotonic() - began > deadline:
            raise GateFailed(
                f"the gate did not finish within {deadline:g} s (step {doc.get('step', '?')}).", "gate"
            )
        time.sleep(POLL)


def chain_times(doc: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """From a finished gate run: (seconds until the last step the public needs was ready, seconds until
    the whole run was done, the run's start as wall time). None when the run recorded no steps."""
    steps = {str(s["step"]): (float(s["started_at"]), float(s["finished_at"])) for s in doc.get("steps", [])}
    if not steps:
        return None
    began = min(started for started, _ in steps.values())
    public = [finished for step, (_, finished) in steps.items() if step in CHAIN and finished]
    done = float(doc.get("finished_at") or max(finished for _, finished in steps.values()))
    return (max(public) - began if public else 0.0), done - began, began


def own_start_time() -> float:
    """When this process started, as wall time (from /proc; now when unreadable)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def chain_summary(doc: Mapping[str, Any], started_at: float, now: float) -> str:
    """`up`'s last line about time: the chain the public needs, the workers, and everything else."""
    times = chain_times(doc)
    if times is None:
        return ""
    chain, run, began = times
    line = f"the public chain ({', '.join(CHAIN)}) took {chain:.1f} s, the whole gate {run:.1f} s"
    if began < started_at:
        # A run already under way (an interrupted `up`, the gate at supervisord's boot): this command's own
        # overhead is not in it, and no figure for it would be true.
        return f"{line}; this command joined a gate run that began {started_at - began:.1f} s before it"
    overhead = max(0.0, (now - started_at) - run)
    return f"{line}; overhead {overhead:.1f} s (supervisord, the listeners and this command)"


def _gate_failure(stack: Stack, doc: dict[str, Any]) -> GateFailed:
    if doc.get("phase") == "cancelled":
        return GateFailed(f"the gate was cancelled at {doc.get('step')}: {doc.get('reason')}.", "gate")
    tail = "".join(f"\n    {line}" for line in doc.get("log_tail") or [])
    failed = str(doc.get("failed_process", ""))
    where = f" Last lines of {stack.paths.logs}/{failed.split(':', 1)[-1]}.log:" if tail else ""
    message = f"gate failed at {doc.get('step')}: {doc.get('reason')}; nothing after it was started."
    return GateFailed(redact(message + where + tail, secret_values(stack.env.files)), str(doc.get("step")))


def cancel_gate(supervisor: Supervisor, reason: str) -> None:
    """Tell a running gate to start nothing more (`down` is stopping the stack)."""
    supervisor.send_comm(COMM_TYPE, json.dumps({"command": "cancel", "reason": reason}))


def app_groups(stack: Stack) -> set[str]:
    """The stack's own programs (listeners excluded): what `restore` stops and the gate starts again."""
    return {p.role for p in stack.programs if p.enabled} | {q.program for q in stack.queues if q.processes}


def wait_stopped(supervisor: Supervisor, groups: set[str] | None, grace: float, report: Report) -> None:
    """Until no process of `groups` (all when None) is up or stopping; StopTimeout after `grace`."""
    processes = [i["name"] for i in supervisor.all_process_info() if groups is None or i["group"] in groups]
    wait_until_gone_or_down(supervisor, None, processes, grace, report)


def stop_programs(stack: Stack, supervisor: Supervisor, grace: float, report: Report) -> None:
    """Stop the stack's own programs at once (workers drain in parallel); the listeners keep running, so
    the gate can start the stack again."""
    cancel_gate(supervisor, "the stack is being stopped")
    groups = app_groups(stack)
    for group in sorted(groups):
        try:
            supervisor.stop_group(group)
        except StackFailed as why:
            if "BAD_NAME" not in str(why):
                raise
    wait_stopped(supervisor, groups, grace, report)


def shut_down(supervisor: Supervisor, grace: float, report: Report) -> None:
    """`down`: every process at once, then supervisord itself."""
    pid = supervisor.pid()
    began = time.monotonic()
    cancel_gate(supervisor, "`down`")
    supervisor.stop_all()
    wait_stopped(supervisor, None, grace, report)
    report(f"  all programs stopped in {time.monotonic() - began:.1f} s; shutting down supervisord")
    supervisor.shutdown()
    if not wait_gone(pid, 30):
        raise StopTimeout(f"supervisord (pid {pid}) did not exit within 30 s.")


def supervisord_pid(supervisor: Supervisor, config: Path | None = None) -> int | None:
    """The live supervisord's pid: from its answer, else (with `config`) from the process table, so the
    programs of a supervisord that is slow to answer are never taken for orphans."""
    try:
        if supervisor.is_running():
            return supervisor.pid()
    except SupervisorDown:
        pass
    found = daemon_pids(config) if config is not None else []
    return found[0] if found else None


def await_daemon(stack: Stack, supervisor: Supervisor, report: Report, deadline: float = DAEMON_WAIT) -> bool:
    """supervisord did not answer. If one still runs for this stack (starting, busy, shutting down), wait
    until it answers (True) or is gone (False); one that does neither within `deadline` is refused
    (SupervisorDown), so that no command starts a second supervisord for one run dir or takes its programs
    for orphans. With none running: False at once."""
    end = time.monotonic() + deadline
    ticker = Ticker(report)
    while daemon_pids(stack.config_path):
        if supervisor.is_running():
            return True
        if time.monotonic() > end:
            pids = ", ".join(map(str, daemon_pids(stack.config_path)))
            raise SupervisorDown(
                f"supervisord (pid {pids}) runs for this stack but has not answered on {stack.socket_path} "
                f"for {deadline:g} s; not starting a second one: wait for it, or stop it and run the command "
                "again."
            )
        ticker.say(f"  supervisord runs but does not answer on {stack.socket_path} yet; waiting")
        time.sleep(0.2)
    return False


def recover_orphans(stack: Stack, supervisor: Supervisor, report: Report) -> int:
    """Stop this stack's programs left running by a supervisord that died, each with its stop signal and
    grace (so workers finish their jobs), before the stack starts again. Returns how many groups."""
    found = orphans.find(stack.socket_path, supervisord_pid(supervisor, stack.config_path))
    if not found:
        return 0
    report(
        f"found {len(found)} orphaned process group(s) of this stack from a supervisord that died: "
        f"{orphans.describe(found)}; stopping them gracefully first"
    )
    killed = orphans.stop(found, lambda o: stop_rules(stack, o), report)
    if killed:
        report(f"  killed after their grace: {orphans.describe(killed)}")
    report("  orphans stopped")
    return len(found)


def stop_rules(stack: Stack, orphan: orphans.Orphan) -> tuple[str, float]:
    """The orphan's program's stop signal and grace, as supervisord would have used them."""
    for program in stack.programs:
        if program.role == orphan.group:
            return program.stop_signal, float(program.stop_grace)
    for queue in stack.queues:
        if queue.program == orphan.group:
            return stack.workers.stop_signal, float(queue.stop_grace)
    return "TERM", 10.0  # a listener or the tick


def start_supervisord(stack: Stack, supervisor: Supervisor, report: Report) -> None:
    recover_orphans(stack, supervisor, report)
    report(f"starting supervisord ({stack.config_path})")
    start_daemon(stack.config_path, supervisor, waiting=Ticker(report).say)
