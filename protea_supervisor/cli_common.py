"""What every CLI command shares: the stack as the command line chose it, rendering, the gate, grace."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from protea_supervisor.apply import Deadlines
from protea_supervisor.control import Supervisor
from protea_supervisor.env import redact, secret_values
from protea_supervisor.errors import (
    LockContention,
    StackError,
    StackFailed,
)
from protea_supervisor.files import load_stack
from protea_supervisor.listeners.gate import COMM_TYPE, start_request
from protea_supervisor.listeners.gate import read_state as read_gate_state
from protea_supervisor.lock import (
    LockFile,
    export_holder,
    resolve_path,
)
from protea_supervisor.overrides import (
    with_overrides,
)
from protea_supervisor.render import check_config, render
from protea_supervisor.stack import HostFacts, Stack
from protea_supervisor.tick import read_record

POLL = 0.2


@dataclass
class Settings:
    stack_choice: str | None


def exe_argv() -> list[str]:
    """How rendered programs call back into protea-supervisor: the console script beside this Python."""
    script = Path(sys.executable).parent / "protea-supervisor"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-m", "protea_supervisor"]


def host_facts() -> HostFacts:
    return HostFacts(home=Path.home(), python=sys.executable)


def load(ctx: click.Context, overrides: bool = True) -> Stack:
    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    stack = load_stack(settings.stack_choice, host_facts())
    return with_overrides(stack) if overrides else stack


def prepare_dirs(stack: Stack, need_root: bool = True) -> None:
    if need_root and not stack.paths.root.is_dir():
        if not stack.paths.create_root:
            raise StackError(
                f"{stack.sources[-1]}: paths.root {stack.paths.root} does not exist "
                "(create the deploy worktree first, or set paths.create_root = true)."
            )
        stack.paths.root.mkdir(parents=True, exist_ok=True)
    stack.paths.logs.mkdir(parents=True, exist_ok=True)
    stack.paths.run.mkdir(parents=True, exist_ok=True, mode=0o700)


def rendered(stack: Stack, revision: str | None = None) -> str:
    """The checked config text; the deployed revision (from the tick's record) unless one is given."""
    if revision is None:
        revision = read_record(stack).revision
    text = render(stack, exe_argv(), revision)
    check_config(text)
    return text


def _stack_flag(ctx: click.Context) -> str:
    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    return f" --stack {shlex.quote(settings.stack_choice)}" if settings.stack_choice else ""


def run_gate(stack: Stack, supervisor: Supervisor, retry: bool = False) -> None:
    """Ask the gate listener to run and follow its state file until it is done or has failed."""
    request, payload = start_request(retry)
    supervisor.send_comm(COMM_TYPE, payload)
    began = time.monotonic()
    deadline = stack.probes.infra_timeout + stack.probes.api_ready_timeout + stack.probes.web_timeout + 300
    shown: set[str] = set()
    current = ""
    while True:
        doc = read_gate_state(stack.paths.run) or {}
        mine = request in doc.get("requests", [])
        for step in doc.get("steps", []) if mine else []:
            if step["finished_at"] and step["step"] not in shown:
                shown.add(step["step"])
                click.echo(f"  {step['step']:<8} ready in {step['finished_at'] - step['started_at']:.1f} s")
        if mine and doc.get("step") != current and doc.get("phase") == "running":
            current = doc["step"]
            click.echo(f"  {current:<8} ...")
        if mine and doc.get("phase") == "done":
            return
        if mine and doc.get("phase") == "failed":
            tail = "".join(f"\n    {line}" for line in doc.get("log_tail", []))
            where = (
                f" Last lines of {stack.paths.logs}/{doc['failed_process'].split(':', 1)[-1]}.log:"
                if tail
                else ""
            )
            message = f"gate failed at {doc.get('step')}: {doc.get('reason')}; nothing after it was started."
            raise StackFailed(redact(message + where + tail, secret_values(stack.env.files)))
        gate = [i for i in supervisor.all_process_info() if i["group"] == "gate"]
        # EXITED is transient: autorestart brings the listener back and it resumes. FATAL and STOPPED are not.
        if gate and gate[0]["statename"] in ("FATAL", "STOPPED"):
            raise StackFailed(
                f"the gate listener is {gate[0]['statename']}; see {stack.paths.logs}/gate.log."
            )
        if time.monotonic() - began > deadline:
            raise StackFailed(f"the gate did not finish within {deadline:g} s (step {doc.get('step', '?')}).")
        time.sleep(POLL)


def stop_deadline(stack: Stack) -> Deadlines:
    return Deadlines(
        stop=max([q.stop_grace for q in stack.queues] + [p.stop_grace for p in stack.programs]) + 30
    )


def refuse_during_export(stack: Stack, what: str, force: bool) -> None:
    lock = LockFile(resolve_path(None, dict(os.environ), stack.lock.file), stack.lock.flock_timeout)
    holder = export_holder(lock)
    if holder and not force:
        raise LockContention(
            f"refusing to {what}: export task {holder.task_id} holds the stack-owner lock since "
            f"{holder.acquired_at} ({holder.reason}); use --force to interrupt it."
        )
