"""protea's supervisord extension, loaded in-process as `[rpcinterface:protea]`.

Three jobs. `protea.syncGroup` scales a worker group in place, and `protea.planReload` tells count-only
changes from real ones (`groupsync.GroupSyncer`). `protea.beginSwitch` and its siblings replace a process on
a socket supervisord holds start-first, the API's deploy (`switcher.Switcher`). The waker makes supervisord
react to a child's exit in milliseconds instead of ~1 s. supervisord's main loop polls with a 1 s timeout,
and SIGCHLD does not end that wait (PEP 475 retries the poll). So an exit is reaped up to 1 s late, and its
PROCESS_STATE_EXITED event goes to listeners on the pass after that, another second later (measured: median
1003 ms, p90 2 s).

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

from protea_supervisor.extension.groupsync import GroupSyncer
from protea_supervisor.extension.reviver import Reviver
from protea_supervisor.extension.switcher import Switcher

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


class ProteaNamespace:
    """The `protea.*` XML-RPC methods."""

    def __init__(self, waker: Waker | None, reason: str, parts: tuple[GroupSyncer, Switcher]) -> None:
        self.waker = waker
        self.reason = reason
        self.syncer, self.switcher = parts

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

    def beginSwitch(self, name: str) -> dict[str, Any]:  # noqa: N802
        """Re-read the config file and start a successor `<process>-next` of a one-process fcgi-program
        group, from the re-read config, beside the serving process on the group's socket. A group that cannot
        be switched (not on a socket, its socket changed, nothing serving) is left alone and the reason
        returned.

        @param string name  the group name
        @return struct result  switching (bool), why, successor, pid
        """
        return self.switcher.begin(name)

    def finishSwitch(self, name: str) -> dict[str, Any]:  # noqa: N802
        """Stop the serving process (it drains with its grace); once it is down the successor takes its name
        and the group the re-read config.

        @param string name  the group name
        @return struct result  successor_pid, phase (finishing until the old process is down, then done)
        """
        return self.switcher.finish(name)

    def abortSwitch(self, name: str) -> dict[str, Any]:  # noqa: N802
        """Stop the successor and drop it once down; the serving process and the group's config stay.

        @param string name  the group name
        @return struct result  phase (aborting until the successor is down, then done)
        """
        return self.switcher.abort(name)

    def getSwitches(self) -> dict[str, Any]:  # noqa: N802
        """Switches under way, by group: the successor's name, its pid and the phase.

        @return struct switches
        """
        return self.switcher.state()

    def getWakerState(self) -> dict[str, Any]:  # noqa: N802 - XML-RPC names follow supervisor's style
        """The waker's state: whether it is on, why not, and how often it woke the main loop.

        @return struct state
        """
        on = self.waker is not None and not self.waker.closed
        return {"on": on, "reason": self.reason, "wakeups": self.waker.wakeups if self.waker else 0}


_current_parts: tuple[GroupSyncer, Switcher] | None = None
_current_reviver: Reviver | None = None


def _reviver(supervisord: Any, settings: dict[str, str]) -> None:
    """One per run of supervisord's loop (its subscriptions are cleared at each), with the run's settings."""
    global _current_reviver
    from supervisor import events

    current = _current_reviver
    subscribed = current is not None and any(cb == current._on_tick for _, cb in events.callbacks)
    if current is None or current.supervisord is not supervisord or not subscribed:
        _current_reviver = Reviver(
            supervisord,
            settings.get("revive_groups", ""),
            settings.get("revive_delay", "0"),
            settings.get("refusals", ""),
        )


def _parts(supervisord: Any) -> tuple[GroupSyncer, Switcher]:
    # supervisord clears its event subscriptions on every (re)start of its run loop, then opens the HTTP
    # servers, which call this factory: one syncer and one switcher per run, shared by every server section.
    global _current_parts
    from supervisor import events

    current = _current_parts
    subscribed = current is not None and any(cb == current[0]._on_state for _, cb in events.callbacks)
    if current is None or current[0].supervisord is not supervisord or not subscribed:
        syncer = GroupSyncer(supervisord)
        current = _current_parts = (syncer, Switcher(supervisord, syncer.reread))
    return current


def make_interface(supervisord: Any, fast_reactions: str = "true", **settings: str) -> ProteaNamespace:
    """Factory named in the rendered config. Called once per HTTP server section: one waker serves all."""
    global _current
    parts = _parts(supervisord)
    _reviver(supervisord, settings)
    if fast_reactions.strip().lower() not in ("true", "1", "yes", "on"):
        return ProteaNamespace(None, "off in the stack (control.fast_reactions = false)", parts)
    version = _supervisor_version()
    if version != SUPPORTED_SUPERVISOR:
        reason = f"supervisor {version} is not the tested {SUPPORTED_SUPERVISOR}"
        supervisord.options.logger.warn(f"protea: fast reactions off: {reason}")
        return ProteaNamespace(None, reason, parts)
    if _current is None or _current.closed or _current.supervisord is not supervisord:
        _current = Waker(supervisord)
    return ProteaNamespace(_current, "on", parts)
