"""A singleton queue's one consumer across every host: a Postgres session advisory lock, taken by the exec
wrapper before it execs the worker and held for the worker's whole life.

The wrapper starts a `psql` reading its stdin from a pipe and asks `pg_try_advisory_lock`; Postgres grants
it to exactly one session, so two hosts starting at the same instant cannot both get it. On `t` the pipe's
write end is kept open across the exec: the worker (same pid) holds it, and when the worker exits, however it
exits, the pipe closes, psql reads end-of-file and ends its session, and Postgres releases the lock. psql runs
in its own session (process group), so the stop signal supervisord sends the worker's group does not end it
before the worker has finished its job. On `f` the holder is looked up by the lock's keys in `pg_locks`; its
`application_name` names its host.

Known limit: a lost connection to Postgres ends the session and frees the lock while the worker still runs.
RabbitMQ's single-active-consumer (`x-single-active-consumer` in the queue's declaration, which PROTEA's
worker would have to set when it declares its queues) would hold even then; see the README.
"""

from __future__ import annotations

import os
import subprocess
import time
import zlib
from collections.abc import Mapping

from protea_supervisor.backup import target_from_url
from protea_supervisor.declared import DeclarationUnavailable
from protea_supervisor.errors import BackupFailed, RevisionRefused

CLASS_KEY = 0x50535331  # "PSS1": protea-supervisor singletons, the first of pg_try_advisory_lock's two keys
APP_PREFIX = "protea-singleton"
OWN_RELEASE_WAIT = 10.0  # seconds a restarted worker waits for its own previous session's lock to go
_HELD: list[subprocess.Popen[bytes]] = []  # the lock's psql, until this process execs the worker


def queue_key(queue: str) -> int:
    """The second key: the queue name's CRC-32 as a signed 32-bit integer (what the two-int form takes)."""
    crc = zlib.crc32(queue.encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def hold(url: str, variable: str, queue: str, host: str, environ: Mapping[str, str]) -> str:
    """Take the queue's lock for this process's lifetime; returns the holder's line for the log. Raises
    RevisionRefused (exit 78) naming the host that holds it, or DeclarationUnavailable (75) when Postgres
    cannot be asked."""
    if not url:
        raise DeclarationUnavailable(f"{variable} is not set in the env files (the server's Postgres).")
    try:
        target = target_from_url(url, variable)
    except BackupFailed as why:
        raise DeclarationUnavailable(str(why)) from None
    process = environ.get("SUPERVISOR_PROCESS_NAME", "worker")
    env = {
        **os.environ,
        **target.env(),
        "PGAPPNAME": f"{APP_PREFIX} {host} {process}"[:63],
        "PGCONNECT_TIMEOUT": "5",
    }
    # Its stderr is the worker's log (inherited): an error now, or a lost connection later, is written there.
    psql = subprocess.Popen(
        ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert psql.stdin and psql.stdout
    own = f"{APP_PREFIX} {host} {process}"[:63]
    end = time.monotonic() + OWN_RELEASE_WAIT
    while True:
        psql.stdin.write(f"SELECT pg_try_advisory_lock({CLASS_KEY}, {queue_key(queue)});\n".encode())
        psql.stdin.flush()
        answer = psql.stdout.readline().decode().strip()
        # Held under this very process's name: its previous run (just restarted) whose session Postgres has
        # not closed yet. It goes within moments; anyone else's lock is a refusal at once.
        if answer != "f" or _holder_name(target.env(), queue) != own or time.monotonic() > end:
            break
        time.sleep(0.1)
    if answer == "t":
        # Kept open across exec: the worker holds the session for as long as it lives. The Popen object is
        # kept too, so that nothing closes the pipe between here and the exec.
        os.set_inheritable(psql.stdin.fileno(), True)
        _HELD.append(psql)
        psql.stdout.close()
        return f"singleton {queue}: this process is its one consumer (lock held by psql pid {psql.pid})"
    psql.stdin.close()
    psql.wait()
    if answer != "f":
        raise DeclarationUnavailable(f"singleton {queue}: psql gave no answer (its error is above)")
    holder = _holder(target.env(), queue)
    raise RevisionRefused(
        f"singleton queue {queue} already has its consumer ({holder}); not starting a second (exit 78)."
    )


def _holder(target_env: Mapping[str, str], queue: str) -> str:
    name = _holder_name(target_env, queue)
    if name.startswith(APP_PREFIX + " "):
        host, _, process = name.removeprefix(APP_PREFIX + " ").partition(" ")
        return f"{process} on host {host}"
    return "held by a session that is not a protea-supervisor worker" if name else "its holder just left"


def _holder_name(target_env: Mapping[str, str], queue: str) -> str:
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
