"""A singleton queue's one consumer across hosts: the exec wrapper's Postgres advisory lock, on this
machine's real Postgres, raced by two "hosts" starting at the same instant, twenty times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, wait_for

pytestmark = pytest.mark.integration

# The worker: says it consumes, then waits to be killed.
WORKER = "import time; print('consuming', flush=True); time.sleep(120)"


def start(env_file: Path, refusals: Path, queue: str, host: str) -> subprocess.Popen[str]:
    argv = [
        str(BIN / "protea-supervisor"), "exec", "--env-file", str(env_file), "--singleton", queue,
        "--host-name", host, "--refusals", str(refusals), "--", sys.executable, "-c", WORKER,
    ]  # fmt: skip
    env = {**os.environ, "SUPERVISOR_PROCESS_NAME": f"worker-{host}", "SUPERVISOR_GROUP_NAME": "worker"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_hosts_starting_a_singleton_queue_at_once_get_one_consumer_every_time(tmp_path: Path) -> None:
    env_file = tmp_path / "protea.env"
    env_file.write_text("PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres\n")
    env_file.chmod(0o600)
    queue = f"test.singleton.{uuid.uuid4().hex[:8]}"
    winners = []
    for _ in range(20):
        pair = [start(env_file, tmp_path / host, queue, host) for host in ("server-1", "gpu-1")]
        try:
            # The loser exits 78 naming the winner; the winner consumes.
            wait_for(lambda p=pair: sum(x.poll() is not None for x in p) == 1, 30, "one of the two refused")
            loser = next(p for p in pair if p.poll() is not None)
            winner = next(p for p in pair if p.poll() is None)
            assert winner.stdout and winner.stdout.readline().strip() == "consuming"
            assert loser.returncode == 78
            won = "server-1" if winner is pair[0] else "gpu-1"
            lost = "gpu-1" if won == "server-1" else "server-1"
            assert f"already has its consumer (worker-{won} on host {won})" in (
                loser.stderr.read() if loser.stderr else ""
            )
            record = (tmp_path / lost / f"worker:worker-{lost}").read_text()
            assert f"worker-{won} on host {won}" in record
            winners.append(won)
        finally:
            for process in pair:
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGKILL)  # the lock goes with its holder, however it ends
                process.wait()
    assert len(winners) == 20

    # The lock lasts as long as the worker: a start long after the first one's is refused too, and once the
    # first worker is gone (however it ended) its own restart gets it, even if it asks before Postgres has
    # closed the dead one's session (it waits for its own old lock, never for another's).
    first = start(env_file, tmp_path / "server-1", queue, "server-1")
    try:
        assert first.stdout and first.stdout.readline().strip() == "consuming"
        later = start(env_file, tmp_path / "gpu-1", queue, "gpu-1")
        assert later.wait(timeout=30) == 78
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    again = start(env_file, tmp_path / "server-1", queue, "server-1")
    try:
        assert again.stdout and again.stdout.readline().strip() == "consuming"
    finally:
        os.kill(again.pid, signal.SIGKILL)
        again.wait()
