"""The [rpcinterface:protea] waker on a real supervisord: exits reach listeners in milliseconds, reloads
leave no stale fd and no spinning loop, SIGTERM shutdown stays clean."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport
from xprocess import ProcessStarter

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, free_port, wait_for
from fixtures.exit_latency import (
    CRASHER,
    crasher_section,
    latencies_ms,
    recorder_section,
)
from fixtures.exit_latency import (
    supervisord_config as config,
)

pytestmark = pytest.mark.integration


def rpc(here: Path) -> Any:
    transport = SupervisorTransport(None, None, serverurl=f"unix://{here}/s.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def start(xprocess: Any, name: str, conf: Path) -> int:
    class Starter(ProcessStarter):  # type: ignore[misc]
        pattern = "supervisord started with pid"
        args = (sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf))
        timeout = 30
        terminate_on_interrupt = True

    pid, _ = xprocess.ensure(name, Starter)
    return int(pid)


def exit_latencies(xprocess: Any, here: Path, fast: bool, runs: int = 20) -> list[float]:
    exits, events = here / "exits.txt", here / "events.txt"
    programs = crasher_section(exits) + recorder_section(events)
    start(xprocess, f"fast-{fast}-{here.name}", config(here, fast, programs))
    try:
        wait_for(
            lambda: events.exists() and len(events.read_text().splitlines()) > runs, 120, f"{runs} exits"
        )
    finally:
        xprocess.getinfo(f"fast-{fast}-{here.name}").terminate()
    return latencies_ms(exits, events, skip=1)[:runs]


def test_a_crash_reaches_a_listener_in_milliseconds(short_tmp: Path, xprocess: Any) -> None:
    latencies = exit_latencies(xprocess, short_tmp, fast=True)
    assert len(latencies) >= 18
    median = statistics.median(latencies)
    print(f"crash -> listener EXITED with the waker: median {median:.1f} ms, max {max(latencies):.1f} ms")
    assert median < 50


def test_a_oneshot_exit_reaches_a_listener_in_milliseconds(short_tmp: Path, xprocess: Any) -> None:
    exits, events = short_tmp / "exits.txt", short_tmp / "events.txt"
    oneshot = CRASHER.replace("os._exit(1)", "os._exit(0)").replace("random.uniform(0.1, 0.3)", "0.05")
    programs = f"""
[program:oneshot]
command={sys.executable} -c "{oneshot}" {exits}
autostart=false
autorestart=false
startsecs=0
""" + recorder_section(events)
    start(xprocess, f"oneshot-{short_tmp.name}", config(short_tmp, True, programs))
    try:
        wait_for(lambda: _waker_on(short_tmp), 20, "the waker")
        for run in range(1, 21):
            rpc(short_tmp).supervisor.startProcess("oneshot", False)
            wait_for(lambda run=run: events.exists() and len(events.read_text().splitlines()) == run, 20,
                     f"exit {run} reported")  # fmt: skip
    finally:
        xprocess.getinfo(f"oneshot-{short_tmp.name}").terminate()
    latencies = latencies_ms(exits, events)
    print(f"one-shot exit -> listener EXITED with the waker: median {statistics.median(latencies):.1f} ms")
    assert len(latencies) == 20 and statistics.median(latencies) < 50


def test_without_the_waker_the_same_crash_takes_about_a_second(short_tmp: Path, xprocess: Any) -> None:
    latencies = exit_latencies(xprocess, short_tmp, fast=False, runs=8)
    print(f"crash -> listener EXITED without the waker: median {statistics.median(latencies):.1f} ms")
    assert rpc(short_tmp) is not None  # reported, not asserted: the point of the waker is the other test


def fds(pid: int) -> int:
    """Pipes and files open in `pid`. Sockets are left out: client connections come and go. A stale waker
    would show here, as a pipe pair."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # a client connection closed meanwhile
            continue
    return sum(1 for t in targets if not t.startswith("socket:"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reload_and_wait(here: Path, conf: Path, pid: int) -> None:
    done = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(conf), "reload"], capture_output=True, text=True
    )
    assert "Restarted supervisord" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: _state(here) == "RUNNING" and _waker_on(here), 30, "supervisord back after reload")
    assert Path(f"/proc/{pid}").exists()


def _state(here: Path) -> str:
    try:
        return str(rpc(here).supervisor.getState()["statename"])
    except (OSError, xmlrpc.client.Error):
        return ""


def _waker_on(here: Path) -> bool:
    try:
        return bool(rpc(here).protea.getWakerState()["on"])
    except (OSError, xmlrpc.client.Error):
        return False


def test_reloads_leave_no_stale_fd_and_no_spinning_loop(short_tmp: Path, xprocess: Any) -> None:
    sleeper = f"\n[program:sleeper]\ncommand={sys.executable} -c 'import time; time.sleep(3600)'\n"
    inet_port = free_port()
    conf = config(short_tmp, True, sleeper, inet_port=inet_port)
    pid = start(xprocess, f"reload-{short_tmp.name}", conf)
    try:
        wait_for(lambda: _waker_on(short_tmp), 20, "the waker")
        files = fds(pid)
        reload_and_wait(short_tmp, conf, pid)
        reload_and_wait(short_tmp, conf, pid)
        assert fds(pid) == files
        config(short_tmp, True, sleeper)  # the same, without the inet server
        reload_and_wait(short_tmp, conf, pid)
        assert fds(pid) == files
        with pytest.raises(ConnectionRefusedError):  # the inet server is gone with its section
            socket.create_connection(("127.0.0.1", inet_port), timeout=2)
        used = cpu_seconds(pid)
        time.sleep(5)  # the measurement window itself: supervisord idle for 5 s
        assert cpu_seconds(pid) - used < 0.05
    finally:
        xprocess.getinfo(f"reload-{short_tmp.name}").terminate()


def test_sigterm_shutdown_is_clean_and_leaves_no_child(short_tmp: Path) -> None:
    programs = "".join(
        f"\n[program:s{i}]\ncommand={sys.executable} -c 'import time; time.sleep(3600)'\nstopasgroup=true\n"
        for i in range(3)
    )
    conf = config(short_tmp, True, programs)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: _waker_on(short_tmp) and all(
            p["statename"] == "RUNNING" for p in rpc(short_tmp).supervisor.getAllProcessInfo()), 30, "all running")  # fmt: skip
        children = [int(p["pid"]) for p in rpc(short_tmp).supervisor.getAllProcessInfo()]
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        print(f"SIGTERM shutdown with the waker: {time.monotonic() - began:.2f} s")
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
