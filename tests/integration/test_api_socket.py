"""The API on a listening socket supervisord holds (`programs.api.socket`), on a real supervisord."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, free_port, stack_file, wait_for

from protea_supervisor.errors import RpcRefused
from protea_supervisor.supervisord.control import Supervisor

pytestmark = pytest.mark.integration


def answer(port: int) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=10) as response:
        return response.status, response.headers.get("X-Api-Pid", "")


def test_the_api_serves_on_the_socket_supervisord_holds_and_requests_wait_out_a_restart(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    port = free_port()
    api = {"command": "{python} -P -m protea_supervisor.demo.api --fd 0 --ready-after 2",
           "socket": f"tcp://127.0.0.1:{port}"}  # fmt: skip
    stack = Stack(stack_file(short_tmp, api_port=port, extra={"programs": {"api": api}}))
    supervisord(stack)
    config = stack.conf.read_text()
    assert "[fcgi-program:api]" in config and f"socket=tcp://127.0.0.1:{port}" in config
    up = stack.ps("up")
    assert up.code == 0, up.both
    status, pid = answer(port)
    assert status == 200 and pid == str(stack.status()["api"]["pid"])

    # supervisorctl returns once the new process is RUNNING (startsecs 1 s), while it still warms up (2 s).
    # The socket is supervisord's: a request sent now waits in its backlog and the warm API answers it,
    # instead of being refused (nothing listening) or getting the 503 of an API that is not ready.
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf)]
    subprocess.run([*ctl, "restart", "api"], check=True, capture_output=True)
    status, new_pid = answer(port)
    assert status == 200 and new_pid not in ("", pid)
    assert new_pid == str(stack.status()["api"]["pid"])

    # What a switch refuses, said rather than done: a group not on a socket, a switch that is not under way,
    # a group whose config has not changed is still switchable (a deploy asks only when it changed).
    supervisor = Supervisor(stack.conf.parent / "supervisor.sock")
    assert supervisor.switch("begin", "web") == {
        "switching": False,
        "why": "web: not on a socket supervisord holds (an fcgi-program)",
    }
    assert supervisor.switch("begin", "nope")["why"] == "nope: no such group is running"
    with pytest.raises(RpcRefused, match="api: no switch under way to finish"):
        supervisor.switch("finish", "api")
    assert supervisor.switches() == {}

    # Begun, then aborted: the successor starts beside api on the one socket, and once stopped it is dropped;
    # api never stopped.
    begun = supervisor.switch("begin", "api")
    assert begun["switching"] and begun["successor"] == "api-next", begun
    assert supervisor.switches()["api"]["phase"] == "warming"
    with pytest.raises(RpcRefused, match="a switch is already under way"):
        supervisor.switch("begin", "api")
    supervisor.switch("abort", "api")
    wait_for(lambda: supervisor.switches() == {}, 30, "the successor dropped")
    names = {i["name"]: i for i in supervisor.all_process_info() if i["group"] == "api"}
    assert set(names) == {"api"} and str(names["api"]["pid"]) == new_pid
    assert names["api"]["statename"] == "RUNNING"
