"""Every exit code, in one table: the domain errors take their codes from it, the CLI's `--help` and the
reference (docs: Exit codes) are generated from it. A code's `short` is its line in `--help`, its `meaning`
the reference's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: int
    short: str
    meaning: str


OK = 0
BAD_INPUT = 1
LOCK_HELD = 2
LOCK_NOT_HOLDER = 3
FLOCK_TIMEOUT = 4
LOCK_CORRUPT = 5
SUPERVISORD_DOWN = 6
STACK_FAILED = 7
OPERATION_BUSY = 8
BACKUP_FAILED = 9
CANNOT_WRITE = 73
POSTGRES_UNAVAILABLE = 75
CONFIG = 78
NOT_FOUND = 127
INTERRUPTED = 130

COMMANDS: tuple[Code, ...] = (
    Code(OK, "ok", "ok"),
    Code(
        BAD_INPUT,
        "bad input (arguments, stack file)",
        "bad input: arguments (including click's usage errors), stack file, unreadable overrides, a `logs` "
        "NAME that matches no log, an unknown queue or an impossible count for `scale`, growing an "
        "unnumbered queue without `--yes`, a `rollback` revision that never served here, `trigger` on a "
        "stack without a deploy timer; for `queues`, a queue is stalled, starved or mismatched",
    ),
    Code(
        LOCK_HELD,
        "lock held by another owner",
        "the stack-owner lock is held by another owner or task (`lock acquire`, `lock run`; `down`, "
        "`reload`, `restore`, `rollback` and scale-down during an export); for `queues`, the broker's "
        "management API is unreachable or answers something other than its queue list",
    ),
    Code(
        LOCK_NOT_HOLDER,
        "lock release by a non-holder",
        "`lock release` by a task that does not hold the lock",
    ),
    Code(
        FLOCK_TIMEOUT,
        "lock flock timeout",
        "the flock on `<lock file>.lock` was not obtained within the timeout",
    ),
    Code(LOCK_CORRUPT, "corrupt lock file", "the lock file is corrupt (never read as free)"),
    Code(
        SUPERVISORD_DOWN,
        "supervisord not running",
        "supervisord is not running, or its socket does not answer",
    ),
    Code(
        STACK_FAILED,
        "a program failed to start or stop",
        "the gate failed, or a program failed to start or stop (`up`, `gate retry`, `down`, `scale`, "
        "`reload`), or supervisord refused a step (for example `scale` on a queue whose config changed "
        "beyond its count: use `reload`)",
    ),
    Code(
        OPERATION_BUSY,
        "another command held the host's operation lock past --lock-wait",
        "another command held the host's operation lock for longer than `--lock-wait`",
    ),
    Code(
        BACKUP_FAILED,
        "backup or restore failed",
        "backup or restore failed: low disk space, pg_dump/psql failed, an extension the restore needs is "
        "not available, a damaged or cut dump or a `.sha256` that cannot vouch for it, a system database "
        "named, the restore's checks (or the drill's counts) did not pass, or the switch to the restored "
        "database failed; in each case the live database is as it was",
    ),
    Code(
        CANNOT_WRITE,
        "a file could not be written (disk full)",
        "a file could not be written: the disk is full (or over quota, or read-only); the line names the "
        "file, and what was there is as it was (every record is written to a temp file, then renamed)",
    ),
    Code(
        POSTGRES_UNAVAILABLE,
        "the server's Postgres did not answer",
        "the server's Postgres did not answer: `exec --revision-guard` on a node (a later start may pass), "
        "`status --all-hosts`",
    ),
    Code(
        CONFIG,
        "env/config error, or a start the revision guard refused",
        "env/config error: a required variable is missing, an env file is readable by group or others, or "
        "an env value holds a NUL byte (`up`, `exec`); `exec --revision-guard`: the revision guard refused "
        "the start; `exec --singleton`: another host holds the singleton queue",
    ),
    Code(
        NOT_FOUND,
        "command not found (exec, lock run)",
        "`exec`/`lock run`: the command is not found or cannot be executed (not executable, or no "
        "interpreter line)",
    ),
    Code(INTERRUPTED, "interrupted (Ctrl-C)", "interrupted (Ctrl-C): what was running was left as it stood"),
)

TICK_NOOP = 0
TICK_REDEPLOYED = 10
TICK_FAILED_ROLLED_BACK = 20
TICK_FAILED_ROLLBACK_FAILED = 21
TICK_FETCH_FAILED = 30
TICK_PREREQUISITES_DOWN = 40
TICK_INFRA_FAILED = 50

TICK: tuple[Code, ...] = (
    Code(
        TICK_NOOP,
        "no-op, skipped or deferred",
        "no-op (on the head and healthy), skipped (the head is a revision that failed before) or deferred "
        "(an export holds the stack-owner lock, or another deploy task does)",
    ),
    Code(
        TICK_REDEPLOYED,
        "redeployed (or revived)",
        "redeployed (or revived: same revision, but something was down)",
    ),
    Code(
        TICK_FAILED_ROLLED_BACK,
        "deploy failed, rolled back",
        "deploy failed; rolled back to the previous revision, which serves again",
    ),
    Code(
        TICK_FAILED_ROLLBACK_FAILED,
        "deploy and rollback failed",
        ("deploy failed and the rollback failed too"),
    ),
    Code(
        TICK_FETCH_FAILED,
        "git fetch or worktree failure",
        "`git fetch` or worktree failure (also: `paths.root` exists, is not a worktree, and holds the "
        "stack's own run or log directory, which a tick never moves)",
    ),
    Code(
        TICK_PREREQUISITES_DOWN,
        "prerequisites down",
        "prerequisites down: a port from `probes.infra_from_env` (Postgres, RabbitMQ) does not accept "
        "connections",
    ),
    Code(
        TICK_INFRA_FAILED,
        "infrastructure failure",
        "infrastructure failure: supervisord not running, a refused or timed-out call, a stop that "
        "outlasted its grace, the operation lock held past the bound, a corrupt stack-owner lock, a file "
        "that could not be written (a full disk), or an install command that failed. What ran is rolled "
        "back (the previous build stays served) and the revision is **not** marked failed",
    ),
)


def help_lines(codes: tuple[Code, ...]) -> str:
    """The codes' short forms, one per line, for `--help` (`\\b` keeps click from rewrapping them)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {c.code:<3} {c.short}" for c in codes)
