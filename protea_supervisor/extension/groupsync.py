"""The extension's in-place reconciliation of one worker group with the config file (`protea.syncGroup`,
`protea.planReload`, `protea.getDraining`), and the few supervisor internals the extension's parts share.
Runs inside supervisord; imports supervisor lazily so the module loads without it."""

from __future__ import annotations

import os
from typing import Any

from protea_supervisor.supervisord.reconcile import GroupDiff, diff_group

# Process states by name; supervisor's ProcessStates values, spelled out so this module imports without it.
LIVE = ("STARTING", "RUNNING", "BACKOFF")
DOWN = ("STOPPED", "EXITED", "FATAL")


def state_name(process: Any) -> str:
    from supervisor.states import getProcessStateDescription

    return str(getProcessStateDescription(process.get_state()))


def fault(code_name: str, text: str) -> Exception:
    from supervisor.xmlrpc import Faults, RPCError

    error: Exception = RPCError(getattr(Faults, code_name), text)
    return error


class GroupSyncer:
    """Reconciles one program group with the config file in place (supervisor-facts Q1).

    Processes that stay keep running and keep their config objects; new ones are added (and started when
    the group runs); removed ones get their stop signal and grace and are dropped once stopped, so a later
    `reread` sees no difference for the group.
    """

    def __init__(self, supervisord: Any) -> None:
        from supervisor import events

        self.supervisord = supervisord
        self.draining: dict[str, set[str]] = {}
        events.subscribe(events.ProcessStateEvent, self._on_state)
        events.subscribe(events.Tick5Event, self._on_tick)

    # --- re-reading --------------------------------------------------------------------------------------
    def reread(self, path: str = "") -> tuple[dict[str, Any], set[str]]:
        """The group configs and worker groups of the config file: re-read in place (as `reread` does), or
        parsed from another file without touching supervisord's state (a dry run)."""
        from supervisor.options import ServerOptions

        options = self.supervisord.options
        try:
            if path:
                options = ServerOptions()
                options.here = os.path.dirname(os.path.abspath(path))
                options.read_config(path)
            else:
                options.process_config(do_usage=False)
        except ValueError as why:
            raise fault("CANT_REREAD", str(why)) from None
        section = options.configroot.supervisord
        workers: set[str] = set()
        # Read again with the file, so a queue added since supervisord started counts.
        for name, _factory, settings in section.rpcinterface_factories:
            if name == "protea":
                workers = set(str(settings.get("worker_groups", "")).split())
        return {config.name: config for config in section.process_group_configs}, workers

    def _diff(self, group: Any, config: Any) -> GroupDiff:
        """A process still draining after a scale-down is on its way out: it is not a member the config can
        keep, so asking for it again shows as `added` (and is refused until it is gone)."""
        leaving = self.draining.get(group.config.name, set())
        running = {p.config.name: p.config for p in group.processes.values() if p.config.name not in leaving}
        return diff_group(running, [(pc.name, pc) for pc in config.process_configs])

    def draining_now(self) -> dict[str, list[str]]:
        groups = self.supervisord.process_groups
        return {
            name: sorted(n for n in names if name in groups and n in groups[name].processes)
            for name, names in self.draining.items()
            if names
        }

    # --- XML-RPC entry points ----------------------------------------------------------------------------
    def plan(self, path: str = "") -> dict[str, Any]:
        wanted, workers = self.reread(path)
        groups = self.supervisord.process_groups
        plan: dict[str, Any] = {
            "added": sorted(n for n in wanted if n not in groups),
            "removed": sorted(n for n in groups if n not in wanted),
            "scaled": {},
            "changed": [],
            "unchanged": [],
            # Start order for added and restarted groups, as supervisord itself would use it.
            "priority": {n: int(c.priority) for n, c in wanted.items()},
        }
        for name in sorted(n for n in wanted if n in groups):
            group, config = groups[name], wanted[name]
            if config == group.config:
                plan["unchanged"].append(name)
                continue
            diff = self._diff(group, config)
            if name in workers and diff.count_only and config.priority == group.config.priority:
                plan["scaled"][name] = {
                    "unchanged": list(diff.unchanged),
                    "added": list(diff.added),
                    "removed": list(diff.removed),
                }
            else:
                plan["changed"].append(name)
        return plan

    def sync(self, name: str) -> dict[str, Any]:
        groups = self.supervisord.process_groups
        if name not in groups:
            raise fault("BAD_NAME", f"{name}: no such group is running")
        wanted, workers = self.reread()
        if name not in workers:
            raise fault("BAD_NAME", f"{name}: not a worker group; only worker groups are scaled in place")
        if name not in wanted:
            raise fault("BAD_NAME", f"{name}: no longer in the config file; apply that with a reload")
        group, config = groups[name], wanted[name]
        diff = self._diff(group, config)
        if diff.changed or config.priority != group.config.priority:
            changed = ", ".join(diff.changed) or "its priority"
            raise fault("INCORRECT_PARAMETERS", f"{name}: {changed} changed beyond the process count; reload")
        still = sorted(set(diff.added) & self.draining.get(name, set()))
        if still:
            raise fault(
                "STILL_RUNNING",
                f"{', '.join(still)} still finishing a job; add them again once they are gone",
            )
        kept = {n: p for n, p in group.processes.items() if n in diff.unchanged}
        # Meant to run if anything in it runs, including a worker about to be replaced by a renamed one.
        running = any(state_name(p) in LIVE for p in group.processes.values())
        by_name = {pc.name: pc for pc in config.process_configs}
        # Keep the live config objects, so nothing about the remaining processes changes.
        config.process_configs = [
            group.processes[pc.name].config if pc.name in kept else pc for pc in config.process_configs
        ]
        processes = dict(group.processes)
        started = []
        for pname in diff.added:
            pconfig = by_name[pname]
            pconfig.create_autochildlogs()  # without it getAllProcessInfo cannot marshal `Automatic`
            process = pconfig.make_process(group)
            processes[pname] = process
            if running:
                process.spawn()
                started.append(pname)
        draining = []
        for pname in diff.removed:
            process = processes[pname]
            if state_name(process) in LIVE:
                process.stop()
            if state_name(process) in DOWN:
                del processes[pname]
            else:
                draining.append(pname)
                self.draining.setdefault(name, set()).add(pname)
        # A new dict, not edits in place: supervisord may be iterating the old one further up the stack.
        group.processes = processes
        group.config = config
        self.supervisord.options.logger.info(
            f"protea: synced {name}: added {list(diff.added)}, stopping {list(diff.removed)}"
        )
        return {
            "added": list(diff.added),
            "started": started,
            "removed": list(diff.removed),
            "draining": draining,
            "unchanged": list(diff.unchanged),
        }

    # --- dropping drained processes ----------------------------------------------------------------------
    def _on_state(self, event: Any) -> None:
        process: Any = getattr(event, "process", None)
        group = getattr(process, "group", None)
        if group is not None and process.config.name in self.draining.get(group.config.name, ()):
            self._drop_stopped(group)

    def _on_tick(self, _event: Any) -> None:
        for name in list(self.draining):
            group = self.supervisord.process_groups.get(name)
            if group is None:
                del self.draining[name]
            else:
                self._drop_stopped(group)

    def _drop_stopped(self, group: Any) -> None:
        names = self.draining.get(group.config.name, set())
        gone = {n for n in names if n in group.processes and state_name(group.processes[n]) in DOWN}
        gone |= {n for n in names if n not in group.processes}
        if not gone:
            return
        for pname in gone & set(group.processes):
            for dispatcher in group.processes[pname].dispatchers.values():
                if not dispatcher.closed:
                    dispatcher.close()
        group.processes = {n: p for n, p in group.processes.items() if n not in gone}
        names -= gone
        if not names:
            self.draining.pop(group.config.name, None)
        self.supervisord.options.logger.info(f"protea: dropped {sorted(gone)} from {group.config.name}")
