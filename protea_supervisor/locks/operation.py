"""The operation lock: one change to a host's stack at a time.

Every command that changes the stack (`up`, `down`, `scale`, `reload`, `render`, `tick`, `gate retry`,
`restore`) holds it for its whole run, and the tunnel watchdog takes it for a restart. It is internal to
protea-supervisor and separate from the stack-owner lock, which stays the contract with the export tool.

A `flock` on `<run>/operation.lock` is the exclusion: the kernel drops it when the holder dies, so a
`kill -9` never leaves the host locked. Who holds it (command, pid, since) is in `<run>/operation.json`,
written after the flock is taken, so a waiting command can name the holder. The fd is not inherited by
children (PEP 446), so a supervisord started by `up` does not keep the lock after `up` exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from protea_supervisor.errors import OperationBusy, UsageError
from protea_supervisor.stackfile.files import write_atomic

LOCK_FILE = "operation.lock"
HOLDER_FILE = "operation.json"
WAIT_ENV = "PROTEA_LOCK_WAIT"
PROGRESS_EVERY = 2.0
POLL = 0.1


@dataclass(frozen=True)
class Kind:
    """Which lock: its files in the directory it guards, and how a waiting command names it."""

    name: str  # <name>.lock and <name>.json
    title: str  # "the host's operation lock"
    doing: str  # "{who} is changing the stack"


OPERATION = Kind(
    "operation", "the host's operation lock", "waiting for the host: {who} is changing the stack"
)
BACKUP = Kind("backup", "the backup lock", "waiting: {who} is writing a backup here")


@dataclass(frozen=True)
class Holder:
    command: str
    pid: int
    since: float
    # What the holder promises not to touch, so a listener may still act on it (a tick never touches the
    # tunnel, so the watchdog may restart a dead tunnel during a long build).
    spares: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid}) since {datetime.fromtimestamp(self.since):%H:%M:%S}"


def read_holder(run_dir: Path, kind: Kind = OPERATION) -> Holder | None:
    """The recorded holder, when its process is still alive (a dead one cannot hold the flock)."""
    try:
        doc = json.loads((run_dir / f"{kind.name}.json").read_text(encoding="utf-8"))
        holder = Holder(
            command=str(doc["command"]),
            pid=int(doc["pid"]),
            since=float(doc["since"]),
            spares=tuple(str(s) for s in doc.get("spares", [])),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return holder if _alive(holder.pid) else None


def resolve_wait(option: float | None, environ: dict[str, str], stack_default: float) -> float:
    """--lock-wait, then $PROTEA_LOCK_WAIT, then the stack's control.operation_wait."""
    if option is not None:
        value, where = option, "--lock-wait"
    elif environ.get(WAIT_ENV):
        where = WAIT_ENV
        try:
            value = float(environ[WAIT_ENV])
        except ValueError:
            raise UsageError(f"{WAIT_ENV} must be a number of seconds, got {environ[WAIT_ENV]!r}.") from None
    else:
        return stack_default
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{where} must be a finite number of seconds, at least 0, got {value!r}.")
    return value


# Depth of the lock held by this process: a command that calls another part holding it (the tick runs
# the gate) does not wait for itself.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def operation(
    run_dir: Path,
    command: str,
    wait: float,
    report: Callable[[str], None],
    spares: tuple[str, ...] = (),
    clock: Callable[[], float] = time.monotonic,
    kind: Kind = OPERATION,
) -> Iterator[None]:
    """Hold the host's operation lock (or another `kind` of lock over a directory) for the block; wait up to
    `wait` s for another holder, saying who it is at least every 2 s; raise OperationBusy after that."""
    key = (run_dir / kind.name).resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(run_dir / f"{kind.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _take(fd, run_dir, wait, report, clock, kind)
        _held[key] = 1
        holder = Holder(command=command, pid=os.getpid(), since=time.time(), spares=spares)
        write_atomic(run_dir / f"{kind.name}.json", json.dumps(asdict(holder)) + "\n", mode=0o600)
        try:
            yield
        finally:
            _held.pop(key, None)
            with contextlib.suppress(OSError):
                (run_dir / f"{kind.name}.json").unlink()
    finally:
        os.close(fd)  # closing the only fd on the open file drops the flock


@contextlib.contextmanager
def attempt(run_dir: Path, command: str, acts_on: str) -> Iterator[Holder | None]:
    """Take the lock without waiting, for a listener's own action on `acts_on` (the tunnel). Yields None when
    the action may go ahead (the lock was free, or its holder spares `acts_on`), else the holder."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(run_dir)
            yield None if holder is not None and acts_on in holder.spares else holder
            return
        yield None
    finally:
        os.close(fd)


def _take(fd: int, run_dir: Path, wait: float, report: Callable[[str], None],
          clock: Callable[[], float], kind: Kind) -> None:  # fmt: skip
    began = clock()
    said_at = -math.inf
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = clock()
        holder = read_holder(run_dir, kind)
        who = holder.describe() if holder else "another protea-supervisor command"
        if now - began >= wait:
            raise OperationBusy(
                f"another operation holds {kind.title} ({run_dir / f'{kind.name}.lock'}): {who}; "
                f"waited {now - began:.0f} s (--lock-wait or {WAIT_ENV} sets the bound)."
            )
        if now - said_at >= PROGRESS_EVERY:
            report(f"{kind.doing.format(who=who)} ({now - began:.0f} s)")
            said_at = now
        time.sleep(POLL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
