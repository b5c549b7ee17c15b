"""Two hosts on one machine, sharing this machine's real Postgres and RabbitMQ: a server whose deploy tick
declares the revision it deployed, and a compute node (host.role = "node") whose workers start only from a
clean checkout at the declared revision. Each has its own stack file, run dir and supervisord."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, free_port, wait_for
from deploy_app import AppRepo, deploy_stack, git, node_stack
from rabbit import publish

from protea_supervisor.hosts import declared
from protea_supervisor.supervisord.status import process_revision

pytestmark = pytest.mark.integration

# The app's migration: it fails in a revision that holds MIGRATION_FAILS.
MIGRATE = "import pathlib, sys\nsys.exit(1 if pathlib.Path('MIGRATION_FAILS').exists() else 0)\n"


def server_stack(base: Path, repo: AppRepo, queue: str, db_url: str, heartbeat: bool = False) -> Stack:
    """The server: the whole app, deploy ticks that declare what they deployed, guarded workers; with
    `heartbeat`, its heartbeat listener too (a host is stale after 15 s without one)."""
    repo.commit("a migration", {"migrate.py": MIGRATE, "alembic/versions/001_init.py": "# init\n"})
    return deploy_stack(
        base,
        repo,
        queue,
        db_url=db_url,
        extra={
            "host": {"name": "server-1", "declare_revision": True, "revision_guard": True,
                     "heartbeat": heartbeat, "stale_after": 15},
            "programs": {"migrate": {"command": "{python} -P migrate.py", "directory": "{root}"}},
            "monitor": {"queue_prefix": "test."},
            "metrics": {"enabled": heartbeat, "port": free_port()},
        },
    )  # fmt: skip


def all_hosts(stack: Stack) -> dict[str, Any]:
    result = stack.ps("status", "--all-hosts", "--json")
    assert result.code == 0, result.both
    return dict(json.loads(result.out))


def worker_revision(stack: Stack, program: str) -> str | None:
    """PROTEA_REVISION in the running worker's own environment."""
    row = stack.status()[program]
    return process_revision(int(row["pid"])) if row["state"] == "RUNNING" and row["pid"] else None


def restart(stack: Stack, program: str) -> None:
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf), "restart", program]
    subprocess.run(ctl, capture_output=True, text=True)


def refused(stack: Stack, program: str) -> str:
    """The status description of a worker the guard keeps down ('' while it runs or retries): FATAL when
    the refusal came within startsecs (supervisord's retries spent), EXITED when the guard took longer."""
    row = stack.status()[program]
    return str(row["description"]) if row["state"] in ("FATAL", "EXITED") else ""


def test_the_server_declares_what_it_deployed_and_a_node_starts_workers_only_on_it(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str, database: str
) -> None:
    repo = AppRepo(short_tmp)
    server = server_stack(short_tmp, repo, queue_name, database)
    supervisord(server)
    first = server.ps("tick")
    assert first.code == 10, first.both
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    assert f"declared {rev1[:10]} in Postgres" in first.out, first.out
    declaration = declared.current(database, "PROTEA_DB_URL")
    assert declaration is not None and (declaration.revision, declaration.host) == (rev1, "server-1")
    digest = declared.migration_digest(repo.worktree, rev1, "alembic/versions")
    assert declaration.migrations == digest
    # The server's own worker passed its guard: the worktree is clean at the revision its config names.
    worker = "worker-" + queue_name.replace(".", "-")
    assert server.status()[worker]["state"] == "RUNNING"

    # A revision whose migration fails is never declared.
    rev2 = repo.commit("a broken migration", {"MIGRATION_FAILS": "yes", "alembic/versions/002.py": "# 2\n"})
    second = server.ps("tick")
    assert second.code == 20, second.both
    assert "declared" not in second.out.replace("undo-declare", "")
    assert declared.current(database, "PROTEA_DB_URL") == declaration

    # The node: its own checkout of the app, at the declared revision. Its worker starts.
    checkout = short_tmp / "node-checkout"
    git(short_tmp, "clone", "--quiet", str(repo.remote), str(checkout))
    git(checkout, "checkout", "--quiet", "--detach", rev1)
    node = node_stack(short_tmp, checkout, queue_name, database)
    supervisord(node)
    up = node.ps("up")
    assert up.code == 0, up.both
    assert node.status()[worker]["state"] == "RUNNING"

    # A dirty checkout (an edited tracked file): the start is refused (exit 78), the worker stays down and
    # status says why.
    (checkout / "app.py").write_text((checkout / "app.py").read_text() + "# local edit\n")
    restart(node, worker)
    wait_for(lambda: refused(node, worker), 60, "the dirty checkout refused")
    assert refused(node, worker) == "refused: the checkout has uncommitted changes (M app.py)"
    assert node.status()[worker]["state"] == "EXITED"  # exit 78 is expected: never restarted
    assert "revision guard: the checkout has uncommitted changes" in node.log(worker)
    # ... and so does the view of every host, from the heartbeat.
    problem = f"gpu-1: {worker} refused: the checkout has uncommitted changes (M app.py)"
    wait_for(lambda: problem in all_hosts(node)["problems"], 30, "the refusal in status --all-hosts")
    git(checkout, "checkout", "--quiet", "--", "app.py")

    # Clean, but on a revision the server never declared (the one whose migration failed): refused.
    git(checkout, "checkout", "--quiet", "--detach", rev2)
    restart(node, worker)
    wait_for(lambda: "declared revision" in refused(node, worker), 60, "the undeclared revision refused")
    assert refused(node, worker) == (
        f"refused: the checkout is at {rev2[:10]}, not at the declared revision {rev1[:10]}"
    )

    # Back at the declared revision: it starts, and the refusal is gone from status.
    git(checkout, "checkout", "--quiet", "--detach", rev1)
    restart(node, worker)
    wait_for(lambda: node.status()[worker]["state"] == "RUNNING", 30, "the worker back")
    assert node.status()[worker]["description"].startswith("pid ")


@pytest.mark.slow
def test_a_node_follows_the_servers_declaration_with_jobs_in_flight_on_a_shared_queue(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str, database: str
) -> None:
    repo = AppRepo(short_tmp)
    server = server_stack(short_tmp, repo, queue_name, database, heartbeat=True)
    supervisord(server)
    assert server.ps("tick").code == 10
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    checkout = short_tmp / "node-checkout"
    git(short_tmp, "clone", "--quiet", str(repo.remote), str(checkout))
    git(checkout, "checkout", "--quiet", "--detach", rev1)
    node = node_stack(short_tmp, checkout, queue_name, database, follow=True)
    supervisord(node)
    assert node.ps("up").code == 0
    worker = "worker-" + queue_name.replace(".", "-")
    # The timer's first sighting of the declaration makes a tick: the node records rev1 and its worker is
    # restarted with PROTEA_REVISION=rev1 in its own environment.
    wait_for(lambda: worker_revision(node, worker) == rev1, 60, "the node on the declared rev1")

    # Jobs in flight on the queue both hosts consume, then the server deploys and declares rev2.
    publish(queue_name, 12, seconds=2.0)
    wait_for(lambda: "started" in node.log(worker) and "started" in server.log(worker), 20, "both busy")
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    deployed = server.ps("tick")
    assert deployed.code == 10 and f"declared {rev2[:10]}" in deployed.out, deployed.both
    verified = time.monotonic()
    wait_for(lambda: worker_revision(node, worker) == rev2, 30, "the node on rev2 within 30 s")
    followed = time.monotonic() - verified
    assert worker_revision(server, worker) == rev2
    assert git(checkout, "rev-parse", "HEAD") == rev2
    assert "following the declared" in node.log("deploy-tick")
    history = node.ps("deploys", "--json")
    assert history.code == 0 and rev2 in history.out and "following the declaration" in history.out
    print(f"the node ran rev2 {followed:.1f} s after the server's tick ended")

    # Every job finished exactly once, on either host, each under rev1 or rev2 and nothing else.
    def acks() -> list[list[str]]:
        found = []
        for stack in (server, node):
            path = stack.root / "acks.log"
            found += [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        return found

    wait_for(lambda: len(acks()) >= 12, 90, "every job acked")
    counted = collections.Counter(int(fields[0]) for fields in acks())
    assert sorted(counted) == list(range(12)) and set(counted.values()) == {1}, counted
    assert {fields[3] for fields in acks()} <= {rev1, rev2}
    assert {fields[3] for fields in acks() if fields[1] == worker} >= {rev1}

    # One view of both hosts, from either: both fresh, every worker on the declared revision.
    def fresh(view: dict[str, Any]) -> bool:
        hosts = {h["host"]: h for h in view["hosts"]}
        return set(hosts) == {"server-1", "gpu-1"} and not any(h["stale"] for h in hosts.values())

    wait_for(lambda: fresh(all_hosts(server)) and not all_hosts(server)["problems"], 30, "both hosts fresh")
    view = all_hosts(node)
    assert view["declared"]["revision"] == rev2
    node_beat = next(h for h in view["hosts"] if h["host"] == "gpu-1")
    assert node_beat["role"] == "node" and node_beat["revision"] == rev2
    assert [(p["name"], p["revision"]) for p in node_beat["processes"] if p["name"] == worker] == [
        (worker, rev2)
    ]
    text = server.ps("status", "--all-hosts").out
    assert "gpu-1" in text and "server-1" in text and "no problem found" in text, text
    # The server's metrics listener serves every host's view, with a host label.
    port = tomllib.loads(server.file.read_text())["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        scraped = response.read().decode()
    assert 'protea_host_heartbeat_age_seconds{host="gpu-1",role="node"}' in scraped
    assert f'protea_host_process_up{{group="{worker}",host="gpu-1",process="{worker}"}} 1.0' in scraped
    assert 'protea_host_processes_off_declared{host="gpu-1"} 0.0' in scraped
    # `queues` counts the consumers of both hosts against the workers RUNNING on both.
    checked = server.ps("queues", "--json")
    verdict = next(v for v in json.loads(checked.out) if v["name"] == queue_name)
    # (the broker's statistics lag by seconds: the queue may still read busy, never as a mismatch)
    assert (verdict["consumers"], verdict["running"]) == (2, 2) and verdict["status"] in ("ok", "idle"), (
        verdict
    )

    # An export on the server: a node defers a new declaration until the export ends, and refuses to scale
    # down meanwhile; it learns of the export from the server's heartbeat.
    def server_lock() -> str:
        beat = next(h for h in all_hosts(node)["hosts"] if h["host"] == "server-1")
        return str((beat.get("lock") or {}).get("owner", ""))

    assert server.ps("lock", "acquire", "export", "exp-1", "nightly export").code == 0
    wait_for(lambda: server_lock() == "export", 30, "the export in the server's heartbeat")
    rev3 = repo.commit("v3", {"VERSION": "v3\n"})
    digest = declared.migration_digest(repo.dev, rev3, "alembic/versions")
    declared.declare(database, "PROTEA_DB_URL", rev3, digest, "server-1")
    wait_for(lambda: "deferred: export task exp-1" in node.log("deploy-tick"), 30, "the node's tick deferred")
    assert worker_revision(node, worker) == rev2
    scale = node.ps("scale", queue_name, "0")
    assert scale.code == 2 and "export task exp-1 holds server-1's stack-owner lock" in scale.err, scale.both
    assert server.ps("lock", "release", "exp-1").code == 0
    wait_for(lambda: worker_revision(node, worker) == rev3, 60, "the node on rev3 once the export ended")

    # The node's supervisord killed: its heartbeat stops, and the view says so within 30 s.
    os.kill(int((node.root / "run" / "supervisord.pid").read_text()), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: any("gpu-1: no heartbeat" in p for p in all_hosts(server)["problems"]), 30, "gpu-1 stale"
    )
    print(f"the node's heartbeat was flagged stale {time.monotonic() - killed:.1f} s after the kill")
    assert "STALE" in server.ps("status", "--all-hosts").out


def test_a_singleton_another_host_holds_is_final_for_a_nodes_gate_and_follow_ticks(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str, database: str
) -> None:
    """The node also lists a singleton queue whose consumer runs on the server: its start is refused (exit
    78), and that is final. `up` finishes, the follow tick moves the node's other worker and leaves it
    running (it stopped every worker of the node and exit 50, again every few seconds), and `status` says
    why the singleton worker is down."""
    repo = AppRepo(short_tmp)
    rev1 = repo.commit("a migration", {"alembic/versions/001_init.py": "# init\n"})
    declared.declare(database, "PROTEA_DB_URL", rev1, declared.migration_digest(repo.dev, rev1, "alembic/versions"),
                     "server-1")  # fmt: skip
    single = f"{queue_name}.single"
    holder_env = short_tmp / "holder.env"
    holder_env.write_text(f"PROTEA_DB_URL={database}\n")
    holder_env.chmod(0o600)
    holder = subprocess.Popen(
        [str(BIN / "protea-supervisor"), "exec", "--env-file", str(holder_env), "--singleton", single,
         "--host-name", "server-1", "--", sys.executable, "-c", "import time; print('consuming', flush=True); "
         "time.sleep(300)"],
        env={**os.environ, "SUPERVISOR_PROCESS_NAME": "worker-single", "SUPERVISOR_GROUP_NAME": "worker-single"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "consuming"
        checkout = short_tmp / "node-checkout"
        git(short_tmp, "clone", "--quiet", str(repo.remote), str(checkout))
        git(checkout, "checkout", "--quiet", "--detach", rev1)
        node = node_stack(short_tmp, checkout, queue_name, database, follow=True, singleton=single)
        supervisord(node)
        up = node.ps("up")
        assert up.code == 0, up.both
        worker, refused_one = "worker-" + queue_name.replace(".", "-"), "worker-" + single.replace(".", "-")
        wait_for(lambda: worker_revision(node, worker) == rev1, 60, "the node's worker on the declared rev1")
        moved = node.status()[worker]["pid"]
        # The next follow ticks (every poll_interval, 5 s) find every worker that may run on rev1: they stay.
        wait_for(
            lambda: node.log("deploy-tick").count("decision: noop") >= 2, 40, "two follow ticks that stay"
        )
        assert node.status()[worker]["pid"] == moved and node.status()[worker]["state"] == "RUNNING"
        assert "stopping workers" not in node.log("deploy-tick"), node.log("deploy-tick")[-2000:]
        text = node.ps("status").out
        line = next(row for row in text.splitlines() if row.startswith(refused_one))
        assert "refused: " in line and "server-1" in line, text
    finally:
        holder.kill()
        holder.wait()
