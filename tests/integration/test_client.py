"""The client module against a real supervisord: by the unix socket and by the inet server with
credentials, supervisord's own calls and every protea.* method, faults with their names."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, stack_file, wait_for

from protea_supervisor.client import Client, ClientFault
from protea_supervisor.errors import SupervisorDown

pytestmark = pytest.mark.integration
PASSWORD = "client-test-Pa55"


def test_the_client_reads_and_drives_a_stack_by_its_file(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    port = free_port()
    control = {"inet_port": port, "username": "tools",
               "password_sha": "{SHA}" + hashlib.sha1(PASSWORD.encode()).hexdigest()}  # fmt: skip
    queues = {"protea.embeddings.batch": {"processes": 1, "numbered": True}, "protea.ping": {}}
    stack = Stack(stack_file(short_tmp, queues=queues, extra={"control": control}))
    down = Client.for_stack(stack.file)
    with pytest.raises(SupervisorDown):
        down.state()
    supervisord(stack)
    assert stack.ps("up").code == 0

    client = Client.for_stack(stack.file)
    assert client.state()["statename"] == "RUNNING" and client.pid() > 0
    names = {p["name"]: p for p in client.processes()}
    assert names["api"]["statename"] == "RUNNING" and "worker-embeddings-batch-1" in names
    assert client.process("api")["pid"] == stack.status()["api"]["pid"]
    assert "listening" in client.tail("api")
    assert client.waker_state()["on"] is True
    assert client.draining() == {}
    plan = client.plan_reload()
    assert plan["changed"] == [] and plan["added"] == [] and "api" in plan["unchanged"]

    with pytest.raises(ClientFault) as refused:
        client.sync_group("api")
    assert refused.value.name == "BAD_NAME" and "not a worker group" in refused.value.text
    with pytest.raises(ClientFault) as unknown:
        client.process("nosuchprogram")
    assert unknown.value.name == "BAD_NAME"

    # A count written into the config (as `scale` does), then applied in place through the client.
    assert stack.ps("scale", "protea.embeddings.batch", "2").code == 0
    assert client.sync_group("worker-embeddings-batch") == {
        "added": [], "started": [], "removed": [], "draining": [],
        "unchanged": ["worker-embeddings-batch-1", "worker-embeddings-batch-2"],
    }  # fmt: skip
    assert client.stop("worker-ping") is True
    assert client.process("worker-ping")["statename"] == "STOPPED"
    assert client.start("worker-ping") is True

    # The inet server with the stack's username and the password whose SHA-1 the stack holds.
    inet = Client.for_stack(stack.file, inet=True, password=PASSWORD)
    assert inet.url == f"http://127.0.0.1:{port}"
    wait_for(lambda: inet.state()["statename"] == "RUNNING", 10, "the inet server")
    assert {p["name"] for p in inet.processes()} == {p["name"] for p in client.processes()}
    with pytest.raises(ClientFault) as denied:
        Client.for_stack(stack.file, inet=True, password="wrong").state()
    assert denied.value.name == "UNAUTHORIZED"


def test_the_documented_client_example_runs_as_written(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    section = (Path(__file__).parents[2] / "docs" / "reference" / "client.md").read_text()
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    queues = {"protea.embeddings.batch": {"processes": 1, "numbered": True}}
    stack = Stack(stack_file(short_tmp, queues=queues))
    supervisord(stack)
    assert stack.ps("up").code == 0
    code = example.replace("/etc/protea/stack.toml", str(stack.file))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "RUNNING" and any(line.startswith("api RUNNING ") for line in lines)
    assert lines[-1] == "[]"  # nothing a reload would restart; sync_group found nothing to do
