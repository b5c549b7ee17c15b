"""The one module that talks to supervisord: XML-RPC over the unix socket, and starting the daemon."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from protea_supervisor.errors import RpcRefused, StackFailed, SupervisorDown

ProcessInfo = dict[str, Any]
RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket with the standard library alone: supervisor's own transport
    loads its HTTP server (medusa) and configparser too: 0.06 s of CPU at every CLI start (of about 0.3)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # Kept where the standard transport keeps its own, so that its close() (after a failed request, or
        # the proxy's) closes the socket.
        connection = self._connection[1]
        if connection is None:
            connection = _UnixConnection(self.path)
            self._connection = host, connection
        return connection


def xmlrpc_proxy(serverurl: str, username: str = "", password: str = "") -> Any:
    """A proxy to supervisord at `serverurl` (unix:///path/to.sock or http://host:port). Make one per call:
    supervisor's transport is unusable after a failed request."""
    transport: xmlrpc.client.Transport
    if serverurl.startswith("unix://") and not (username or password):
        transport = _UnixTransport(serverurl.removeprefix("unix://"))
    else:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(username or None, password or None, serverurl=serverurl)
    # For a unix socket the host part is ignored.
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)


class Supervisor:
    """A thin typed facade over supervisord's XML-RPC namespace."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def _proxy(self) -> Any:
        return xmlrpc_proxy(f"unix://{self.socket_path}")

    def _call(self, method: str, *args: Any) -> Any:
        """`method` is in supervisord's namespace unless it names another (`protea.syncGroup`)."""
        namespace, _, name = method.rpartition(".")
        try:
            return getattr(getattr(self._proxy(), namespace or "supervisor"), name)(*args)
        except PermissionError:
            raise SupervisorDown(
                f"permission denied on {self.socket_path}; run as the stack's user."
            ) from None
        except (OSError, http.client.HTTPException):
            raise SupervisorDown(f"supervisord is not running (no answer on {self.socket_path}).") from None
        except xmlrpc.client.Fault as fault:
            raise RpcRefused(f"supervisord refused {method}: {fault.faultString}.") from None

    def is_running(self) -> bool:
        try:
            return self._call("getState")["statename"] == "RUNNING"  # type: ignore[no-any-return]
        except SupervisorDown:
            return False

    def pid(self) -> int:
        return cast(int, self._call("getPID"))

    def all_process_info(self) -> list[ProcessInfo]:
        return cast(list[ProcessInfo], self._call("getAllProcessInfo"))

    def start(self, name: str) -> None:
        try:
            self._call("startProcess", name, False)
        except RpcRefused as failed:
            if "ALREADY_STARTED" not in str(failed):
                raise

    def stop_all(self) -> None:
        """Signal every process at once (wait=False), so workers drain in parallel."""
        self._call("stopAllProcesses", False)

    def shutdown(self) -> None:
        self._call("shutdown")

    def send_comm(self, kind: str, data: str) -> None:
        """A REMOTE_COMMUNICATION event, delivered to listeners subscribed to it."""
        self._call("sendRemoteCommEvent", kind, data)

    def add_group(self, name: str) -> None:
        self._call("addProcessGroup", name)

    def replace_group(self, name: str) -> None:
        """Drop a stopped group and add it back from the re-read config."""
        self._call("removeProcessGroup", name)
        self._call("addProcessGroup", name)

    def remove_group(self, name: str) -> None:
        self._call("removeProcessGroup", name)

    def start_group(self, name: str) -> None:
        self._call("startProcessGroup", name, False)

    def stop_group(self, name: str) -> None:
        """Signal the group's processes (wait=False); they stop within their own grace."""
        self._call("stopProcessGroup", name, False)

    def sync_group(self, name: str) -> dict[str, list[str]]:
        """protea.syncGroup: reconcile a worker group with the re-read config in place."""
        return cast(dict[str, list[str]], self._call("protea.syncGroup", name))

    def draining(self) -> dict[str, list[str]]:
        """protea.getDraining: processes a scale-down removed that are still finishing their job."""
        return cast(dict[str, list[str]], self._call("protea.getDraining"))

    def ended_by_signal(self, name: str, pid: int) -> str:
        """The signal that ended process `name` of pid `pid` ('SIGKILL'), from supervisord's own log ('' when
        it exited by itself, or its lines are not in the log's last 64 KB). supervisord keeps no exit status
        for a process that died within its startsecs; its log line says how it ended."""
        text = str(self._call("readLog", -65536, 0))
        spawned = text.rfind(f"spawned: '{name}' with pid {pid}")
        if spawned < 0:
            return ""
        match = re.search(rf"exited: {re.escape(name)} \(terminated by (SIG[A-Z0-9]+)", text[spawned:])
        return match.group(1) if match else ""

    def switch(self, step: str, name: str) -> dict[str, Any]:
        """protea.beginSwitch / finishSwitch / abortSwitch (`step` begin, finish or abort) of one group."""
        return cast(dict[str, Any], self._call(f"protea.{step}Switch", name))

    def switches(self) -> dict[str, dict[str, Any]]:
        """protea.getSwitches: start-first replacements under way, by group."""
        return cast(dict[str, dict[str, Any]], self._call("protea.getSwitches"))

    def plan_reload(self, path: Path | None = None) -> dict[str, Any]:
        """protea.planReload: every group sorted into added, removed, scaled, changed, unchanged. With
        `path`, that file is compared instead of the config file, and supervisord's state is left alone."""
        return cast(dict[str, Any], self._call("protea.planReload", str(path or "")))


def supervisord_command(config: Path) -> list[str]:
    """supervisord from this interpreter's environment, so the pinned version runs."""
    return [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)]


def daemon_pids(config: Path, proc: Path = Path("/proc")) -> list[int]:
    """Every live supervisord started with `config` (`-c <config>`), however it was started (`up`, the
    systemd unit, by hand, a test): what says a supervisord runs for this stack when its socket does not
    answer (starting, busy, shutting down)."""
    wanted = str(config)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        supervisord = any(a.endswith("supervisord") or a == "supervisor.supervisord" for a in argv)
        if supervisord and wanted in argv and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def start_daemon(
    config: Path,
    supervisor: Supervisor,
    deadline: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    waiting: Callable[[str], None] | None = None,
) -> None:
    """Start supervisord (it daemonizes itself) and wait until its socket answers (with many programs and
    little CPU that takes seconds). Never a second one: a supervisord already running for this config,
    answering or not, is refused."""
    running = daemon_pids(config)
    if running:
        raise SupervisorDown(
            f"supervisord (pid {', '.join(map(str, running))}) runs for {config} but does not answer on "
            f"{supervisor.socket_path}; not starting a second one: wait for it, or stop it and run the "
            "command again."
        )
    result = subprocess.run(
        supervisord_command(config), capture_output=True, text=True, check=False, cwd=config.parent
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise StackFailed(
            f"supervisord did not start: {message[-1] if message else 'exit ' + str(result.returncode)}."
        )
    end = clock() + deadline
    while clock() < end:
        if supervisor.is_running():
            return
        if waiting:
            waiting(f"  waiting for supervisord to answer on {supervisor.socket_path}")
        time.sleep(0.1)
    raise StackFailed(
        f"supervisord started but its socket {supervisor.socket_path} did not answer in {deadline:g} s."
    )


def wait_gone(pid: int, deadline: float, clock: Callable[[], float] = time.monotonic) -> bool:
    end = clock() + deadline
    while clock() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
