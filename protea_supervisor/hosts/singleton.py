"""A singleton queue's one consumer across every host: a Postgres session advisory lock, taken before the exec
wrapper execs the worker and held for the worker's whole life.

The wrapper starts the keeper (`singleton_keeper`) in its own session (so the stop signal supervisord sends
the worker's group does not end it before the worker has finished its job), with its stdin a pipe. The
keeper asks `pg_try_advisory_lock` in a psql session; Postgres grants it to exactly one session, so two
hosts starting at the same instant cannot both get it. On `t` the pipe's write end is kept open across the
exec: the worker (same pid) holds it, and when the worker exits, however it exits, the keeper reads
end-of-file and ends its session, and Postgres releases the lock. A session that is lost while the worker
runs (a restarted Postgres, a cut network, `pg_terminate_backend`) is replaced at once and the lock taken
again; if another consumer took it meanwhile, the worker is stopped. On `f` the holder is looked up by the
lock's keys in `pg_locks`; its `application_name` names its host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Mapping

from protea_supervisor.errors import BackupFailed, RevisionRefused
from protea_supervisor.hosts import broker
from protea_supervisor.hosts.declared import DeclarationUnavailable
from protea_supervisor.operations.backup import target_from_url

CLASS_KEY = 0x50535331  # "PSS1": protea-supervisor singletons, the first of pg_try_advisory_lock's two keys
APP_PREFIX = "protea-singleton"
OWN_RELEASE_WAIT = 10.0  # seconds a restarted worker waits for its own previous session's lock to go
_HELD: list[subprocess.Popen[bytes]] = []  # the lock's keeper, until this process execs the worker


def queue_key(queue: str) -> int:
    """The second key: the queue name's CRC-32 as a signed 32-bit integer (what the two-int form takes)."""
    crc = zlib.crc32(queue.encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def hold(
    url: str,
    variable: str,
    queue: str,
    host: str,
    environ: Mapping[str, str],
    broker_variable: str,
    wait: float,
) -> str:
    """Take the queue's lock for this process's lifetime, then wait (up to `wait` seconds) until RabbitMQ
    counts no consumer of the queue (`broker_variable` names it), so that a holder whose lock was lost and
    who is finishing its job is never joined by a second; returns the holder's line for the log. Raises
    RevisionRefused (exit 78) naming the host that holds the lock, or the consumer that did not leave, or
    DeclarationUnavailable (75) when Postgres cannot be asked."""
    if not url:
        raise DeclarationUnavailable(
            f"{variable} is not set in the env files: singleton queue {queue} takes its lock in the server's "
            f'Postgres (queues."{queue}".singleton; the shipped stack makes protea.embeddings one).'
        )
    try:
        target = target_from_url(url, variable)
    except BackupFailed as why:
        raise DeclarationUnavailable(str(why)) from None
    process = environ.get("SUPERVISOR_PROCESS_NAME", "worker")
    own = f"{APP_PREFIX} {host} {process}"[:63]
    env = {**os.environ, **target.env(), "PGAPPNAME": own, "PGCONNECT_TIMEOUT": "5"}
    # Its stderr is the worker's log (inherited): an error now, a lost session later, is written there.
    keeper = subprocess.Popen(
        [sys.executable, "-P", "-m", "protea_supervisor.hosts.singleton_keeper",
         "--queue", queue, "--own", own, "--worker", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    assert keeper.stdin and keeper.stdout
    answer = keeper.stdout.readline().decode().strip()
    keeper.stdout.close()
    if answer == "t":
        # Kept open across exec: the worker holds the pipe for as long as it lives. The Popen object is
        # kept too, so that nothing closes the pipe between here and the exec.
        os.set_inheritable(keeper.stdin.fileno(), True)
        _HELD.append(keeper)
        alone = _alone(environ.get(broker_variable, ""), broker_variable, queue, wait, keeper)
        return f"singleton {queue}: this process is its one consumer (lock kept by pid {keeper.pid}){alone}"
    keeper.stdin.close()
    keeper.wait()
    if answer.startswith("f "):
        raise RevisionRefused(
            f"singleton queue {queue} already has its consumer ({answer[2:]}); not starting a second "
            "(exit 78)."
        )
    problem = (
        answer[2:] if answer.startswith("? ") else "the lock's keeper gave no answer (its error is above)"
    )
    raise DeclarationUnavailable(f"singleton {queue}: {problem}")


def _alone(url: str, variable: str, queue: str, wait: float, keeper: subprocess.Popen[bytes]) -> str:
    """'' or what the log should add once the broker counts no other consumer; refused (the lock given
    back) when one is still there after `wait` seconds."""
    if not url:
        return f"; {variable} is not set, so the broker's count of its consumers was not checked"
    count = broker.wait_alone(url, queue, wait)
    if count.consumers is None:
        return f"; the broker's count of its consumers was not checked: {count.why}"
    if count.consumers:
        _HELD.remove(keeper)
        assert keeper.stdin
        keeper.stdin.close()  # the keeper ends its session: the lock is free again
        keeper.wait()
        raise RevisionRefused(
            f"singleton queue {queue} still has {count.consumers} consumer(s) on the broker {wait:.0f} s "
            "after this process took its lock (one whose lock was lost, finishing its job); not starting a "
            "second (exit 78)."
        )
    return f"; waited {count.waited:.1f} s for the previous consumer to leave" if count.waited else ""


def holder(target_env: Mapping[str, str], queue: str) -> str:
    name = holder_name(target_env, queue)
    if name.startswith(APP_PREFIX + " "):
        host, _, process = name.removeprefix(APP_PREFIX + " ").partition(" ")
        return f"{process} on host {host}"
    return "held by a session that is not a protea-supervisor worker" if name else "its holder just left"


def holder_name(target_env: Mapping[str, str], queue: str) -> str:
    """The application_name of the session holding the queue's lock ('' when none does)."""
    objid = queue_key(queue) & 0xFFFFFFFF
    query = (
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {CLASS_KEY} AND l.objid = {objid} "
        "AND l.objsubid = 2"
    )
    result = subprocess.run(
        ["psql", "-X", "-q", "-tA", "-c", query],
        env={**os.environ, **target_env, "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
