"""The revision guard, run by the exec wrapper before a worker's command (`exec --revision-guard`): the facts
(git in the worker's directory, the declaration in the server's Postgres on a node), the verdict
(`host.guard_verdict`), and a refusal record that `status` shows beside the process."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from protea_supervisor.errors import RevisionRefused
from protea_supervisor.hosts.declared import current
from protea_supervisor.hosts.singleton import hold
from protea_supervisor.stackfile.host import Checkout, guard_verdict


def read_checkout(directory: Path) -> Checkout:
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["git", "-C", str(directory), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--verify", "HEAD")
    if head.returncode != 0:
        return Checkout("", ())
    # Tracked files only: an untracked file (a lock file, a log) is not code the revision names, and a local
    # module a worker could import is reached only through an edited tracked file, which does count.
    status = git("status", "--porcelain", "--untracked-files=no")
    changed = tuple(line for line in status.stdout.splitlines() if line.strip())
    if status.returncode != 0:
        changed = (f"git status failed: {status.stderr.strip()}",)
    return Checkout(head.stdout.strip(), changed)


def record_path(refusals: Path, environ: Mapping[str, str]) -> Path:
    """One file per process, named as supervisord names it (`group:process`)."""
    process = environ.get("SUPERVISOR_PROCESS_NAME", "unknown")
    return refusals / f"{environ.get('SUPERVISOR_GROUP_NAME', process)}:{process}"


def read_refusals(refusals: Path) -> dict[str, str]:
    """`group:process` -> the reason of its last refused start."""
    found = {}
    for path in sorted(refusals.glob("*:*")) if refusals.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            found[path.name] = str(json.loads(path.read_text())["reason"])
    return found


def check(directory: Path, environ: Mapping[str, str], declared_from: str, refusals: Path | None) -> None:
    """Raise RevisionRefused (exit 78) when the worker must not start; on a node (`declared_from` names the
    variable holding the server's Postgres URL) the declaration is read first (DeclarationUnavailable, exit
    75, when Postgres does not answer: a start later may pass)."""
    declared = None
    if declared_from:
        declaration = current(environ.get(declared_from, ""), declared_from)
        declared = declaration.revision if declaration else None
    verdict = guard_verdict(
        read_checkout(directory), environ.get("PROTEA_REVISION", ""), declared, node=bool(declared_from)
    )
    if verdict:
        refuse(refusals, environ, verdict, f"revision guard: {verdict}; not starting (exit 78).")


def refuse(refusals: Path | None, environ: Mapping[str, str], reason: str, message: str) -> NoReturn:
    """Leave the reason for `status`, then raise the refusal (exit 78)."""
    if refusals:
        from protea_supervisor.stackfile.files import (
            write_atomic,  # (files loads the stack parser: only when needed)
        )

        write_atomic(record_path(refusals, environ), json.dumps({"reason": reason}) + "\n")
    raise RevisionRefused(message)


def passed(refusals: Path | None, environ: Mapping[str, str]) -> None:
    if refusals:
        record_path(refusals, environ).unlink(missing_ok=True)


def single(
    queue: str,
    variable: str,
    host: str,
    environ: Mapping[str, str],
    refusals: Path | None,
    broker_variable: str,
    wait: float,
) -> str:
    """The singleton queue's lock for this worker (`singleton.hold`), or its refusal recorded for status."""
    try:
        return hold(environ.get(variable, ""), variable, queue, host, environ, broker_variable, wait)
    except RevisionRefused as why:
        reason = str(why).removesuffix(" (exit 78).").removesuffix("; not starting a second")
        refuse(refusals, environ, reason, str(why))
