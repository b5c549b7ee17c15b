"""The deploy worktree's git edge: fetch (recreating a vanished worktree), a dry run's read-only peek, and
the files that changed between two revisions."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from protea_supervisor.errors import ProteaError
from protea_supervisor.stackfile.stack import Stack

Report = Callable[[str], None]


class StepError(ProteaError):
    """A step failed; `kind` is what went wrong (deploy.blame's vocabulary)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StepError(f"git {' '.join(args)} failed: {detail[-1] if detail else result.returncode}", "git")
    return result.stdout.strip()


def is_worktree(root: Path) -> bool:
    return (root / ".git").exists()


def stack_parts_inside(stack: Stack, directory: Path) -> list[Path]:
    """The stack's own directories (run, logs) inside `directory`: moving it would move the live stack."""
    inside = []
    for part in (stack.paths.run, stack.paths.logs):
        if part == directory or directory in part.parents:
            inside.append(part)
    return inside


def refuse_to_move(stack: Stack) -> None:
    """A root that is not a worktree but holds the stack's own run or log directory is never moved aside."""
    root = stack.paths.root
    inside = stack_parts_inside(stack, root) if root.exists() else []
    if inside:
        raise StepError(
            f"paths.root {root} is not a git worktree and holds the stack's own "
            f"{', '.join(str(p) for p in inside)}; a tick will not move it (deploy needs a worktree)",
            "git",
        )


def fetch(stack: Stack, report: Report) -> tuple[str, str]:
    """Fetch the remote ref; recreate the worktree if it vanished. Returns (remote revision, HEAD)."""
    settings, root = stack.deploy, stack.paths.root
    if not is_worktree(root):
        refuse_to_move(stack)
        report(f"worktree {root} is missing; recreating it from {settings.repository}")
        if root.exists():
            # Something recreated the directory (a program's log or cache): keep it aside, never delete it.
            aside = root.with_name(f"{root.name}.orphan-{int(time.time())}")
            root.rename(aside)
            report(f"moved the non-worktree directory left at {root} to {aside}")
        git(settings.repository, "fetch", "--quiet", settings.remote, settings.ref)
        git(settings.repository, "worktree", "prune")
        git(settings.repository, "worktree", "add", "--detach", str(root), "FETCH_HEAD")
    git(root, "fetch", "--quiet", settings.remote, settings.ref)
    return git(root, "rev-parse", "FETCH_HEAD"), git(root, "rev-parse", "HEAD")


def peek(stack: Stack, report: Report) -> tuple[str, str, Path]:
    """What a fetch would find, changing no ref, no FETCH_HEAD and no worktree: `ls-remote` for the sha, then
    the commit's objects only (no ref is written). Returns (remote revision, HEAD or "", where git ran)."""
    settings, root = stack.deploy, stack.paths.root
    where = root if is_worktree(root) else settings.repository
    if where is settings.repository:
        refuse_to_move(stack)  # what a tick would say
        report(f"worktree {root} is missing; a tick would recreate it from {where}")
    line = git(where, "ls-remote", settings.remote, f"refs/heads/{settings.ref}")
    if not line:
        raise StepError(f"{settings.remote} has no branch {settings.ref}", "git")
    remote = line.split()[0]
    if subprocess.run(["git", "-C", str(where), "cat-file", "-e", f"{remote}^{{commit}}"],
                      capture_output=True, check=False).returncode != 0:  # fmt: skip
        git(where, "fetch", "--quiet", "--no-write-fetch-head", "--refmap=", settings.remote, settings.ref)
    head = git(root, "rev-parse", "HEAD") if where == root else ""
    return remote, head, where


def changed_files(cwd: Path, old: str, new: str) -> list[str] | None:
    try:
        return [line for line in git(cwd, "diff", "--name-only", old, new).splitlines() if line]
    except StepError:
        return None  # the old revision is unknown here (history rewritten): treat as a first deploy
