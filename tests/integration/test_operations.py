"""Operations on real parts: the metrics listener on a real supervisord, and `queues` against this
machine's RabbitMQ and its management API (backup and restore are in test_backup_restore.py)."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, free_port, stack_file, toml_dump, wait_for
from rabbit import WORKER_COMMAND, connect, delete_queue, publish

from protea_supervisor.operations.queues import running_counts
from protea_supervisor.supervisord.control import Supervisor

FIXTURES = Path(__file__).parent.parent / "fixtures"

pytestmark = pytest.mark.integration
SECRET = "s3cret-Value-that-must-not-leak"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_scrape_reflects_a_crash_and_restart_and_carries_no_secret(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    env_file = short_tmp / "protea.env"
    env_file.write_text(f"PROTEA_JWT_SECRET={SECRET}\nPROTEA_EXTRA={SECRET}\n")
    env_file.chmod(0o600)
    port = free_port()
    stack = Stack(
        stack_file(short_tmp, queues={"protea.ping": {}}, env_files=[str(env_file)],
                   extra={"metrics": {"enabled": True, "port": port}})
    )  # fmt: skip
    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(lambda: sample(scrape(port), "protea_process_up", process="api:api") == 1.0, 20, "api up")
    before = sample(scrape(port), "protea_process_restarts_total", process="api:api") or 0.0
    os.kill(stack.status()["api"]["pid"], signal.SIGKILL)  # a crash; autorestart brings it back
    wait_for(
        lambda: (
            (sample(scrape(port), "protea_process_restarts_total", process="api:api") or 0) == before + 1
            and sample(scrape(port), "protea_process_up", process="api:api") == 1.0
        ),
        30,
        "the restart to show",
    )
    # An operator's restart is no failure: once the listener has heard the new process RUNNING (its uptime
    # counts from the restart), the count is what it was.
    crashed_pid = stack.status()["api"]["pid"]
    restarted_at = time.monotonic()
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf), "restart", "api"]
    assert subprocess.run(ctl, capture_output=True, text=True).returncode == 0
    assert stack.status()["api"]["pid"] != crashed_pid

    def heard() -> bool:
        uptime = sample(scrape(port), "protea_process_uptime_seconds", process="api:api")
        return uptime is not None and uptime < time.monotonic() - restarted_at

    wait_for(heard, 20, "the metrics listener to hear the operator's restart")
    assert sample(scrape(port), "protea_process_restarts_total", process="api:api") == before + 1
    text = scrape(port)
    assert (sample(text, "protea_process_rss_bytes", process="api:api") or 0) > 1e6
    assert sample(text, "protea_gate_phase", phase="done") == 1.0
    assert sample(text, "protea_stack_owner", owner="free") == 1.0
    assert SECRET not in text


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"protea.qt{uuid.uuid4().hex[:8]}."
    yield prefix
    delete_queue(prefix + "jobs")


def monitored_stack(root: Path, prefix: str, api: str = "http://127.0.0.1:15672") -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    return Stack(
        stack_file(
            root,
            queues={prefix + "jobs": {"processes": 1, "command": WORKER_COMMAND, "starved_after": 600}},
            extra={"monitor": {"rabbit_api": api, "queue_prefix": prefix}},
        )
    )


@pytest.mark.slow
def test_queues_flags_a_stalled_queue_and_a_consumer_mismatch_and_exits_2_without_a_broker(
    short_tmp: Path, supervisord: Callable[[Stack], None], prefix: str
) -> None:
    stack = monitored_stack(short_tmp, prefix)
    queue = prefix + "jobs"
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    for n in range(3):
        channel.basic_publish("", queue, b'{"id": %d, "seconds": 0.1}' % n)
    # No worker runs yet: messages and no consumer.
    wait_for(lambda: "stalled" in stack.ps("queues").out, 30, "the stalled verdict")
    stalled = stack.ps("queues")
    assert stalled.code == 1 and "3 messages and no consumer" in stalled.out, stalled.both

    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(lambda: stack.ps("queues").code == 0, 30, "a healthy queue once its worker consumes")
    # A stray consumer: two consumers, one RUNNING worker.
    channel.basic_consume(queue, lambda *args: None)
    wait_for(lambda: "mismatch" in stack.ps("queues").out, 30, "the mismatch")
    mismatch = stack.ps("queues")
    assert mismatch.code == 1 and "2 consumers, 1 worker-" in mismatch.out
    connection.close()

    closed = monitored_stack(short_tmp / "other", prefix, f"http://127.0.0.1:{free_port()}")
    unreachable = closed.ps("queues")
    assert unreachable.code == 2 and "unreachable" in unreachable.err


@pytest.mark.slow
def test_a_slow_acker_is_never_starved_and_one_that_stops_acking_is_after_its_grace(
    short_tmp: Path, prefix: str
) -> None:
    """RabbitMQ's momentary ack rate reads 0 between the acks of a slow queue; the ack total moves."""
    queue = prefix + "jobs"
    stack = monitored_stack(short_tmp, prefix)
    data = tomllib.loads(stack.file.read_text())
    data["queues"][queue]["starved_after"] = 12
    stack.file.write_text(toml_dump(data) + "\n")
    publish(queue, 60, 0.1)
    stop = short_tmp / "stop-acking"
    acker = subprocess.Popen([sys.executable, str(FIXTURES / "slow_acker.py"), "--queue", queue,
                              "--every", "4", "--stop-file", str(stop)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # The management API reports the new consumer with its next statistics (every 5 s).
        wait_for(
            lambda: stack.ps("queues").code == 0, 30, "the acker seen as the queue's consumer", interval=1
        )
        began = time.monotonic()
        seen = []
        while time.monotonic() - began < 20:  # five acks, each nearly a rate window apart
            result = stack.ps("queues")
            assert result.code == 0 and "starved" not in result.out, result.both
            seen.append(result.out)
            time.sleep(1)  # each check is a CLI run; one a second or so sees every 4 s ack
        assert len(seen) >= 4
        stop.touch()
        wait_for(
            lambda: "starved" in stack.ps("queues").out, 40, "the starved verdict once acks stop", interval=1
        )
        starved = stack.ps("queues")
        assert starved.code == 1 and "unchanged for" in starved.out and "(grace 12 s)" in starved.out
    finally:
        acker.kill()
        acker.wait()


def test_queues_names_a_stray_consumer_when_supervisord_runs_nothing_and_refuses_a_bad_answer(
    short_tmp: Path, supervisord: Callable[[Stack], None], prefix: str
) -> None:
    queue = prefix + "jobs"
    stack = monitored_stack(short_tmp, prefix)
    supervisord(stack)
    supervisor = Supervisor(stack.conf.parent / "supervisor.sock")
    supervisor.stop_all()
    wait_for(lambda: not running_counts(supervisor.all_process_info()), 30, "nothing RUNNING")
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    channel.basic_consume(queue, lambda *args: None)
    try:
        wait_for(
            lambda: "mismatch" in stack.ps("queues").out, 30, "the stray consumer's mismatch", interval=1
        )
        mismatch = stack.ps("queues")
        assert mismatch.code == 1 and "1 consumers, 0 worker-" in mismatch.out
    finally:
        connection.close()

    # A management API that answers, but not the queue list: exit 2 and one line, never "healthy".
    for body in (b'{"not": "a list"}', b'[{"name": "%sjobs", "messages": "many"}]' % prefix.encode(),
                 b"<html>maintenance</html>"):  # fmt: skip
        with answering(body) as api:
            odd = monitored_stack(short_tmp / "odd", prefix, api)
            result = odd.ps("queues")
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.both
        assert api in result.err and "Traceback" not in result.err


@contextlib.contextmanager
def answering(body: bytes) -> Iterator[str]:
    """A loopback HTTP server that answers every GET with `body` as JSON."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
