"""One deploy tick: the executor of `plan.py`'s plan, and the edge that runs git, commands and supervisord.

The order is DESIGN.md section 5: stack-owner lock -> prerequisites -> supervisord -> fetch -> decide -> the
plan (`plan.deploy_plan`: check out, install when lock files changed, build and switch the frontend when
it changed, migrate, apply, verify). `Deployer` runs the steps and records what ran; a failure is
classified by `plan.blame` from the step and the kind of failure, and the rollback plan undoes what ran.
Only a failure that is the revision's own (its migration, its build, its health after start) puts it on
the failed list; anything supervisord, the host or the network did exits 50 and blames nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from protea_supervisor.deploy import plan, releases
from protea_supervisor.deploy.executor import Deployer, failure_kind
from protea_supervisor.deploy.follow import follow_tick
from protea_supervisor.deploy.plan import DeployRecord, Step, Work
from protea_supervisor.deploy.record import now_iso, read_record, write_record
from protea_supervisor.deploy.rollout import healthy, wait_gate_idle
from protea_supervisor.deploy.tickenv import TickEnv
from protea_supervisor.deploy.webbuild import (
    prune_builds,
    served_build,
)
from protea_supervisor.deploy.worktree import StepError, changed_files, fetch, peek
from protea_supervisor.errors import (
    LockCorrupt,
    ProteaError,
)
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.probes import parse_infra, wait_ports


def has_canary(stack: Stack) -> bool:
    return bool(stack.deploy.api_canary_command) and stack.program("api").enabled


def plan_for(stack: Stack, revision: str, work: Work, supervisord_up: bool) -> tuple[plan.Step, ...]:
    return plan.deploy_plan(revision, work, supervisord_up, has_canary(stack), stack.host.declare_revision)


def deploy_revision(
    env: TickEnv, revision: str, previous: str, work: Work, supervisord_up: bool
) -> tuple[int, str]:
    began, started_at = time.monotonic(), now_iso()
    code, summary, step = _deploy_revision(env, revision, previous, work, supervisord_up)
    release = releases.Release(
        revision=revision,
        previous=previous,
        started_at=started_at,
        duration_s=round(time.monotonic() - began, 1),
        result=plan.RESULT.get(code, "failed"),
        exit=code,
        installed=work.install,
        built=work.build,
        failed_step=step,
        trigger=env.trigger,
        summary=summary,
    )
    releases.append(env.stack.paths.run, release)
    return code, summary


def _deploy_revision(
    env: TickEnv, revision: str, previous: str, work: Work, supervisord_up: bool
) -> tuple[int, str, str]:
    """Run the plan; (exit code, summary, the step that failed or "")."""
    stack = env.stack
    deployer = Deployer(env, revision, previous, work)
    try:
        deployer.run(plan_for(stack, revision, work, supervisord_up))
    except ProteaError as why:
        step = deployer.current
        blamed = plan.blame(step, failure_kind(why))
        env.report(f"deploy of {plan.short(revision)} failed at {step} ({blamed}): {why}")
        rolled_back = rollback(env, deployer, supervisord_up and env.supervisor.is_running())
        code = plan.outcome(blamed, rolled_back)
        record = read_record(stack)
        if blamed == "revision":
            record = plan.after_failure(record, revision, rolled_back)
        write_record(stack, replace(record, result=plan.MEANING[code]))
        back = f"back on {plan.short(previous)}" if previous else "nothing was deployed before"
        verdict = "marked failed" if blamed == "revision" else "not marked failed"
        return (
            code,
            (
                f"deploy of {plan.short(revision)} failed at {step} ({why}); {verdict}; "
                + (back if rolled_back else "rollback FAILED")
            ),
            step,
        )
    write_record(stack, plan.after_success(read_record(stack), revision, deployer.new_build, now_iso()))
    prune_builds(stack, keep=[deployer.new_build, deployer.old_build])
    was = f" (was {plan.short(previous)})" if previous and previous != revision else ""
    return plan.REDEPLOYED, f"deployed {plan.short(revision)}{was}", ""


def rollback(env: TickEnv, deployer: Deployer, supervisord_up: bool) -> bool:
    if not deployer.previous:
        return True  # a first deploy: nothing ran before; the stack is left for inspection
    steps = plan.rollback_plan(deployer.done, supervisord_up)
    try:
        deployer.run(steps)
    except ProteaError as why:
        env.report(f"rollback to {plan.short(deployer.previous)} failed: {why}")
        return False
    env.report(f"rolled back to {plan.short(deployer.previous)}")
    return True


# --- the tick -------------------------------------------------------------------------------------------


def run_tick(env: TickEnv, dry_run: bool, force: bool) -> tuple[int, str]:
    """One tick; returns (exit code, one-line summary)."""
    try:
        holder = env.lock.read()
    except LockCorrupt as why:
        return plan.INFRA_FAILED, f"not deploying: {why}"
    if holder.owner == "export" or (holder.owner == "deploy" and holder.task_id != plan.TICK_TASK_ID):
        return plan.NOOP, (
            f"deferred: stack owned by {holder.owner} task {holder.task_id} since {holder.acquired_at}"
        )
    if dry_run:
        return _tick(env, dry_run=True, force=force)
    with holding_deploy(env, "deploy tick"):
        return _tick(env, dry_run=False, force=force)


@contextlib.contextmanager
def holding_deploy(env: TickEnv, reason: str) -> Iterator[None]:
    """The stack-owner lock held as `deploy` for the tick's task, released however the deploy ends."""
    env.lock.acquire("deploy", plan.TICK_TASK_ID, reason)
    try:
        yield
    finally:
        env.lock.release(plan.TICK_TASK_ID)


def _tick(env: TickEnv, dry_run: bool, force: bool) -> tuple[int, str]:
    stack = env.stack
    targets, problems = parse_infra(stack.probes.infra_from_env, env.environ)
    if problems:
        return plan.PREREQUISITES_DOWN, f"prerequisites: {'; '.join(problems)}"
    closed = wait_ports(targets, stack.deploy.prerequisite_timeout)
    if closed:
        return plan.PREREQUISITES_DOWN, f"prerequisites down: {', '.join(closed)}"
    record = read_record(stack)
    supervisord_up = env.supervisor.is_running()
    if not supervisord_up and not dry_run:
        return plan.INFRA_FAILED, (
            f"supervisord is not running (no answer on {stack.socket_path}); nothing was changed. "
            "`protea-supervisor up` starts the stack"
            + ("" if record.revision else " and, on a host with no deploy record, makes the first deploy")
        )
    if stack.host.node:
        return follow_tick(env, dry_run, force)
    try:
        if dry_run:
            remote, head, where = peek(stack, env.report)
        else:
            remote, head = fetch(stack, env.report)
            where = stack.paths.root
            wait_gate_idle(env)
    except StepError as failed:
        return (plan.FETCH_FAILED if failed.kind == "git" else plan.INFRA_FAILED), str(failed)
    try:
        return _decide_and_act(env, record, remote, head, where, dry_run, force, supervisord_up)
    except ProteaError as why:  # before the plan started: nothing was changed
        return plan.INFRA_FAILED, f"{why}; nothing was changed"


def _decide_and_act(env: TickEnv, record: DeployRecord, remote: str, head: str, where: Path,
                    dry_run: bool, force: bool, supervisord_up: bool) -> tuple[int, str]:  # fmt: skip
    stack = env.stack
    decision = plan.decide(record, remote, head, supervisord_up and healthy(env), force)
    env.report(f"decision: {decision.action}: {decision.reason}")
    previous = record.revision or head
    changed = changed_files(where, previous, remote) if record.revision else None
    work = plan.work_for(changed, stack.deploy.lock_files, stack.deploy.web_dir, bool(served_build(stack)))
    if dry_run:
        if decision.action == "deploy":
            for step in plan_for(stack, remote, work, supervisord_up):
                env.report(f"plan: {step.name}: {step.says}")
            env.report(
                f"plan: check out {plan.short(remote)}; install: {'yes' if work.install else 'no'}; "
                f"frontend build: {'yes' if work.build else 'no'}"
            )
        return plan.NOOP, f"dry run: {decision.action}: {decision.reason}; nothing was changed"
    if decision.action in ("noop", "skip"):
        return plan.NOOP, decision.reason
    if decision.action == "revive":
        return revive(env, previous)
    return deploy_revision(env, remote, previous, work, supervisord_up)


def roll_back_to(env: TickEnv, target: str) -> tuple[int, str]:
    """`rollback`: deploy `target` (a revision deployed here before) through the tick's plan, from the
    revision deployed now, then pin it against that one so the timer does not move forward to it again."""
    stack = env.stack
    record = read_record(stack)
    if not env.supervisor.is_running():
        return plan.INFRA_FAILED, (
            f"supervisord is not running (no answer on {stack.socket_path}); nothing was changed"
        )
    with holding_deploy(env, f"rollback to {plan.short(target)}"):
        changed = changed_files(stack.paths.root, record.revision, target) if record.revision else None
        work = plan.work_for(
            changed, stack.deploy.lock_files, stack.deploy.web_dir, bool(served_build(stack))
        )
        env.report(f"rollback: {plan.short(record.revision)} -> {plan.short(target)}")
        code, summary = deploy_revision(env, target, record.revision, work, supervisord_up=True)
        if code == plan.REDEPLOYED:
            write_record(stack, plan.pinned(read_record(stack), record.revision, now_iso()))
            summary += plan.pin_note(record.revision)
        return code, summary


def revive(env: TickEnv, revision: str) -> tuple[int, str]:
    """Same revision, something down: re-apply it and start what is not running. Never marks it failed."""
    deployer = Deployer(env, revision, revision, Work(install=False, build=False))
    try:
        deployer.run((Step("apply", "re-apply the deployed revision"), Step("verify", "probe")))
    except ProteaError as why:
        blamed = plan.blame(deployer.current, failure_kind(why))
        code = plan.FAILED_ROLLED_BACK if blamed == "revision" else plan.INFRA_FAILED
        return code, f"revive of {plan.short(revision)} failed: {why}"
    return plan.REDEPLOYED, f"revived {plan.short(revision)}"


def first_deploy(env: TickEnv) -> tuple[int, str]:
    """A host with no deploy record and supervisord not running (`up` on a fresh host): fetch the remote
    head, install, build, then start supervisord; the gate runs migrate and starts everything."""
    with holding_deploy(env, "first deploy"):
        try:
            remote, _head = fetch(env.stack, env.report)
        except StepError as failed:
            return plan.FETCH_FAILED, str(failed)
        env.report(f"first deploy: {plan.short(remote)}")
        return deploy_revision(env, remote, "", Work(install=True, build=True), supervisord_up=False)


def finish(stack: Stack, code: int, summary: str) -> None:
    record = read_record(stack)
    write_record(stack, replace(record, last_tick_at=now_iso(), last_exit=code, last_summary=summary))
