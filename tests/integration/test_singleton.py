"""A singleton queue's one consumer across hosts: the exec wrapper's Postgres advisory lock, on this
machine's real Postgres, raced by two "hosts" starting at the same instant, twenty times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, wait_for
from rabbit import AMQP, connect, publish
from rabbit import WORKER as RABBIT_WORKER

from protea_supervisor.hosts.singleton import CLASS_KEY, queue_key

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


def lock_holder(queue: str) -> tuple[int, str] | None:
    """(backend pid, application_name) of the session holding the queue's lock, from pg_locks."""
    objid = queue_key(queue) & 0xFFFFFFFF
    sql = (
        "SELECT l.pid || ' ' || a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {CLASS_KEY} AND l.objid = {objid}"
    )
    out = subprocess.run(["psql", "-X", "-qtA", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not out:
        return None
    pid, _, name = out.splitlines()[0].partition(" ")
    return int(pid), name


def test_a_lost_lock_session_is_replaced_at_once_or_the_worker_stops_if_another_took_the_lock(
    tmp_path: Path,
) -> None:
    """The lock's Postgres session ended under a running worker (as by a restarted Postgres or a cut
    network): the keeper takes the lock again in a new session within about a second; when another session
    took the lock first, the worker is sent SIGTERM, so two consumers never run on."""
    env_file = tmp_path / "protea.env"
    env_file.write_text("PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres\n")
    env_file.chmod(0o600)
    queue = f"test.singleton.{uuid.uuid4().hex[:8]}"
    worker = start(env_file, tmp_path / "server-1", queue, "server-1")
    thief = None
    try:
        assert worker.stdout and worker.stdout.readline().strip() == "consuming"
        first = lock_holder(queue)
        assert first is not None and first[1] == "protea-singleton server-1 worker-server-1"
        subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
                        f"SELECT pg_terminate_backend({first[0]})"], check=True, capture_output=True)  # fmt: skip
        wait_for(lambda: (lock_holder(queue) or (first[0], ""))[0] != first[0], 10, "the lock taken again")
        again = lock_holder(queue)
        assert again is not None and again[1] == first[1] and worker.poll() is None

        # Ended again, and another session takes the lock in that instant: this worker must go.
        thief = subprocess.Popen(["psql", "-X", "-qtA", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert thief.stdin and thief.stdout
        thief.stdin.write(f"SELECT pg_terminate_backend({again[0]});\n"
                          f"SELECT pg_advisory_lock({CLASS_KEY}, {queue_key(queue)}); SELECT 'held';\n")  # fmt: skip
        thief.stdin.flush()
        wait_for(lambda: thief.stdout.readline().strip() == "held", 10, "the other session's lock")  # type: ignore[union-attr]
        assert worker.wait(timeout=15) == -signal.SIGTERM
        said = worker.stderr.read() if worker.stderr else ""
        assert "was lost; taking the lock again" in said and "lock is held again" in said, said
        assert "was taken by" in said and "stopping this worker" in said, said
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        if thief is not None:
            thief.kill()
            thief.wait()


def test_a_host_that_takes_a_lost_lock_starts_only_once_the_old_consumer_left_the_broker(
    tmp_path: Path, queue_name: str
) -> None:
    """A holder's lock session is lost and another host takes the lock before the holder's keeper does:
    the holder is told to stop and finishes its job in hand, still a consumer of the queue. The new holder
    starts consuming only once RabbitMQ counts no other consumer, so the broker never counts two (sampled
    every 50 ms by a passive declare); its log says how long it waited."""
    env_file = tmp_path / "protea.env"
    env_file.write_text(
        f"PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres\nPROTEA_AMQP_URL={AMQP}\n"
    )
    env_file.chmod(0o600)
    publish(queue_name, 1, seconds=10.0)  # the holder's job in hand when its lock goes

    def worker(host: str) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"{host}.log"
        argv = [
            str(BIN / "protea-supervisor"), "exec", "--env-file", str(env_file), "--singleton", queue_name,
            "--host-name", host, "--refusals", str(tmp_path / host), "--singleton-wait", "30", "--",
            sys.executable, "-P", str(RABBIT_WORKER), "--queue", queue_name, "--record", str(tmp_path / "acks.log"),
        ]  # fmt: skip
        env = {**os.environ, "SUPERVISOR_PROCESS_NAME": f"worker-{host}", "SUPERVISOR_GROUP_NAME": "worker"}
        with log.open("w") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True), log

    counts: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        connection = connect()
        while not sampling.is_set():
            counts.append(connection.channel().queue_declare(queue_name, passive=True).method.consumer_count)
            sampling.wait(0.05)
        connection.close()

    old, old_log = worker("server-1")
    new = thief = None
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_for(lambda: "job 0 started" in old_log.read_text(), 30, "the holder's job in hand")
        sampler.start()
        held = lock_holder(queue_name)
        assert held is not None
        # Another session ends the holder's and takes the lock in that instant; the holder's keeper finds it
        # taken and tells its worker to stop, which finishes its 10 s job first.
        thief = subprocess.Popen(["psql", "-X", "-qtA", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert thief.stdin and thief.stdout
        key = f"{CLASS_KEY}, {queue_key(queue_name)}"
        thief.stdin.write(
            f"SELECT pg_terminate_backend({held[0]});\nSELECT pg_advisory_lock({key}); SELECT 'held';\n"
        )
        thief.stdin.flush()
        wait_for(lambda: thief.stdout.readline().strip() == "held", 10, "the other session's lock")  # type: ignore[union-attr]
        wait_for(lambda: "stopping this worker" in old_log.read_text(), 15, "the holder told to stop")
        # The lock passes to a second host's worker while the first still finishes its job.
        thief.stdin.write(f"SELECT pg_advisory_unlock({key});\n")
        thief.stdin.flush()
        new, new_log = worker("gpu-1")
        wait_for(lambda: "consuming" in new_log.read_text(), 30, "the new holder consuming")
        assert old.wait(timeout=15) == 0, old_log.read_text()
        wait_for(lambda: "job 0 done after TERM" in old_log.read_text(), 5, "the old job finished")
        sampling.set()
        sampler.join(timeout=10)
        # The broker never counted two consumers.
        assert counts and max(counts) == 1, counts
        said = new_log.read_text()
        assert "this process is its one consumer" in said and "for the previous consumer to leave" in said, (
            said
        )
    finally:
        sampling.set()
        for process in (old, new, thief):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
