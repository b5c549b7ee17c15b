"""The extension's start-first replacement of a process on a socket supervisord holds (`protea.beginSwitch`,
`protea.finishSwitch`, `protea.abortSwitch`, `protea.getSwitches`): how a deploy replaces the API instead of
restarting it.

An `[fcgi-program]` group holds one listening socket, reference-counted by its running processes
(supervisor/socket_manager.py): it stays open while any of them runs. A switch grows the group by one:

- begin: re-read the config file; the group's socket must be unchanged. A successor, `<name>-next`, is built
  from the re-read config (the new revision's) and spawned beside the serving process; both accept on the one
  socket. The caller proves the successor ready on its own (an answer carrying its pid).
- finish: the serving process gets its stop signal and drains (it stops accepting; the successor takes the
  queue); once it is down it is dropped, the successor takes its name and the group takes the re-read
  config, so a later `reread` sees no difference.
- abort: the successor is stopped and dropped; the group's config is untouched and the serving process never
  stopped.

A group that cannot be switched (not an fcgi-program, its socket or its process list changed, nothing
serving) is not refused with a fault: `beginSwitch` says why, and the caller restarts instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from protea_supervisor.extension.groupsync import DOWN, LIVE, fault, state_name

SUFFIX = "-next"


@dataclass
class Switch:
    group: str
    serving: str  # the process name, kept by the successor once it is promoted
    successor: Any  # the Subprocess
    config: Any  # the re-read group config, put in place on promotion
    pconfig: Any  # the re-read process config (named `serving`), the successor's once promoted
    phase: str = "warming"  # warming | finishing | aborting


class Switcher:
    def __init__(self, supervisord: Any, reread: Any) -> None:
        from supervisor import events

        self.supervisord = supervisord
        self.reread = reread  # () -> (group configs by name, worker groups): GroupSyncer._reread
        self.switches: dict[str, Switch] = {}
        events.subscribe(events.ProcessStateEvent, self._on_state)
        events.subscribe(events.Tick5Event, self._on_tick)

    def _log(self, text: str) -> None:
        self.supervisord.options.logger.info(f"protea: {text}")

    # --- begin -------------------------------------------------------------------------------------------
    def why_not(self, name: str) -> tuple[str, Any, Any]:
        """('', group, re-read config) when `name` can be switched; else the reason it cannot."""
        group = self.supervisord.process_groups.get(name)
        if group is None:
            return f"{name}: no such group is running", None, None
        if not hasattr(group, "socket_manager"):
            return f"{name}: not on a socket supervisord holds (an fcgi-program)", group, None
        wanted, _workers = self.reread()
        config = wanted.get(name)
        if config is None:
            return f"{name}: no longer in the config file", group, None
        if getattr(config, "socket_config", None) != group.config.socket_config:
            return f"{name}: its socket changed ({config.socket_config})", group, None
        if len(config.process_configs) != 1 or len(group.config.process_configs) != 1:
            return f"{name}: a switch replaces a group of one process", group, None
        serving = group.config.process_configs[0].name
        if config.process_configs[0].name != serving or serving not in group.processes:
            return f"{name}: its process was renamed", group, None
        if state_name(group.processes[serving]) != "RUNNING":
            return f"{name}: {serving} is {state_name(group.processes[serving])}, not serving", group, None
        return "", group, config

    def begin(self, name: str) -> dict[str, Any]:
        if name in self.switches:
            switch = self.switches[name]
            raise fault(
                "STILL_RUNNING",
                f"{name}: a switch is already under way ({switch.successor.config.name} {switch.phase})",
            )
        why, group, config = self.why_not(name)
        if why:
            return {"switching": False, "why": why}
        pconfig = config.process_configs[0]
        serving = pconfig.name
        successor_config = copy.copy(pconfig)
        successor_config.name = serving + SUFFIX
        successor_config.create_autochildlogs()
        pconfig.create_autochildlogs()
        successor = successor_config.make_process(group)
        group.processes = {**group.processes, successor_config.name: successor}
        self.switches[name] = Switch(name, serving, successor, config, pconfig)
        pid = successor.spawn()
        if not pid:
            self._drop(self.switches.pop(name), successor)
            raise fault("SPAWN_ERROR", f"{name}: the successor could not be spawned; see supervisord's log")
        self._log(f"switching {name}: {successor_config.name} (pid {pid}) started beside {serving}")
        return {"switching": True, "why": "", "successor": successor_config.name, "pid": pid}

    # --- finish and abort ---------------------------------------------------------------------------------
    def finish(self, name: str) -> dict[str, Any]:
        switch = self._switch(name, "finish")
        state = state_name(switch.successor)
        if state != "RUNNING":
            raise fault("NOT_RUNNING", f"{name}: the successor is {state}; abort the switch")
        group = self.supervisord.process_groups[name]
        old = group.processes.get(switch.serving)
        switch.phase = "finishing"
        if old is not None and state_name(old) in LIVE:
            old.stop()
        self._log(f"switching {name}: {switch.serving} stopping, {switch.successor.config.name} serves")
        self._settle(switch)
        return {"successor_pid": switch.successor.pid, "phase": self._phase(name)}

    def abort(self, name: str) -> dict[str, Any]:
        switch = self._switch(name, "abort")
        switch.phase = "aborting"
        if state_name(switch.successor) in LIVE:
            switch.successor.stop()
        self._log(f"switching {name}: aborted; stopping {switch.successor.config.name}")
        self._settle(switch)
        return {"phase": self._phase(name)}

    def _switch(self, name: str, what: str) -> Switch:
        switch = self.switches.get(name)
        if switch is None:
            raise fault("BAD_NAME", f"{name}: no switch under way to {what}")
        if switch.phase != "warming":
            raise fault("STILL_RUNNING", f"{name}: the switch is already {switch.phase}")
        return switch

    def _phase(self, name: str) -> str:
        switch = self.switches.get(name)
        return switch.phase if switch else "done"

    def state(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"successor": s.successor.config.name, "pid": s.successor.pid, "phase": s.phase}
            for name, s in self.switches.items()
        }

    # --- settling once the leaving process is down ---------------------------------------------------------
    def _settle(self, switch: Switch) -> None:
        group = self.supervisord.process_groups.get(switch.group)
        if group is None:  # removed by a reload meanwhile
            self.switches.pop(switch.group, None)
            return
        if switch.phase == "finishing":
            old = group.processes.get(switch.serving)
            if old is not None and state_name(old) not in DOWN:
                return
            self._drop(switch, old)
            # The successor takes the serving name and the re-read config, and the group the re-read config.
            processes = {n: p for n, p in group.processes.items() if p is not switch.successor}
            switch.successor.config = switch.pconfig
            group.processes = {**processes, switch.serving: switch.successor}
            group.config = switch.config
            self.switches.pop(switch.group, None)
            self._log(f"switched {switch.group}: pid {switch.successor.pid} is {switch.serving}")
            # Listeners last heard `<serving>` STOPPED (the old process) and `<serving>-next` RUNNING: one
            # more event says the name runs again, with the successor's pid (the metrics listener drops
            # the `-next` entry that held that pid).
            from supervisor import events
            from supervisor.states import ProcessStates

            events.notify(events.ProcessStateRunningEvent(switch.successor, ProcessStates.RUNNING))
        elif switch.phase == "aborting":
            if state_name(switch.successor) not in DOWN:
                return
            self._drop(switch, switch.successor)
            self.switches.pop(switch.group, None)
            self._log(f"switch of {switch.group} aborted: the successor is gone")

    def _drop(self, switch: Switch, process: Any) -> None:
        group = self.supervisord.process_groups.get(switch.group)
        if process is None or group is None:
            return
        for dispatcher in process.dispatchers.values():
            if not dispatcher.closed:
                dispatcher.close()
        group.processes = {n: p for n, p in group.processes.items() if p is not process}

    def _on_state(self, event: Any) -> None:
        process: Any = getattr(event, "process", None)
        group = getattr(process, "group", None)
        switch = self.switches.get(getattr(getattr(group, "config", None), "name", ""))
        if switch is not None and switch.phase != "warming":
            self._settle(switch)

    def _on_tick(self, _event: Any) -> None:
        for switch in list(self.switches.values()):
            if switch.phase != "warming":
                self._settle(switch)
