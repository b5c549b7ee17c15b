"""Domain errors. Each carries the exit code the CLI turns it into; nothing below the CLI exits."""

from __future__ import annotations

import errno

from protea_supervisor import exitcodes


class ProteaError(Exception):
    """An expected failure with a one-sentence message for the operator."""

    exit_code = exitcodes.BAD_INPUT


class UsageError(ProteaError):
    """Bad arguments on the command line."""


class StackError(ProteaError):
    """The stack description is invalid: names the file, the key and what was expected."""


class RenderError(ProteaError):
    """The rendered configuration would be refused by supervisord."""


class EnvError(ProteaError):
    """An env file or a required variable is wrong. Exit 78 is "configuration error: do not restart"."""

    exit_code = exitcodes.CONFIG


class RevisionRefused(ProteaError):
    """The revision guard refused a worker's start: its checkout is dirty or not the revision it must run."""

    exit_code = exitcodes.CONFIG


class LockContention(ProteaError):
    """Another owner or task holds the stack-owner lock."""

    exit_code = exitcodes.LOCK_HELD


class LockMismatch(ProteaError):
    """A task tried to release a lock it does not hold."""

    exit_code = exitcodes.LOCK_NOT_HOLDER


class LockTimeout(ProteaError):
    """The flock guarding the lock file was not obtained in time."""

    exit_code = exitcodes.FLOCK_TIMEOUT


class LockCorrupt(ProteaError):
    """The lock file exists but is not a valid record; never read as free."""

    exit_code = exitcodes.LOCK_CORRUPT


class SupervisorDown(ProteaError):
    """supervisord is not running (or its socket does not answer)."""

    exit_code = exitcodes.SUPERVISORD_DOWN


# What a write can meet that is the filesystem's state, not a bug: full, over quota, read-only.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def write_failure(path: object, why: OSError) -> str:
    return (
        f"cannot write {path}: {why.strerror or why}; what was there is as it was (nothing is half-written); "
        "free space on its filesystem (or make it writable) and run the command again."
    )


class WriteFailed(ProteaError):
    """A file could not be written (a full disk, a read-only or missing filesystem); what was there before is
    as it was (writes go to a temp file, then a rename). Exit 73 is sysexits' "cannot create output file"."""

    exit_code = exitcodes.CANNOT_WRITE


def write_failed(why: BaseException) -> WriteFailed | None:
    """A write that met a full, over-quota or read-only filesystem as the domain error (whoever wrote it: the
    atomic writer, a log line appended, a build unpacked); None for anything else."""
    if isinstance(why, WriteFailed):
        return why
    if isinstance(why, OSError) and why.errno in UNWRITABLE:
        return WriteFailed(write_failure(why.filename or "a file", why))
    return None


class StackFailed(ProteaError):
    """A program of the stack failed to start or stop as asked."""

    exit_code = exitcodes.STACK_FAILED


class ProgramFailed(StackFailed):
    """A program went FATAL, exited during start-up or never reached RUNNING: its own fault (for a deploy,
    the revision's health)."""


class StopTimeout(StackFailed):
    """A program did not stop within its grace: not the revision's fault."""


class RpcRefused(StackFailed):
    """supervisord answered a call with a fault (BAD_NAME, STILL_RUNNING, ...): not the revision's fault."""


class GateFailed(StackFailed):
    """The readiness gate stopped at `step` (infra, migrate, api, web, tunnel, workers; or `gate` when the
    listener itself failed or the gate did not finish in time)."""

    def __init__(self, message: str, step: str) -> None:
        super().__init__(message)
        self.step = step


class OperationBusy(ProteaError):
    """Another command held the host's operation lock for longer than the wait allows."""

    exit_code = exitcodes.OPERATION_BUSY


class BackupFailed(ProteaError):
    """A backup, restore or drill failed: low disk, a failing pg tool, a missing extension, failed checks."""

    exit_code = exitcodes.BACKUP_FAILED


class BrokerUnreachable(ProteaError):
    """`queues`: the RabbitMQ management API cannot be read (today's queue_heartbeat.py exits 2 for it)."""

    exit_code = exitcodes.LOCK_HELD


class BrokerAnswerInvalid(BrokerUnreachable):
    """`queues`: the management API answered something other than the queue list it documents."""


class CommandNotFound(ProteaError):
    """The command given to `exec` or `lock run` does not exist or cannot be executed (shell's 127)."""

    exit_code = exitcodes.NOT_FOUND
