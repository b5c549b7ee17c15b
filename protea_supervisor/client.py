"""A client for other tools: a stack's supervisord over XML-RPC, found from the stack file.

    from protea_supervisor.client import Client

    client = Client.for_stack("/etc/protea/stack.toml")      # the unix socket in the stack's run dir
    print(client.state())                                     # {'statecode': 1, 'statename': 'RUNNING'}
    for process in client.processes():
        print(process["name"], process["statename"])
    plan = client.plan_reload()                               # what `reload` would do, changing nothing
    client.sync_group("worker-embeddings-batch")              # after writing a new count into the config
    print(client.draining(), client.waker_state())

`Client.for_stack(path, inet=True, password=...)` uses the stack's inet server instead (control.inet_host,
control.inet_port, control.username; the password is the plain one whose SHA-1 is control.password_sha,
else $PROTEA_SUPERVISOR_PASSWORD). Every method raises `ClientFault` (with supervisord's fault `code` and
`name`, such as BAD_NAME) when supervisord refuses a call, and `SupervisorDown` when it does not answer.
"""

from __future__ import annotations

import http.client
import os
import xmlrpc.client
from pathlib import Path
from typing import Any, cast

from protea_supervisor.errors import ProteaError, SupervisorDown
from protea_supervisor.supervisord.control import xmlrpc_proxy

PASSWORD_ENV = "PROTEA_SUPERVISOR_PASSWORD"


class ClientFault(ProteaError):
    """supervisord answered a call with a fault: `code` (int), `name` (BAD_NAME, STILL_RUNNING, ...) and
    `text`."""

    def __init__(self, method: str, code: int, name: str, text: str) -> None:
        super().__init__(f"supervisord refused {method}: {name}: {text}")
        self.method, self.code, self.name, self.text = method, code, name, text


class Client:
    def __init__(self, url: str, username: str = "", password: str = "") -> None:
        """`url`: unix:///path/to/supervisor.sock or http://host:port (the inet server)."""
        self.url = url
        self._username, self._password = username, password

    @classmethod
    def for_stack(
        cls, stack_file: str | Path | None = None, *, inet: bool = False, password: str | None = None
    ) -> Client:
        """The supervisord of the stack described by `stack_file` (a host stack file, `demo`, or None for
        the PROTEA defaults), as the CLI's --stack chooses it."""
        from protea_supervisor.stackfile.files import load_stack, machine_facts

        stack = load_stack(None if stack_file is None else str(stack_file), machine_facts())
        if not inet:
            return cls(f"unix://{stack.socket_path}")
        control = stack.control
        if not control.inet_port:
            raise ProteaError(f"{stack.sources[-1]}: the stack has no inet server (control.inet_port is 0).")
        secret = password if password is not None else os.environ.get(PASSWORD_ENV, "")
        return cls(f"http://{control.inet_host}:{control.inet_port}", control.username, secret)

    # --- transport ---------------------------------------------------------------------------------------

    def _proxy(self) -> Any:
        return xmlrpc_proxy(self.url, self._username, self._password)

    def call(self, method: str, *args: Any) -> Any:
        """Any XML-RPC method by its full name: `supervisor.getState`, `protea.syncGroup`,
        `system.listMethods`."""
        namespace, _, name = method.rpartition(".")
        try:
            return getattr(getattr(self._proxy(), namespace), name)(*args)
        except xmlrpc.client.Fault as fault:
            label, _, text = str(fault.faultString).partition(": ")
            raise ClientFault(method, int(fault.faultCode), label, text or label) from None
        except xmlrpc.client.ProtocolError as why:
            if why.errcode == 401:
                raise ClientFault(method, 401, "UNAUTHORIZED", "wrong username or password") from None
            raise SupervisorDown(f"supervisord at {self.url} answered HTTP {why.errcode}.") from None
        except (OSError, http.client.HTTPException):
            raise SupervisorDown(f"supervisord is not running (no answer at {self.url}).") from None

    # --- supervisord's own calls -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("supervisor.getState"))

    def pid(self) -> int:
        return cast(int, self.call("supervisor.getPID"))

    def processes(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.call("supervisor.getAllProcessInfo"))

    def process(self, name: str) -> dict[str, Any]:
        """`name` is group:process, or a program's name when it has one process."""
        return cast(dict[str, Any], self.call("supervisor.getProcessInfo", name))

    def start(self, name: str, wait: bool = True) -> bool:
        return cast(bool, self.call("supervisor.startProcess", name, wait))

    def stop(self, name: str, wait: bool = True) -> bool:
        return cast(bool, self.call("supervisor.stopProcess", name, wait))

    def tail(self, name: str, length: int = 4096) -> str:
        """The last `length` bytes of a process's stdout log."""
        text, _offset, _overflow = self.call("supervisor.tailProcessStdoutLog", name, 0, length)
        return cast(str, text)

    def send_event(self, kind: str, data: str) -> bool:
        """A REMOTE_COMMUNICATION event to the listeners (kind `protea-deploy-timer` triggers a deploy)."""
        return cast(bool, self.call("supervisor.sendRemoteCommEvent", kind, data))

    # --- protea.* (the extension in the rendered config) -------------------------------------------------

    def sync_group(self, name: str) -> dict[str, list[str]]:
        return cast(dict[str, list[str]], self.call("protea.syncGroup", name))

    def plan_reload(self, path: str = "") -> dict[str, Any]:
        return cast(dict[str, Any], self.call("protea.planReload", path))

    def draining(self) -> dict[str, list[str]]:
        return cast(dict[str, list[str]], self.call("protea.getDraining"))

    def waker_state(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call("protea.getWakerState"))
