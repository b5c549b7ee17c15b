"""What a tick touches: the stack, supervisord, the lock and the callbacks the CLI builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protea_supervisor.locks.stack_owner import LockFile
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.apply import Deadlines
from protea_supervisor.supervisord.control import Supervisor

Report = Callable[[str], None]


@dataclass(frozen=True)
class TickEnv:
    """What the tick touches, built by the CLI."""

    stack: Stack
    supervisor: Supervisor
    lock: LockFile
    environ: Mapping[str, str]  # the process environment merged with the env files
    secrets: Sequence[str]
    # Renders the stack with a revision and writes <run>/supervisord.conf.
    write_config: Callable[[str], None]
    run_gate: Callable[[], object]  # follows the gate until done; raises GateFailed
    # Starts supervisord with the written config (a first deploy).
    start_supervisord: Callable[[], None]
    deadlines: Deadlines
    report: Report
    trigger: str = "by hand"  # who or what asked for the tick, for the release history
