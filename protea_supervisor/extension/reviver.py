"""The extension's restart delay for workers (workers.restart_delay): a compute node's systemd units
restarted a worker 30 s after any exit, for ever (Restart=always, RestartSec=30, no start limit), so that
a node cut off from the server for hours keeps trying without spinning. supervisord has no such delay: it
restarts an exit at once, and a start that keeps failing goes FATAL and stays there.

With a delay, the rendered workers have `autorestart=false`, and at each TICK_5 this starts again every
worker of the listed groups that has been EXITED or FATAL for the delay, unless a check refused its last
start (exit 78, its reason in the refusals directory; an EXITED 78 likewise): a refused start is final.
A worker the operator stopped is STOPPED and is left alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from protea_supervisor.extension.groupsync import state_name
from protea_supervisor.stackfile.host import REFUSED_EXIT


class Reviver:
    def __init__(self, supervisord: Any, groups: str, delay: str, refusals: str) -> None:
        from supervisor import events

        self.supervisord = supervisord
        self.groups = set(groups.split())
        self.delay = float(delay or 0)
        self.refusals = Path(refusals) if refusals else None
        if self.groups and self.delay > 0:
            events.subscribe(events.Tick5Event, self._on_tick)

    def refused(self, group: str, process: Any) -> bool:
        if state_name(process) == "EXITED" and process.exitstatus == REFUSED_EXIT:
            return True
        return bool(self.refusals and (self.refusals / f"{group}:{process.config.name}").exists())

    def due(self, now: float) -> list[tuple[str, Any]]:
        found = []
        for name in sorted(self.groups):
            group = self.supervisord.process_groups.get(name)
            for process in group.processes.values() if group else ():
                if state_name(process) not in ("EXITED", "FATAL") or self.refused(name, process):
                    continue
                if now - float(process.laststop or 0) >= self.delay:
                    found.append((name, process))
        return found

    def _on_tick(self, _event: Any) -> None:
        for group, process in self.due(time.time()):
            was = state_name(process)
            process.backoff = 0  # a fresh round of supervisord's startretries
            process.spawn()
            self.supervisord.options.logger.info(
                f"protea: started {group}:{process.config.name} again, {self.delay:g} s after it went {was} "
                "(workers.restart_delay)"
            )
