"""The keeper of a singleton queue's lock: a small process the exec wrapper starts before it execs the
worker, in its own session, that takes the Postgres advisory lock and keeps it for the worker's life.

It answers the wrapper one line on stdout: `t` (the lock is this worker's), `f <holder>` (another consumer
holds it) or `? <why>` (Postgres could not be asked). Then it watches two things every second:
- its stdin, a pipe whose write end the worker holds: end-of-file means the worker is gone, however it ended,
  and the keeper ends its session, which frees the lock;
- its Postgres session (`SELECT 1`): a session that was lost (ended by `pg_terminate_backend`, a restarted
  Postgres, a cut network) no longer holds the lock, so the keeper takes it again at once in a new session,
  trying every second while Postgres does not answer. If another consumer took it meanwhile, the keeper
  sends the worker SIGTERM (it finishes its job and exits; its restart is then refused, exit 78), so two
  consumers never run on for longer than a job.

Its log lines go to stderr, the worker's log. Run by `singleton.hold`; not a command of its own.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from protea_supervisor.hosts.singleton import CLASS_KEY, OWN_RELEASE_WAIT, holder, holder_name, queue_key

CHECK = 1.0  # seconds between looks at the worker's pipe and the session
ANSWER_WAIT = 5.0  # seconds a session has to answer a query


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} singleton keeper: {message}", file=sys.stderr, flush=True)


class Session:
    """One psql session (PGAPPNAME names the host and process)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.psql = subprocess.Popen(
            ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env),
        )

    def ask(self, sql: str) -> str:
        """The first line of the answer; '' when the session is gone or does not answer in time."""
        assert self.psql.stdin and self.psql.stdout
        try:
            self.psql.stdin.write(f"{sql}\n".encode())
            self.psql.stdin.flush()
        except OSError:
            return ""
        ready, _, _ = select.select([self.psql.stdout], [], [], ANSWER_WAIT)
        return self.psql.stdout.readline().decode().strip() if ready else ""

    def close(self) -> None:
        if self.psql.poll() is None:
            self.psql.kill()
        self.psql.wait()


def take(env: Mapping[str, str], queue: str, own: str) -> tuple[str, Session | None]:
    """('t', session) when the lock is this session's; ('f <holder>', None) when another holds it (a lock
    under this very process's name is its previous session's, which Postgres drops within moments: waited
    for); ('? <why>', None) when Postgres did not answer."""
    session = Session(env)
    end = time.monotonic() + OWN_RELEASE_WAIT
    while True:
        answer = session.ask(f"SELECT pg_try_advisory_lock({CLASS_KEY}, {queue_key(queue)});")
        if answer == "t":
            return "t", session
        if answer != "f":
            session.close()
            return "? psql gave no answer (its error is above)", None
        if holder_name(env, queue) != own or time.monotonic() > end:
            session.close()
            return f"f {holder(env, queue)}", None
        time.sleep(0.1)


def worker_gone() -> bool:
    """The worker's pipe at end-of-file (or broken); anything written to it is read and ignored."""
    ready, _, _ = select.select([sys.stdin], [], [], CHECK)
    if not ready:
        return False
    try:
        return not os.read(sys.stdin.fileno(), 4096)
    except OSError:
        return True


def keep(env: Mapping[str, str], queue: str, own: str, worker: int, session: Session) -> None:
    while not worker_gone():
        if session.psql.poll() is None and session.ask("SELECT 1;") == "1":
            continue
        session.close()
        log(f"the Postgres session holding {queue}'s lock was lost; taking the lock again")
        while True:
            verdict, fresh = take(env, queue, own)
            if fresh is not None:
                log(f"{queue}'s lock is held again")
                session = fresh
                break
            if verdict.startswith("f "):
                log(f"{queue}'s lock was taken by {verdict[2:]} meanwhile: stopping this worker (SIGTERM)")
                os.kill(worker, signal.SIGTERM)
                return
            if worker_gone():
                return
    session.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="protea_supervisor.hosts.singleton_keeper")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--own", required=True, help="this worker's application_name")
    parser.add_argument("--worker", type=int, required=True, help="the worker's pid (the wrapper's own)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    verdict, session = take(env, args.queue, args.own)
    print(verdict, flush=True)
    sys.stdout.close()
    if session is not None:
        keep(env, args.queue, args.own, args.worker, session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
