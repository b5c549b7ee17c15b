"""A deploy replaces the API start-first on the socket supervisord holds (`programs.api.socket`), on a real
supervisord with a real git remote: the new process starts beside the serving one, is proved by an answer
carrying its own pid, and only then does the old one drain and stop. The API is polled every 50 ms, each
poll on its own connection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, free_port, toml_dump, wait_for
from deploy_app import APP, AppRepo, Poller, deploy_stack, git, on_socket, record, serving

from protea_supervisor.supervisord.control import Supervisor

pytestmark = pytest.mark.integration

WARM_UP = 1.5


def socket_stack(short_tmp: Path, repo: AppRepo, queue: str) -> Stack:
    repo.commit("the API on a socket", {"app.py": on_socket(APP, WARM_UP)})
    port = free_port()
    api = {"command": "{python} -P app.py fd0", "directory": "{root}", "socket": f"tcp://127.0.0.1:{port}"}
    metrics = {"enabled": True, "port": free_port()}
    return deploy_stack(
        short_tmp, repo, queue, extra={"programs": {"api": api}, "metrics": metrics}, api_port=port
    )


def api_group(stack: Stack) -> dict[str, str]:
    """`supervisorctl status` lines of the api group: name -> state (`api` alone when the group holds only
    its namesake, `api:api-next` beside it during a switch)."""
    out = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(stack.conf), "status"], capture_output=True, text=True
    ).stdout
    fields = [
        line.split() for line in out.splitlines() if line.split()[0] == "api" or line.startswith("api:")
    ]
    return {f[0]: f[1] for f in fields}


def scrape(stack: Stack) -> str:
    port = tomllib.loads(stack.file.read_text())["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def reread(stack: Stack) -> str:
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf), "reread"]
    return subprocess.run(ctl, capture_output=True, text=True).stdout.strip()


def test_a_deploy_replaces_the_api_without_a_failed_request_and_a_hung_one_never_serves(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = socket_stack(short_tmp, repo, queue_name)
    supervisord(stack)
    first = stack.ps("tick")
    assert first.code == 10, first.both
    old_pid = str(stack.status()["api"]["pid"])
    url = f"http://127.0.0.1:{stack.api_port}/jobs"
    worker = "worker-" + queue_name.replace(".", "-")

    # An API change: the new process answers on the one socket before the old one stops.
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    with Poller(url) as polled:
        second = stack.ps("tick")
    assert second.code == 10, second.both
    new_pid = str(stack.status()["api"]["pid"])
    assert new_pid != old_pid
    assert f"pid {new_pid} serves as api" in second.out, second.out
    assert polled.failed == 0 and polled.polls > 20, (polled.failed, polled.polls)
    # Both served during the switch, the old one first; once the new one answered, the old one only drained.
    assert polled.pids[0] == old_pid and polled.pids[-1] == new_pid, polled.pids
    assert set(polled.pids) == {old_pid, new_pid}
    assert serving(stack) == f"v2 {rev2}"
    # The successor took the name api and the group the re-read config: nothing left to apply or to see.
    assert api_group(stack) == {"api": "RUNNING"}
    assert reread(stack) == "No config updates to processes"
    assert stack.status()["api"]["state"] == "RUNNING"
    # The metrics listener heard the switch out: api up with the new pid, no `api-next` left behind.
    wait_for(lambda: 'protea_process_up{group="api",process="api:api"} 1.0' in scrape(stack), 20, "api up")
    assert "api-next" not in scrape(stack)

    # `reload` of a changed API config (its environment) replaces it the same way.
    data = tomllib.loads(stack.file.read_text())
    data["programs"]["api"]["environment"] = {"API_FLAVOUR": "2"}
    stack.file.write_text(toml_dump(data) + "\n")
    with Poller(url) as polled:
        reloaded = stack.ps("reload")
    assert reloaded.code == 0, reloaded.both
    assert "replace  api (start-first on its socket" in reloaded.out, reloaded.out
    newest_pid = str(stack.status()["api"]["pid"])
    assert newest_pid != new_pid and f"pid {newest_pid} serves as api" in reloaded.out, reloaded.out
    assert polled.failed == 0 and polled.pids[-1] == newest_pid, (polled.failed, polled.pids[-3:])
    assert reread(stack) == "No config updates to processes"
    new_pid = newest_pid

    # A revision whose API never gets ready (its start-up hangs; no canary in this stack): the serving API
    # answers every request throughout, no worker moves to it, and the successor is gone afterwards.
    worker_pid = stack.status()[worker]["pid"]
    rev3 = repo.commit("hangs", {"HANG": "yes", "VERSION": "v3\n"})
    with Poller(url) as polled:
        third = stack.ps("tick")
    assert third.code == 20, third.both
    assert "never answered" in third.out and "the serving API was not touched" in third.out, third.out
    assert polled.failed == 0 and set(polled.pids) == {new_pid}, (polled.failed, set(polled.pids))
    assert str(stack.status()["api"]["pid"]) == new_pid
    assert stack.status()[worker]["pid"] == worker_pid
    assert api_group(stack) == {"api": "RUNNING"}
    assert rev3 in record(stack)["failed"]
    assert git(repo.worktree, "rev-parse", "HEAD") == git(repo.dev, "rev-parse", "HEAD~1")
    assert serving(stack) == f"v2 {rev2}"

    # The successor killed with SIGKILL while it warms up (an operator, the OOM killer): no exit of its own,
    # so the revision is not blamed (exit 50, not on the failed list; the next tick tries it again), and the
    # serving API answered throughout.
    rev4 = repo.commit("hangs too", {"VERSION": "v4\n"})
    with Poller(url) as polled:
        tick = subprocess.Popen([str(BIN / "protea-supervisor"), "--stack", str(stack.file), "tick"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

        def successor() -> int:
            return next((int(i["pid"]) for i in Supervisor(stack.conf.parent / "supervisor.sock")
                         .all_process_info() if i["name"] == "api-next" and i["pid"]), 0)  # fmt: skip

        victim = int(wait_for(successor, 60, "the successor api-next"))  # type: ignore[arg-type]
        os.kill(victim, signal.SIGKILL)
        out, _ = tick.communicate(timeout=120)
    assert tick.returncode == 50, out
    assert "was killed by SIGKILL" in out and "not blamed" in out, out
    assert polled.failed == 0, polled.failed
    assert rev4 not in record(stack)["failed"]
    assert serving(stack) == f"v2 {rev2}"
