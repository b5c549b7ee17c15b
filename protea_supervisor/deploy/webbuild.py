"""The frontend build: exported from git into a fresh directory, built and verified there, and served by an
atomic switch of a symlink. The served build is never rebuilt in place."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from protea_supervisor.deploy import plan
from protea_supervisor.deploy.worktree import StepError
from protea_supervisor.stackfile.env import redact
from protea_supervisor.stackfile.stack import Stack

BUILDS_KEPT = 3


def run_command(command: str, cwd: Path, env: Mapping[str, str], what: str, secrets: Sequence[str]) -> None:
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=dict(env), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise StepError(redact(f"{what} exited {result.returncode}: {tail}", secrets), "command")


def builds_dir(stack: Stack) -> Path:
    return stack.paths.run / "web-builds"


def build_web(
    stack: Stack,
    revision: str,
    environ: Mapping[str, str],
    secrets: Sequence[str],
    report: Callable[[str], None],
) -> Path:
    """Export the frontend at `revision` into a fresh directory, build it there and verify it. The served
    build is never touched."""
    target = builds_dir(stack) / f"{plan.short(revision)}-{int(time.time())}"
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(stack.paths.root), "archive", "--format=tar", f"{revision}:{stack.deploy.web_dir}"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise StepError(f"cannot export {stack.deploy.web_dir} at {plan.short(revision)}", "incomplete")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    report(f"building the frontend in {target}")
    run_command(stack.deploy.build_command, target, environ, "the frontend build", secrets)
    assemble_standalone(target)
    files = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() or p.is_symlink()}
    public = {str(p.relative_to(target / "public")) for p in (target / "public").rglob("*") if p.is_file()}
    problems = plan.web_build_problems(files, public)
    if problems:
        raise StepError(f"the frontend build is incomplete: {'; '.join(problems)}", "incomplete")
    return target


def assemble_standalone(target: Path) -> None:
    """What manage.sh did after `npm run build`: the standalone server serves static and public from its
    own tree."""
    standalone = target / ".next" / "standalone"
    if not standalone.is_dir():
        return
    if (target / ".next" / "static").is_dir():
        shutil.copytree(target / ".next" / "static", standalone / ".next" / "static", dirs_exist_ok=True)
    if (target / "public").is_dir():
        shutil.copytree(target / "public", standalone / "public", dirs_exist_ok=True)


def switch_web(stack: Stack, build: str) -> None:
    """Point the served symlink at `build` in one rename (remove it when `build` is "": nothing served)."""
    current = stack.deploy.web_current
    if not build:
        current.unlink(missing_ok=True)
        return
    current.parent.mkdir(parents=True, exist_ok=True)
    staged = current.with_name(f".{current.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(build)
    os.replace(staged, current)


def served_build(stack: Stack) -> str:
    current = stack.deploy.web_current
    return str(current.resolve()) if current.is_symlink() else ""


def prune_builds(stack: Stack, keep: Sequence[str]) -> None:
    """Keep the newest builds and the ones in `keep` (served now, served before)."""
    if not builds_dir(stack).is_dir():
        return
    builds = sorted(
        (p for p in builds_dir(stack).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in builds[BUILDS_KEPT:]:
        if str(old) not in keep:
            shutil.rmtree(old, ignore_errors=True)
