"""Workers follow the backlog, on a real supervisord and this machine's RabbitMQ: a burst scales the queue up
to its max without restarting the running worker, every job runs once, and once the burst is over the count
comes back to min after the window; the operator's `scale Q N` pins it until `scale Q --auto`; an export
suspends scale-down; a broker that does not answer freezes the count."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, stack_file, wait_for
from rabbit import WORKER_COMMAND, delete_queue, publish

pytestmark = [pytest.mark.integration]


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"protea.as{uuid.uuid4().hex[:8]}.batch"
    yield name
    delete_queue(name)


def autoscaled(root: Path, queue: str, rabbit_api: str = "http://127.0.0.1:15672", **auto: Any) -> Stack:
    settings = {"min": 1, "max": 3, "target_backlog": 2, "scale_up_delay": 0, "scale_down_window": 8,
                "cooldown": 0} | auto  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    return Stack(
        stack_file(
            root,
            queues={
                queue: {
                    "processes": 1,
                    "numbered": True,
                    "command": WORKER_COMMAND,
                    "stop_grace": 60,
                    "autoscale": settings,
                }
            },
            extra={"monitor": {"rabbit_api": rabbit_api}, "metrics": {"enabled": False}},
        )
    )


def workers(stack: Stack, program: str) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in stack.status().items() if p["group"] == program and p["state"] == "RUNNING"}


def recorded(stack: Stack, program: str) -> int:
    """The count `scale` recorded; 1 (the stack file's) while nothing is."""
    path = stack.root / "run" / "overrides.json"
    return int(json.loads(path.read_text())["processes"].get(program, 1)) if path.exists() else 1


def seen(stack: Stack, queue: str) -> dict[str, Any]:
    """What the autoscaler last saw and decided for the queue (<run>/autoscale.json)."""
    state = stack.root / "run" / "autoscale.json"
    return dict(json.loads(state.read_text())["queues"].get(queue, {})) if state.exists() else {}


def more_looks(stack: Stack, queue: str, seconds: float) -> None:
    """Wait until the autoscaler has looked again, `seconds` after its last look."""
    first = seen(stack, queue)["checked_at"]
    wait_for(lambda: seen(stack, queue)["checked_at"] >= first + seconds, seconds + 30, "more looks")


def journal(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_a_burst_scales_up_in_place_and_the_count_comes_back_after_the_window(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue: str
) -> None:
    stack = autoscaled(short_tmp, queue)
    program = "worker-" + queue.removeprefix("protea.").replace(".", "-")
    supervisord(stack)
    assert stack.ps("up").code == 0
    first = workers(stack, program)[f"{program}-1"]["pid"]
    publish(queue, 12, 1.5)
    wait_for(lambda: len(workers(stack, program)) == 3, 40, "the burst to scale the queue to its max")
    assert workers(stack, program)[f"{program}-1"]["pid"] == first  # the running worker was not restarted
    state = json.loads((stack.root / "run" / "autoscale.json").read_text())["queues"][queue]
    assert state["last_change"]["to"] == 3 and state["last_change"]["backlog"] >= 5
    assert "autoscale " + queue in stack.log("autoscaler")
    acks = stack.root / "acks.log"
    wait_for(lambda: len(journal(acks)) // 4 == 12, 60, "every job to be acked")
    wait_for(lambda: recorded(stack, program) == 1 and len(workers(stack, program)) == 1, 60, "the way down")
    ids = journal(acks)[0::4]
    assert sorted(ids, key=int) == [str(n) for n in range(12)]  # each job acked once
    starts = journal(Path(f"{acks}.starts"))[0::4]
    assert sorted(starts, key=int) == [str(n) for n in range(12)]  # and started once: none was cut off
    assert workers(stack, program)[f"{program}-1"]["pid"] == first
    status = stack.ps("status")
    assert f"autoscale {queue}: 1 (1-3, 2 per process)" in status.out

    # The operator pins the count; the autoscaler leaves it, though the backlog wants 1.
    assert stack.ps("scale", queue, "2").code == 0
    doc = json.loads((stack.root / "run" / "overrides.json").read_text())
    assert doc["pinned"] == [program]
    wait_for(lambda: "pinned" in json.loads((stack.root / "run" / "autoscale.json").read_text())["queues"][queue]["why"], 20, "the autoscaler to see the pin")  # fmt: skip
    assert "pinned at 2 by the operator" in stack.ps("status").out
    more_looks(stack, queue, 10)  # past the 8 s window that would bring the idle queue down to 1
    assert recorded(stack, program) == 2 and len(workers(stack, program)) == 2
    refused = stack.ps("scale", queue, "1", "--autoscaler", "a test")
    assert refused.code == 1 and "pinned at 2" in refused.err
    # --auto hands it back: the backlog is empty, so after the window the count is min again.
    resumed = stack.ps("scale", queue, "--auto")
    assert resumed.code == 0 and "follows its backlog again" in resumed.out
    wait_for(lambda: recorded(stack, program) == 1 and len(workers(stack, program)) == 1, 40, "min again")


def test_an_export_suspends_scale_down(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue: str
) -> None:
    stack = autoscaled(short_tmp, queue, min=1, max=3, scale_down_window=1)
    program = "worker-" + queue.removeprefix("protea.").replace(".", "-")
    supervisord(stack)
    assert stack.ps("up").code == 0
    config = (stack.root / "run" / "supervisord.conf").read_text()
    dry = stack.ps("reload", "--dry-run")
    assert dry.code == 0 and f"autoscale {queue}: 1-3 processes at 2 messages each; up after 0 s" in dry.out
    assert (stack.root / "run" / "supervisord.conf").read_text() == config
    # Start from 3 (the operator's count, then handed back to the autoscaler) while an export holds the lock.
    assert stack.ps("scale", queue, "3").code == 0
    taken = stack.ps("lock", "acquire", "export", "exp-1", "a long export")
    assert taken.code == 0, taken.both
    assert stack.ps("scale", queue, "--auto").code == 0

    def why() -> str:
        return str(json.loads((stack.root / "run" / "autoscale.json").read_text())["queues"][queue]["why"])

    wait_for(lambda: "scale-down suspended" in why(), 30, "the export to suspend scale-down")
    more_looks(stack, queue, 5)  # the 1 s window is long over: only the export keeps the count
    assert "scale-down suspended" in why()
    assert recorded(stack, program) == 3 and len(workers(stack, program)) == 3
    released = stack.ps("lock", "release", "exp-1")
    assert released.code == 0, released.both
    wait_for(lambda: recorded(stack, program) == 1, 30, "scale-down once the export is over")
    wait_for(lambda: len(workers(stack, program)) == 1, 30, "the extra workers to drain")


def test_a_broker_that_does_not_answer_freezes_the_count(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue: str
) -> None:
    stack = autoscaled(short_tmp, queue, rabbit_api=f"http://127.0.0.1:{free_port()}", scale_down_window=1)
    program = "worker-" + queue.removeprefix("protea.").replace(".", "-")
    supervisord(stack)
    assert stack.ps("up").code == 0
    assert stack.ps("scale", queue, "3").code == 0
    assert stack.ps("scale", queue, "--auto").code == 0
    state = stack.root / "run" / "autoscale.json"

    def seen() -> dict[str, Any]:
        return dict(json.loads(state.read_text())["queues"][queue]) if state.exists() else {}

    wait_for(
        lambda: "did not answer" in seen().get("why", ""), 30, "the autoscaler to find the broker silent"
    )
    first = seen()["checked_at"]
    # Three more looks (TICK_5), each long past the 1 s window that would bring an idle queue down to 1.
    wait_for(lambda: seen()["checked_at"] >= first + 12, 40, "three more looks at a silent broker")
    assert "did not answer" in seen()["why"]
    assert recorded(stack, program) == 3 and len(workers(stack, program)) == 3
    assert stack.log("autoscaler").count("counts frozen") == 1  # said once, not at every tick


@pytest.mark.slow
def test_workers_on_other_fresh_hosts_count_towards_the_backlog_per_process(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue: str, database: str
) -> None:
    """Two hosts on one queue: the server runs 2 workers (fixed), the node autoscales 1-3 at 20 messages
    each. With 60 jobs waiting the queue wants 3 in all: the server's 2 count, so the node keeps its 1 (alone
    it would want 3). Once the server is down and its heartbeat stale, the node carries the backlog."""
    program = "worker-" + queue.removeprefix("protea.").replace(".", "-")
    hosts = {}
    for name, auto in (("server-1", None), ("gpu-1", {"min": 1, "max": 3, "target_backlog": 20})):
        home = short_tmp / name
        home.mkdir()
        env_file = home / "host.env"
        env_file.write_text(f"PROTEA_DB_URL={database}\n")
        env_file.chmod(0o600)
        table: dict[str, Any] = {"processes": 2 if auto is None else 1, "numbered": True,
                                 "command": WORKER_COMMAND, "stop_grace": 60}  # fmt: skip
        if auto:
            table["autoscale"] = auto | {"scale_up_delay": 0, "scale_down_window": 120, "cooldown": 0}
        path = stack_file(
            home,
            queues={queue: table},
            env_files=[str(env_file)],
            extra={
                "host": {"name": name, "heartbeat": True, "stale_after": 15},
                "metrics": {"enabled": False},
            },
        )
        hosts[name] = Stack(path)
        supervisord(hosts[name])
        assert hosts[name].ps("up").code == 0, name
    server, node = hosts["server-1"], hosts["gpu-1"]
    wait_for(lambda: seen(node, queue).get("elsewhere") == 2, 40, "the node to count the server's 2 workers")
    publish(queue, 60, 3.0)
    wait_for(lambda: (seen(node, queue).get("backlog") or 0) >= 25, 30, "the node to see the backlog")
    looked = seen(node, queue)
    assert looked["elsewhere"] == 2 and looked["wanted"] == 1, looked  # ceil(backlog / 20) = 3, less the 2
    more_looks(node, queue, 5)
    assert recorded(node, program) == 1
    assert server.ps("down").code == 0
    # The server's last beat goes stale after 15 s; then the node wants ceil(backlog / 20) itself.
    wait_for(lambda: recorded(node, program) >= 2, 60, "the node to carry the backlog alone")
    change = seen(node, queue)["last_change"]
    assert change["elsewhere"] == 0 and change["from"] == 1 and change["to"] >= 2, change
