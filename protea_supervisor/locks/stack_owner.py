"""The stack-owner lock: the advisory JSON lock that keeps deploys away from long exports.

File-compatible with agent-farm's `stack_owner.sh`: a JSON object with exactly `owner`, `task_id`,
`acquired_at` and `reason`, written as `json.dumps(record, indent=2, sort_keys=True)` plus a newline,
guarded by a flock on `<file>.lock`. The decisions are pure functions; `LockFile` does the I/O.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protea_supervisor.errors import LockContention, LockCorrupt, LockMismatch, LockTimeout, UsageError
from protea_supervisor.stackfile.files import write_atomic
from protea_supervisor.stackfile.stack import Stack

OWNERS = ("free", "deploy", "export")
KEYS = ("acquired_at", "owner", "reason", "task_id")
FILE_ENV = "STACK_OWNER_FILE"
ROOT_ENV = "AGENT_FARM_ROOT"
TIMEOUT_ENV = "STACK_OWNER_FLOCK_TIMEOUT_SEC"
# A flock held longer than this is a stuck holder, not contention.
MAX_FLOCK_TIMEOUT = 3600


@dataclass(frozen=True)
class LockRecord:
    owner: str
    task_id: str
    acquired_at: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def is_free(self) -> bool:
        return self.owner == "free"


FREE = LockRecord(owner="free", task_id="", acquired_at="", reason="")


def timestamp(now: datetime) -> str:
    """UTC ISO-8601 to the second, as `date -u -Iseconds` writes it: 2026-05-20T14:00:00+00:00."""
    return now.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_record(text: str, path: Path) -> LockRecord:
    """A record from file text; anything else is corrupt, never free."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as why:
        raise LockCorrupt(
            f"lock file {path} is not valid JSON ({why.msg} at line {why.lineno}); fix or remove it by hand."
        ) from None
    if not isinstance(data, dict) or sorted(data) != list(KEYS):
        raise LockCorrupt(f"lock file {path} must hold exactly the keys {', '.join(KEYS)}.")
    if not all(isinstance(data[k], str) for k in KEYS):
        raise LockCorrupt(f"lock file {path}: every value must be a string.")
    if data["owner"] not in OWNERS:
        raise LockCorrupt(
            f"lock file {path}: owner must be one of {', '.join(OWNERS)}, got {data['owner']!r}."
        )
    return LockRecord(**data)


def decide_acquire(current: LockRecord, owner: str, task_id: str, reason: str, now: datetime) -> LockRecord:
    """The record after `owner`/`task_id` asks for the lock. Same holder again: unchanged (idempotent)."""
    if owner not in ("deploy", "export"):
        raise UsageError(f"owner must be deploy or export, got {owner!r}.")
    if not task_id:
        raise UsageError("task id must not be empty.")
    if current.is_free:
        return LockRecord(owner=owner, task_id=task_id, acquired_at=timestamp(now), reason=reason)
    if current.owner == owner and current.task_id == task_id:
        return current
    raise LockContention(
        f"stack-owner lock is held by {current.owner} task {current.task_id} since {current.acquired_at} "
        f"({current.reason})."
    )


def decide_release(current: LockRecord, task_id: str, now: datetime) -> LockRecord | None:
    """The record after `task_id` releases; None when the lock is already free (nothing to write)."""
    if not task_id:
        raise UsageError("task id must not be empty.")
    if current.is_free:
        return None
    if current.task_id != task_id:
        raise LockMismatch(
            f"task {task_id} does not hold the stack-owner lock; {current.owner} task {current.task_id} does."
        )
    return LockRecord(owner="free", task_id="", acquired_at=timestamp(now), reason=f"released by {task_id}")


def resolve_path(option: str | None, environ: Mapping[str, str], stack_default: Path) -> Path:
    """Where the shell tool looks, in its order: --file, then $STACK_OWNER_FILE, then
    $AGENT_FARM_ROOT/state/stack-owner.json; only then the stack description's lock.file."""
    chosen = option or environ.get(FILE_ENV) or ""
    if chosen:
        return Path(chosen).expanduser()
    if environ.get(ROOT_ENV):
        return Path(environ[ROOT_ENV]).expanduser() / "state" / "stack-owner.json"
    return stack_default


def resolve_timeout(option: float | None, environ: Mapping[str, str], stack_default: float) -> float:
    if option is not None:
        value, where = option, "--timeout"
    else:
        raw = environ.get(TIMEOUT_ENV)
        if raw is None or raw == "":
            return stack_default
        where = TIMEOUT_ENV
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_FLOCK_TIMEOUT:
        raise UsageError(
            f"{where} must be a number of seconds above 0 and at most {MAX_FLOCK_TIMEOUT}, got {value!r}."
        )
    return value


class LockFile:
    """The lock file on disk. Every read-modify-write holds flock on `<file>.lock`, as the shell tool does."""

    def __init__(self, path: Path, timeout: float, clock: Callable[[], datetime] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.clock = clock or (lambda: datetime.now(UTC))

    def read(self) -> LockRecord:
        """Read without the flock (as `stack_owner_current` does); a missing file is free."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return FREE
        except (OSError, UnicodeDecodeError) as why:
            raise LockCorrupt(f"lock file {self.path} cannot be read ({why}).") from None
        return parse_record(text, self.path)

    def _guarded(self, change: Callable[[LockRecord], LockRecord | None]) -> LockRecord:
        import filelock  # here: reading the lock (status, every start of a command) does not need it

        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = filelock.FileLock(str(self.path) + ".lock", timeout=self.timeout)
        try:
            with guard:
                current = self.read()
                updated = change(current)
                if updated is not None and updated != current:
                    # 0600, as the shell tool's mktemp + mv leaves it.
                    write_atomic(self.path, updated.to_json(), mode=0o600)
                return updated if updated is not None else current
        except filelock.Timeout:
            raise LockTimeout(
                f"flock contention on {self.path}.lock (>{self.timeout:g}s); "
                "the holder is stuck or has crashed."
            ) from None

    def acquire(self, owner: str, task_id: str, reason: str) -> LockRecord:
        return self._guarded(lambda current: decide_acquire(current, owner, task_id, reason, self.clock()))

    def release(self, task_id: str) -> LockRecord:
        return self._guarded(lambda current: decide_release(current, task_id, self.clock()))


def stack_lock(stack: Stack, environ: Mapping[str, str]) -> LockFile:
    """A stack's stack-owner lock file as the shell tool finds it (see resolve_path), for the commands and
    the listeners alike."""
    return LockFile(
        resolve_path(None, environ, stack.lock.file), resolve_timeout(None, environ, stack.lock.flock_timeout)
    )


def export_holder(lock: LockFile) -> LockRecord | None:
    """The record when an export holds the lock, for commands that would interrupt it."""
    record = lock.read()
    return record if record.owner == "export" else None


def lock_document(lock_file: Path) -> dict[str, Any]:
    """The lock as it is: a corrupt file is `corrupt`, never `free`."""
    try:
        record = LockFile(lock_file, 5).read()
    except LockCorrupt:
        return {"owner": "corrupt", "task_id": ""}
    doc: dict[str, Any] = {"owner": record.owner, "task_id": record.task_id}
    if record.acquired_at:
        with contextlib.suppress(ValueError):
            doc["since"] = datetime.fromisoformat(record.acquired_at).timestamp()
    return doc
