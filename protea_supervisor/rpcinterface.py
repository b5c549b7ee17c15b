"""protea's supervisord extension, loaded in-process as `[rpcinterface:protea]`.

Two jobs. `protea.syncGroup` scales a worker group in place, and `protea.planReload` tells count-only
changes from real ones (the `GroupSyncer` below). The waker makes supervisord react to a child's exit in
milliseconds instead of ~1 s. supervisord's main loop polls with a 1 s timeout, and SIGCHLD does not end
that wait (PEP 475 retries the poll). So an exit is reaped up to 1 s late, and its PROCESS_STATE_EXITED
event goes to listeners on the pass after that, another second later (measured: median 1003 ms, p90 2 s).

The waker fixes that:
- a non-blocking pipe whose write end is `signal.set_wakeup_fd`, so every signal wakes the poll at once;
- its read end sits in supervisord's socket map, so the loop drains it;
- one byte of "kick" when a real signal was drained, so the pass *after* the reap also runs at once and the
  event is delivered.

It tears itself down on shutdown and reload. A stale socket-map entry after a reload that shifts fd numbers
made supervisord spin at 100% of a core in the experiment (reference/reap-latency.md). It relies on
supervisor internals, so it runs only on the version it was tested against and otherwise logs one warning
and stays off. Nothing depends on it for correctness: without it, everything happens 1-2 s later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from protea_supervisor.reconcile import GroupDiff, diff_group

SUPPORTED_SUPERVISOR = "4.3.0"
_KICK = b"\0"


class Waker:
    """A dispatcher (asyncore duck type) over the wakeup pipe. One per supervisord process."""

    def __init__(self, supervisord: Any) -> None:
        from supervisor.medusa import asyncore_25 as asyncore

        self.supervisord = supervisord
        self.socket_map = asyncore.socket_map
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.wakeups = 0
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.socket_map[self.read_fd] = self
        self.closed = False
        options = supervisord.options
        original_cleanup = options.cleanup

        def cleanup() -> None:
            # Run by Supervisor.run() in its finally, on shutdown and on every reload.
            self.close()
            original_cleanup()

        options.cleanup = cleanup
        if self.previous_fd not in (-1, self.write_fd):
            options.logger.warn(f"protea: replaced another signal wakeup fd ({self.previous_fd})")

    # --- the dispatcher duck type supervisord's loop expects -------------------------------------------
    def readable(self) -> bool:
        return not self.closed

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            data = os.read(self.read_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        self.wakeups += 1
        if data.strip(_KICK):
            # A real signal (SIGCHLD): reap happens in this pass, the event is sent in the next one.
            with contextlib.suppress(BlockingIOError):  # a full pipe means a wake is already pending
                os.write(self.write_fd, _KICK)

    def handle_write_event(self) -> None:
        pass

    def handle_error(self) -> None:
        self.supervisord.options.logger.warn("protea: error in the wakeup dispatcher; turning it off")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if threading.current_thread() is threading.main_thread():
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, self.write_fd):  # someone else's: put it back
                signal.set_wakeup_fd(current, warn_on_full_buffer=False)
        if self.socket_map.get(self.read_fd) is self:
            del self.socket_map[self.read_fd]
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"<protea waker fd {self.read_fd}>"


_current: Waker | None = None


def _supervisor_version() -> str:
    from supervisor.options import VERSION

    return str(VERSION)


# Process states by name; supervisor's ProcessStates values, spelled out so this module imports without it.
_LIVE = ("STARTING", "RUNNING", "BACKOFF")
_DOWN = ("STOPPED", "EXITED", "FATAL")


def _state_name(process: Any) -> str:
    from supervisor.states import getProcessStateDescription

    return str(getProcessStateDescription(process.get_state()))


def _fault(code_name: str, text: str) -> Exception:
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
    def _reread(self, path: str = "") -> tuple[dict[str, Any], set[str]]:
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
            raise _fault("CANT_REREAD", str(why)) from None
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
        wanted, workers = self._reread(path)
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
            raise _fault("BAD_NAME", f"{name}: no such group is running")
        wanted, workers = self._reread()
        if name not in workers:
            raise _fault("BAD_NAME", f"{name}: not a worker group; only worker groups are scaled in place")
        if name not in wanted:
            raise _fault("BAD_NAME", f"{name}: no longer in the config file; apply that with a reload")
        group, config = groups[name], wanted[name]
        diff = self._diff(group, config)
        if diff.changed or config.priority != group.config.priority:
            changed = ", ".join(diff.changed) or "its priority"
            raise _fault(
                "INCORRECT_PARAMETERS", f"{name}: {changed} changed beyond the process count; reload"
            )
        still = sorted(set(diff.added) & self.draining.get(name, set()))
        if still:
            raise _fault(
                "STILL_RUNNING",
                f"{', '.join(still)} still finishing a job; add them again once they are gone",
            )
        kept = {n: p for n, p in group.processes.items() if n in diff.unchanged}
        # Meant to run if anything in it runs, including a worker about to be replaced by a renamed one.
        running = any(_state_name(p) in _LIVE for p in group.processes.values())
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
            if _state_name(process) in _LIVE:
                process.stop()
            if _state_name(process) in _DOWN:
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
        gone = {n for n in names if n in group.processes and _state_name(group.processes[n]) in _DOWN}
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


class ProteaNamespace:
    """The `protea.*` XML-RPC methods."""

    def __init__(self, waker: Waker | None, reason: str, syncer: GroupSyncer) -> None:
        self.waker = waker
        self.reason = reason
        self.syncer = syncer

    def syncGroup(self, name: str) -> dict[str, Any]:  # noqa: N802
        """Re-read the config file and reconcile one worker group in place: remaining processes keep
        running untouched, new ones are added (and started when the group runs), removed ones are stopped
        with their grace and dropped once stopped.

        @param string name  the group (program) name
        @return struct result  added, started, removed, draining, unchanged
        """
        return self.syncer.sync(name)

    def planReload(self, path: str = "") -> dict[str, Any]:  # noqa: N802
        """Re-read the config file (or parse `path` instead, changing nothing) and sort every group: added,
        removed, scaled (count-only, with the processes each adds and removes), changed, unchanged.

        @param string path  another config file to compare with, for a dry run; empty for the real one
        @return struct plan
        """
        return self.syncer.plan(path)

    def getDraining(self) -> dict[str, list[str]]:  # noqa: N802
        """Processes a scale-down removed that are still finishing their job, by group.

        @return struct draining  group name -> process names
        """
        return self.syncer.draining_now()

    def getWakerState(self) -> dict[str, Any]:  # noqa: N802 - XML-RPC names follow supervisor's style
        """The waker's state: whether it is on, why not, and how often it woke the main loop.

        @return struct state
        """
        on = self.waker is not None and not self.waker.closed
        return {"on": on, "reason": self.reason, "wakeups": self.waker.wakeups if self.waker else 0}


_current_syncer: GroupSyncer | None = None


def _syncer(supervisord: Any) -> GroupSyncer:
    # supervisord clears its event subscriptions on every (re)start of its run loop, then opens the HTTP
    # servers, which call this factory: one syncer per run, shared by every server section.
    global _current_syncer
    from supervisor import events

    current = _current_syncer
    subscribed = current is not None and any(cb == current._on_state for _, cb in events.callbacks)
    if current is None or current.supervisord is not supervisord or not subscribed:
        current = _current_syncer = GroupSyncer(supervisord)
    return current


def make_interface(supervisord: Any, fast_reactions: str = "true", **_: str) -> ProteaNamespace:
    """Factory named in the rendered config. Called once per HTTP server section: one waker serves all."""
    global _current
    syncer = _syncer(supervisord)
    if fast_reactions.strip().lower() not in ("true", "1", "yes", "on"):
        return ProteaNamespace(None, "off in the stack (control.fast_reactions = false)", syncer)
    version = _supervisor_version()
    if version != SUPPORTED_SUPERVISOR:
        reason = f"supervisor {version} is not the tested {SUPPORTED_SUPERVISOR}"
        supervisord.options.logger.warn(f"protea: fast reactions off: {reason}")
        return ProteaNamespace(None, reason, syncer)
    if _current is None or _current.closed or _current.supervisord is not supervisord:
        _current = Waker(supervisord)
    return ProteaNamespace(_current, "on", syncer)
