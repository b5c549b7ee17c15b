"""A compute node's tick (host.role = "node"): follow the revision the server declared in Postgres.

Read the declaration; fetch; decide (`host.follow_decision`); check the declared sha out, install only when
a lock file changed, restart the workers onto it and verify each one runs it (`host.follow_plan`, run by the
shared `Deployer`). Nodes never migrate and never declare. A node that fails to move stops its workers and
says why: a silent wrong consumer is worse than no consumer.
"""

from __future__ import annotations

import time
from dataclasses import replace

from protea_supervisor.deploy import plan, releases
from protea_supervisor.deploy.executor import Deployer
from protea_supervisor.deploy.plan import Step, Work
from protea_supervisor.deploy.record import now_iso, read_record, write_record
from protea_supervisor.deploy.rollout import off_revision
from protea_supervisor.deploy.tickenv import TickEnv
from protea_supervisor.deploy.worktree import StepError, changed_files, fetch, git
from protea_supervisor.errors import ProteaError
from protea_supervisor.hosts.declared import DeclarationUnavailable, current
from protea_supervisor.hosts.guard import read_checkout
from protea_supervisor.hosts.heartbeats import read_all, server_export
from protea_supervisor.stackfile import host as hostrole
from protea_supervisor.supervisord.lifecycle import stop_programs


def server_export_now(env: TickEnv) -> str:
    """The server's export, as its last heartbeat tells (nothing when no heartbeat can be read)."""
    variable = env.stack.host.db_url_env
    try:
        return server_export(read_all(env.environ.get(variable, ""), variable))
    except DeclarationUnavailable:
        return ""


def follow_tick(env: TickEnv, dry_run: bool, force: bool) -> tuple[int, str]:
    stack, host = env.stack, env.stack.host
    try:
        declaration = current(env.environ.get(host.db_url_env, ""), host.db_url_env)
    except DeclarationUnavailable as why:
        return plan.PREREQUISITES_DOWN, f"the declared revision could not be read: {why}"
    declared = declaration.revision if declaration else None
    record = read_record(stack)
    action, reason = hostrole.follow_decision(
        record.revision, declared, bool(declared) and not off_revision(env, declared or ""), force
    )
    env.report(f"decision: {action}: {reason}")
    if action != "follow" or declared is None:
        return plan.NOOP, reason
    export = server_export_now(env)
    if export:
        return plan.NOOP, f"deferred: {export}; the node follows {hostrole.short(declared)} at a later tick"
    if dry_run:
        for name, says in hostrole.follow_plan(declared, install=True):
            env.report(f"plan: {name}: {says}")
        return plan.NOOP, f"dry run: follow: {reason}; nothing was changed"
    try:
        fetch(stack, env.report)
        git(stack.paths.root, "cat-file", "-e", f"{declared}^{{commit}}")
    except StepError as failed:
        return plan.FETCH_FAILED, f"the declared {hostrole.short(declared)} could not be fetched: {failed}"
    dirty = read_checkout(stack.paths.root).changed
    if dirty:
        stopped = _stop_workers(env)
        return plan.INFRA_FAILED, (
            f"the checkout {stack.paths.root} has uncommitted changes ({dirty[0].strip()}); a node never "
            f"overwrites them, so it does not move to {hostrole.short(declared)}; "
            + ("the workers are stopped" if stopped else "stopping the workers FAILED")
        )
    changed = changed_files(stack.paths.root, record.revision, declared) if record.revision else None
    work = plan.work_for(changed, stack.deploy.lock_files, stack.deploy.web_dir, True)
    steps = tuple(Step(name, says) for name, says in hostrole.follow_plan(declared, work.install))
    deployer = Deployer(env, declared, record.revision, Work(install=work.install, build=False))
    began, started_at = time.monotonic(), now_iso()
    try:
        deployer.run(steps)
    except ProteaError as why:
        env.report(
            f"following {hostrole.short(declared)} failed at {deployer.current}: {why}; stopping workers"
        )
        stopped = _stop_workers(env)
        write_record(stack, replace(read_record(stack), result="follow failed; workers stopped"))
        code, summary = (
            plan.INFRA_FAILED,
            (
                f"following the declared {hostrole.short(declared)} failed at {deployer.current} ({why}); "
                + ("the workers are stopped" if stopped else "stopping the workers FAILED")
            ),
        )
    else:
        write_record(stack, plan.after_success(read_record(stack), declared, "", now_iso()))
        was = hostrole.short(record.revision)
        code, summary = plan.REDEPLOYED, f"following the declared {hostrole.short(declared)} (was {was})"
    # The node's release history (`deploys`), as the server's ticks keep theirs.
    release = releases.Release(
        revision=declared,
        previous=record.revision,
        started_at=started_at,
        duration_s=round(time.monotonic() - began, 1),
        result=plan.RESULT.get(code, "failed"),
        exit=code,
        installed=work.install,
        built=False,
        failed_step="" if code == plan.REDEPLOYED else deployer.current,
        trigger=f"{env.trigger} (following the declaration)",
        summary=summary,
    )
    releases.append(stack.paths.run, release)
    return code, summary


def _stop_workers(env: TickEnv) -> bool:
    """Stop every worker at once (each finishing its job within its grace); False when that failed too."""
    try:
        stop_programs(env.stack, env.supervisor, env.deadlines.stop, env.report)
    except ProteaError:
        return False
    return True
