"""A compute node's tick (host.role = "node"): follow the revision the server declared in Postgres.

Read the declaration; fetch; decide (`hosts.follow_decision`); check the declared sha out, install only when
a lock file changed, restart the workers onto it and verify each one runs it (`hosts.follow_plan`, run by the
shared `Deployer`). Nodes never migrate and never declare. A node that fails to move stops its workers and
says why: a silent wrong consumer is worse than no consumer.
"""

from __future__ import annotations

import time
from dataclasses import replace

from protea_supervisor import deploy, hosts, releases
from protea_supervisor.declared import DeclarationUnavailable, current
from protea_supervisor.deploy import Step, Work
from protea_supervisor.errors import ProteaError
from protea_supervisor.executor import Deployer, now_iso, read_record, write_record
from protea_supervisor.guard import read_checkout
from protea_supervisor.heartbeats import read_all, server_export
from protea_supervisor.lifecycle import stop_programs
from protea_supervisor.rollout import off_revision
from protea_supervisor.tickenv import TickEnv
from protea_supervisor.worktree import StepError, changed_files, fetch, git


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
        return deploy.PREREQUISITES_DOWN, f"the declared revision could not be read: {why}"
    declared = declaration.revision if declaration else None
    record = read_record(stack)
    action, reason = hosts.follow_decision(
        record.revision, declared, bool(declared) and not off_revision(env, declared or ""), force
    )
    env.report(f"decision: {action}: {reason}")
    if action != "follow" or declared is None:
        return deploy.NOOP, reason
    export = server_export_now(env)
    if export:
        return deploy.NOOP, f"deferred: {export}; the node follows {hosts.short(declared)} at a later tick"
    if dry_run:
        for name, says in hosts.follow_plan(declared, install=True):
            env.report(f"plan: {name}: {says}")
        return deploy.NOOP, f"dry run: follow: {reason}; nothing was changed"
    try:
        fetch(stack, env.report)
        git(stack.paths.root, "cat-file", "-e", f"{declared}^{{commit}}")
    except StepError as failed:
        return deploy.FETCH_FAILED, f"the declared {hosts.short(declared)} could not be fetched: {failed}"
    dirty = read_checkout(stack.paths.root).changed
    if dirty:
        stopped = _stop_workers(env)
        return deploy.INFRA_FAILED, (
            f"the checkout {stack.paths.root} has uncommitted changes ({dirty[0].strip()}); a node never "
            f"overwrites them, so it does not move to {hosts.short(declared)}; "
            + ("the workers are stopped" if stopped else "stopping the workers FAILED")
        )
    changed = changed_files(stack.paths.root, record.revision, declared) if record.revision else None
    work = deploy.work_for(changed, stack.deploy.lock_files, stack.deploy.web_dir, True)
    steps = tuple(Step(name, says) for name, says in hosts.follow_plan(declared, work.install))
    deployer = Deployer(env, declared, record.revision, Work(install=work.install, build=False))
    began, started_at = time.monotonic(), now_iso()
    try:
        deployer.run(steps)
    except ProteaError as why:
        env.report(f"following {hosts.short(declared)} failed at {deployer.current}: {why}; stopping workers")
        stopped = _stop_workers(env)
        write_record(stack, replace(read_record(stack), result="follow failed; workers stopped"))
        code, summary = (
            deploy.INFRA_FAILED,
            (
                f"following the declared {hosts.short(declared)} failed at {deployer.current} ({why}); "
                + ("the workers are stopped" if stopped else "stopping the workers FAILED")
            ),
        )
    else:
        write_record(stack, deploy.after_success(read_record(stack), declared, "", now_iso()))
        was = hosts.short(record.revision)
        code, summary = deploy.REDEPLOYED, f"following the declared {hosts.short(declared)} (was {was})"
    # The node's release history (`deploys`), as the server's ticks keep theirs.
    release = releases.Release(
        revision=declared,
        previous=record.revision,
        started_at=started_at,
        duration_s=round(time.monotonic() - began, 1),
        result=deploy.RESULT.get(code, "failed"),
        exit=code,
        installed=work.install,
        built=False,
        failed_step="" if code == deploy.REDEPLOYED else deployer.current,
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
