"""One deploy tick: the edge that runs git, the install and build commands, and supervisord.

The decisions are `deploy.py`'s; the order is DESIGN.md section 5: lock -> prerequisites -> fetch -> check
out -> install (only when lock files changed) -> build the frontend into a fresh directory, verify it and
switch the served build atomically (only when the frontend changed) -> migrate -> re-render with the
revision and apply the reload plan -> verify with the gate's probes. A failure after the checkout rolls
back to the previous revision and build, and records the failed revision so later ticks skip it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from protea_supervisor import deploy
from protea_supervisor.apply import Deadlines, apply_plan, stack_is_up, states, wait_until_gone_or_down
from protea_supervisor.control import Supervisor
from protea_supervisor.deploy import DeployRecord, Work
from protea_supervisor.env import redact
from protea_supervisor.errors import ProteaError
from protea_supervisor.files import write_atomic
from protea_supervisor.listeners.edge import read_json
from protea_supervisor.listeners.gate import parse_infra, wait_http, wait_ports
from protea_supervisor.listeners.gate import read_state as read_gate_state
from protea_supervisor.lock import LockFile
from protea_supervisor.reconcile import ReloadPlan, describe_plan, plan_from_document
from protea_supervisor.stack import Stack

Report = Callable[[str], None]
HEALTH_PROBE_DEADLINE = 5.0
BUILDS_KEPT = 3


class StepFailed(ProteaError):
    """A tick step failed; `code` is the tick's exit code for it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TickEnv:
    """What the tick touches, built by the CLI."""

    stack: Stack
    supervisor: Supervisor
    lock: LockFile
    environ: Mapping[str, str]  # the process environment merged with the env files
    secrets: Sequence[str]
    # Renders the stack with a revision and writes <run>/supervisord.conf; returns nothing.
    write_config: Callable[[str], None]
    run_gate: Callable[[], None]
    deadlines: Deadlines
    report: Report


def record_path(stack: Stack) -> Path:
    return stack.paths.run / deploy.RECORD_FILE


def read_record(stack: Stack) -> DeployRecord:
    return deploy.record_from_doc(read_json(record_path(stack)))


def write_record(stack: Stack, record: DeployRecord) -> None:
    import json

    write_atomic(record_path(stack), json.dumps(record.to_doc(), indent=2) + "\n")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- git ------------------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StepFailed(
            f"git {' '.join(args)} failed: {detail[-1] if detail else result.returncode}", deploy.FETCH_FAILED
        )
    return result.stdout.strip()


def fetch(stack: Stack, report: Report) -> tuple[str, str]:
    """Fetch the remote ref; recreate the worktree if it vanished. Returns (remote revision, HEAD)."""
    settings, root = stack.deploy, stack.paths.root
    if not (root / ".git").exists():
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


def changed_files(root: Path, old: str, new: str) -> list[str] | None:
    try:
        return [line for line in git(root, "diff", "--name-only", old, new).splitlines() if line]
    except StepFailed:
        return None  # the old revision is unknown here (history rewritten): treat as a first deploy


# --- commands and the frontend build --------------------------------------------------------------------


def run_command(command: str, cwd: Path, env: Mapping[str, str], what: str, secrets: Sequence[str]) -> None:
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=dict(env), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise StepFailed(
            redact(f"{what} exited {result.returncode}: {tail}", secrets), deploy.FAILED_ROLLED_BACK
        )


def install(env: TickEnv) -> None:
    """The install command, then the post-install one (PROTEA reinstalls its CUDA torch there: an install
    without it leaves the GPU build clobbered)."""
    settings, root = env.stack.deploy, env.stack.paths.root
    steps = ((settings.install_command, "install"), (settings.post_install_command, "post-install"))
    for command, what in steps:
        if command:
            run_command(command, root, env.environ, what, env.secrets)


def builds_dir(stack: Stack) -> Path:
    return stack.paths.run / "web-builds"


def build_web(env: TickEnv, revision: str) -> Path:
    """Export the frontend at `revision` into a fresh directory, build it there and verify it. The served
    build is never touched."""
    stack = env.stack
    target = builds_dir(stack) / f"{deploy.short(revision)}-{int(time.time())}"
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(stack.paths.root), "archive", "--format=tar", f"{revision}:{stack.deploy.web_dir}"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise StepFailed(
            f"cannot export {stack.deploy.web_dir} at {deploy.short(revision)}", deploy.FAILED_ROLLED_BACK
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    env.report(f"building the frontend in {target}")
    run_command(stack.deploy.build_command, target, env.environ, "the frontend build", env.secrets)
    assemble_standalone(target)
    files = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() or p.is_symlink()}
    public = {str(p.relative_to(target / "public")) for p in (target / "public").rglob("*") if p.is_file()}
    problems = deploy.web_build_problems(files, public)
    if problems:
        raise StepFailed(
            f"the frontend build is incomplete: {'; '.join(problems)}", deploy.FAILED_ROLLED_BACK
        )
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


def switch_web(stack: Stack, build: Path) -> None:
    """Point the served symlink at `build` in one rename."""
    current = stack.deploy.web_current
    current.parent.mkdir(parents=True, exist_ok=True)
    staged = current.with_name(f".{current.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(build)
    os.replace(staged, current)


def served_build(stack: Stack) -> str:
    current = stack.deploy.web_current
    return str(current.resolve()) if current.is_symlink() else ""


def prune_builds(stack: Stack, keep: Sequence[str]) -> None:
    builds = sorted(
        (p for p in builds_dir(stack).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in builds[BUILDS_KEPT:]:
        if str(old) not in keep:
            shutil.rmtree(old, ignore_errors=True)


# --- supervisord ----------------------------------------------------------------------------------------


def own_groups(stack: Stack) -> set[str]:
    return {p.role for p in stack.programs if p.enabled and p.role != "migrate"} | {
        q.program for q in stack.queues if q.processes
    }


def healthy(env: TickEnv) -> bool:
    """Every long-running program RUNNING and the API and web probes answering."""
    if not env.supervisor.is_running() or not all_running(env):
        return False
    probes = env.stack.probes
    return not any(
        wait_http(url, HEALTH_PROBE_DEADLINE) for url in (probes.api_ready_url, probes.web_url) if url
    )


def run_migrate(env: TickEnv, plan: ReloadPlan) -> None:
    stack, supervisor = env.stack, env.supervisor
    if not stack.program("migrate").enabled:
        return
    if "migrate" in plan.changed:
        replace_idle(env, "migrate")
    env.report("running migrate")
    supervisor.start("migrate:migrate")
    end = time.monotonic() + env.deadlines.stop + 600
    while time.monotonic() < end:
        info = next(i for i in supervisor.all_process_info() if i["name"] == "migrate")
        if info["statename"] == "EXITED":
            if info["exitstatus"] != 0:
                raise StepFailed(f"migrate exited {info['exitstatus']}", deploy.FAILED_ROLLED_BACK)
            return
        if info["statename"] in ("FATAL", "STOPPED"):
            raise StepFailed(f"migrate is {info['statename']}", deploy.FAILED_ROLLED_BACK)
        time.sleep(0.2)
    raise StepFailed("migrate did not finish", deploy.FAILED_ROLLED_BACK)


def replace_idle(env: TickEnv, group: str) -> None:
    """Swap in a one-shot's new config once it is not running (the gate may have just started it)."""
    wait_until_gone_or_down(
        env.supervisor, group, states(env.supervisor, group), env.deadlines.stop, env.report
    )
    env.supervisor.replace_group(group)


def wait_gate_idle(env: TickEnv) -> None:
    """A gate run in progress (supervisord just booted, or `up`) owns the start order: let it finish."""
    probes = env.stack.probes
    deadline = time.monotonic() + probes.infra_timeout + probes.api_ready_timeout + probes.web_timeout + 300
    announced = False
    while (read_gate_state(env.stack.paths.run) or {}).get("phase") == "running":
        if not announced:
            env.report("the gate is starting the stack; waiting for it to finish")
            announced = True
        if time.monotonic() > deadline:
            raise StepFailed("the gate did not finish", deploy.FAILED_ROLLED_BACK)
        time.sleep(0.5)


def apply_revision(env: TickEnv, revision: str, migrate: bool) -> None:
    """Render with the revision, migrate, restart what changed (workers within their grace), start what is
    not running, and verify with the gate's probes."""
    env.write_config(revision)
    plan = plan_from_document(env.supervisor.plan_reload())
    if migrate:
        run_migrate(env, plan)
    # The tick must not restart itself; migrate already ran (or must not run again in a rollback).
    keep = {*plan.added, *plan.removed, *(g for g, _ in plan.scaled), *plan.changed} - {"deploy-tick"}
    moving = plan.only(keep - {"migrate"})
    if "migrate" in plan.changed and not migrate:
        replace_idle(env, "migrate")
    for line in describe_plan(moving):
        env.report(line)
    up = stack_is_up(env.stack, env.supervisor)
    apply_plan(env.supervisor, moving, env.deadlines, env.report, up)
    if not up or not all_running(env):
        env.report("starting what is not running through the gate")
        env.run_gate()
    verify(env)


def all_running(env: TickEnv) -> bool:
    groups = own_groups(env.stack)
    infos = [i for i in env.supervisor.all_process_info() if i["group"] in groups]
    return {i["group"] for i in infos} == groups and all(i["statename"] == "RUNNING" for i in infos)


def verify(env: TickEnv) -> None:
    probes = env.stack.probes
    for url, deadline, what in (
        (probes.api_ready_url, probes.api_ready_timeout, "API readiness"),
        (probes.web_url, probes.web_timeout, "web"),
    ):
        if url:
            problem = wait_http(url, deadline)
            if problem:
                raise StepFailed(
                    f"{what} probe {url}: {problem} after {deadline} s", deploy.FAILED_ROLLED_BACK
                )


# --- the tick -------------------------------------------------------------------------------------------


def run_tick(env: TickEnv, dry_run: bool, force: bool) -> tuple[int, str]:
    """One tick; returns (exit code, one-line summary)."""
    holder = env.lock.read()
    if holder.owner == "export" or (holder.owner == "deploy" and holder.task_id != deploy.TICK_TASK_ID):
        return deploy.NOOP, (
            f"deferred: stack owned by {holder.owner} task {holder.task_id} since {holder.acquired_at}"
        )
    if dry_run:
        return _tick(env, dry_run=True, force=force)
    env.lock.acquire("deploy", deploy.TICK_TASK_ID, "deploy tick")
    try:
        return _tick(env, dry_run=False, force=force)
    finally:
        env.lock.release(deploy.TICK_TASK_ID)


def _tick(env: TickEnv, dry_run: bool, force: bool) -> tuple[int, str]:
    stack = env.stack
    targets, problems = parse_infra(stack.probes.infra_from_env, env.environ)
    if problems:
        return deploy.PREREQUISITES_DOWN, f"prerequisites: {'; '.join(problems)}"
    closed = wait_ports(targets, stack.deploy.prerequisite_timeout)
    if closed:
        return deploy.PREREQUISITES_DOWN, f"prerequisites down: {', '.join(closed)}"
    try:
        remote, head = fetch(stack, env.report)
        if not dry_run and env.supervisor.is_running():
            wait_gate_idle(env)
    except StepFailed as failed:
        return failed.code, str(failed)
    record = read_record(stack)
    decision = deploy.decide(record, remote, head, healthy(env), force)
    env.report(f"decision: {decision.action}: {decision.reason}")
    previous = record.revision or head
    changed = changed_files(stack.paths.root, previous, remote) if record.revision else None
    work = deploy.work_for(changed, stack.deploy.lock_files, stack.deploy.web_dir, bool(served_build(stack)))
    if dry_run:
        if decision.action == "deploy":
            env.report(
                f"plan: check out {deploy.short(remote)}; install: {'yes' if work.install else 'no'}; "
                f"frontend build: {'yes' if work.build else 'no'}; migrate; restart what changed; verify"
            )
        return deploy.NOOP, f"dry run: {decision.action}: {decision.reason}"
    if decision.action in ("noop", "skip"):
        return deploy.NOOP, decision.reason
    if decision.action == "revive":
        try:
            apply_revision(env, previous, migrate=False)
        except ProteaError as why:
            return deploy.FAILED_ROLLED_BACK, f"revive failed: {why}"
        return deploy.REDEPLOYED, f"revived {deploy.short(previous)}"
    return deploy_revision(env, record, previous, remote, work)


def deploy_revision(
    env: TickEnv, record: DeployRecord, previous: str, remote: str, work: Work
) -> tuple[int, str]:
    stack = env.stack
    old_build = served_build(stack)
    new_build = old_build
    done: set[str] = set()
    try:
        git(stack.paths.root, "checkout", "--quiet", "--detach", "--force", remote)
        done.add("checkout")
        if work.install:
            env.report("dependency lock files changed: installing")
            done.add("install")
            install(env)
        if work.build:
            new_build = str(build_web(env, remote))
            switch_web(stack, Path(new_build))
            done.add("switch")
            env.report(f"serving the new frontend build {new_build}")
        apply_revision(env, remote, migrate=True)
    except ProteaError as why:
        env.report(
            f"deploy of {deploy.short(remote)} failed: {why}; rolling back to {deploy.short(previous)}"
        )
        code = rollback(env, previous, old_build, done)
        write_record(
            stack, deploy.after_failure(read_record(stack), remote, code == deploy.FAILED_ROLLED_BACK)
        )
        return code, f"deploy of {deploy.short(remote)} failed ({why}); " + (
            f"rolled back to {deploy.short(previous)}"
            if code == deploy.FAILED_ROLLED_BACK
            else "rollback FAILED"
        )
    write_record(stack, deploy.after_success(read_record(stack), remote, new_build, now_iso()))
    prune_builds(stack, keep=[new_build, old_build])
    return deploy.REDEPLOYED, f"deployed {deploy.short(remote)} (was {deploy.short(previous)})"


def rollback(env: TickEnv, previous: str, old_build: str, done: set[str]) -> int:
    stack = env.stack
    try:
        if "checkout" in done:
            git(stack.paths.root, "checkout", "--quiet", "--detach", "--force", previous)
        if "install" in done:
            install(env)
        if "switch" in done and old_build:
            switch_web(stack, Path(old_build))
        apply_revision(env, previous, migrate=False)
    except ProteaError as why:
        env.report(f"rollback to {deploy.short(previous)} failed: {why}")
        return deploy.FAILED_ROLLBACK_FAILED
    env.report(f"rolled back: {deploy.short(previous)} serves again")
    return deploy.FAILED_ROLLED_BACK


def finish(stack: Stack, code: int, summary: str) -> None:
    record = read_record(stack)
    write_record(stack, replace(record, last_tick_at=now_iso(), last_exit=code, last_summary=summary))
