"""What a deploy does to the running stack, step by step: install, migrate, prove the new revision's API
(on its own port first, with a canary), move the API, then the rest, and verify. `tick.Deployer` calls these
in the order of `plan.deploy_plan`; each raises a domain error whose kind `plan.blame` classifies.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor.deploy.apiswitch import answer, killed, replaced
from protea_supervisor.deploy.plan import short as deploy_short
from protea_supervisor.deploy.tickenv import TickEnv
from protea_supervisor.deploy.webbuild import run_command
from protea_supervisor.deploy.worktree import StepError
from protea_supervisor.errors import ProteaError, SupervisorDown
from protea_supervisor.hosts import declared
from protea_supervisor.hosts.guard import read_refusals
from protea_supervisor.progress import Ticker
from protea_supervisor.stackfile.host import REFUSALS
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.apply import (
    LIVE,
    UP,
    apply_plan,
    stack_is_up,
    start_group,
    states,
    wait_until_gone_or_down,
)
from protea_supervisor.supervisord.gate_contract import read_state as read_gate_state
from protea_supervisor.supervisord.lifecycle import gate_deadline
from protea_supervisor.supervisord.probes import wait_http
from protea_supervisor.supervisord.reconcile import describe_plan, plan_from_document
from protea_supervisor.supervisord.render import CANARY
from protea_supervisor.supervisord.status import process_revision

HEALTH_PROBE_DEADLINE = 5.0


# --- commands and the frontend build --------------------------------------------------------------------


def install(env: TickEnv) -> None:
    """The install command, then the post-install one (PROTEA reinstalls its CUDA torch there: an install
    without it leaves the GPU build clobbered)."""
    settings, root = env.stack.deploy, env.stack.paths.root
    steps = ((settings.install_command, "install"), (settings.post_install_command, "post-install"))
    for command, what in steps:
        if command:
            run_command(command, root, env.environ, what, env.secrets)


# --- supervisord ----------------------------------------------------------------------------------------


def own_groups(stack: Stack) -> set[str]:
    return {p.role for p in stack.programs if p.enabled and p.role != "migrate"} | {
        q.program for q in stack.queues if q.processes
    }


def refused_for_good(info: Mapping[str, Any], refused: Mapping[str, str]) -> bool:
    """A process down because a check refused its last start (a singleton another host holds, the revision
    guard): final, as supervisord takes its exit 78; starting it again would only be refused again."""
    return info["statename"] in ("EXITED", "FATAL") and f"{info['group']}:{info['name']}" in refused


def all_running(env: TickEnv) -> bool:
    """Every long-running process RUNNING, but for one refused for good."""
    groups = own_groups(env.stack)
    infos = [i for i in env.supervisor.all_process_info() if i["group"] in groups]
    refused = read_refusals(env.stack.paths.run / REFUSALS)
    return {i["group"] for i in infos} == groups and all(
        i["statename"] == "RUNNING" or refused_for_good(i, refused) for i in infos
    )


def healthy(env: TickEnv) -> bool:
    """Every long-running program RUNNING and the API and web probes answering."""
    if not env.supervisor.is_running() or not all_running(env):
        return False
    probes = env.stack.probes
    return not any(
        wait_http(url, HEALTH_PROBE_DEADLINE) for url in (probes.api_ready_url, probes.web_url) if url
    )


def run_migrate(env: TickEnv) -> None:
    stack, supervisor = env.stack, env.supervisor
    if not stack.program("migrate").enabled:
        return
    plan = plan_from_document(supervisor.plan_reload())
    if "migrate" in plan.changed:
        replace_idle(env, "migrate")
    env.report("running migrate")
    supervisor.start("migrate:migrate")
    end = time.monotonic() + env.deadlines.stop + 600
    ticker = Ticker(env.report)
    while time.monotonic() < end:
        ticker.say("  migrate is running")
        info = next(i for i in supervisor.all_process_info() if i["name"] == "migrate")
        if info["statename"] == "EXITED":
            if info["exitstatus"] != 0:
                raise StepError(f"migrate exited {info['exitstatus']}", "exit")
            return
        if info["statename"] in ("FATAL", "STOPPED"):
            raise StepError(f"migrate is {info['statename']}", "exit")
        time.sleep(0.2)
    raise StepError("migrate did not finish", "exit")


def replace_idle(env: TickEnv, group: str) -> None:
    """Swap in a one-shot's new config once it is not running (the gate may have just started it)."""
    wait_until_gone_or_down(
        env.supervisor, group, states(env.supervisor, group), env.deadlines.stop, env.report
    )
    env.supervisor.replace_group(group)


GATE_HELLO = 30.0  # how long a tick waits for a just-booted supervisord's gate listener to say what it does


def wait_gate_idle(env: TickEnv) -> None:
    """A gate run in progress (supervisord just booted, or `up`) owns the start order: let it finish. Right
    after a boot the gate listener may not have said yet that it runs the gate (CI saw a tick restart the API
    while the boot's gate was starting it): until the state file is this supervisord's, and while the gate
    listener is coming up, the tick waits for it too."""
    deadline = time.monotonic() + gate_deadline(env.stack)
    ticker = Ticker(env.report)
    pid, hello = env.supervisor.pid(), time.monotonic() + GATE_HELLO
    while (read_gate_state(env.stack.paths.run) or {}).get("supervisord_pid") != pid:
        gate = states(env.supervisor, "gate").get("gate", "")
        if gate not in ("STARTING", "RUNNING", "BACKOFF") or time.monotonic() > hello:
            break
        ticker.say("the gate listener of the new supervisord is starting; waiting for it")
        time.sleep(0.1)
    while (read_gate_state(env.stack.paths.run) or {}).get("phase") == "running":
        ticker.say("the gate is starting the stack; waiting for it to finish")
        if time.monotonic() > deadline:
            raise StepError("the gate did not finish", "refused")
        time.sleep(0.5)


def apply_revision(env: TickEnv, revision: str) -> None:
    """Render with the revision, restart what changed (workers within their grace) and start what is not
    running through the gate. migrate is not run here (its own step, only going forward)."""
    env.write_config(revision)
    plan = plan_from_document(env.supervisor.plan_reload())
    # The tick must not restart itself; migrate takes its new config when it is next run.
    keep = plan.moved - {"deploy-tick"}
    # The canary only takes its new config; only a deploy's canary step starts it.
    on_demand = {CANARY} & {*plan.added, *plan.changed}
    if "api" in plan.changed and replaced(env):
        keep -= {"api"}
    moving = plan.only(keep - {"migrate"} - on_demand)
    if "migrate" in plan.changed:
        replace_idle(env, "migrate")
    for group in on_demand:
        _refresh(env, group)
    for line in describe_plan(moving):
        env.report(line)
    up = stack_is_up(env.stack, env.supervisor)
    apply_plan(env.supervisor, moving, env.deadlines, env.report, up)
    if not up or not all_running(env):
        env.report("starting what is not running through the gate")
        env.run_gate()


def verify(env: TickEnv) -> None:
    if not env.supervisor.is_running():
        raise SupervisorDown("supervisord is not running.")
    probes = env.stack.probes
    for url, deadline, what in (
        (probes.api_ready_url, probes.api_ready_timeout, "API readiness"),
        (probes.web_url, probes.web_timeout, "web"),
    ):
        if url:
            problem = wait_http(url, deadline, waiting=Ticker(env.report).say)
            if problem:
                raise StepError(f"{what} probe {url}: {problem} after {deadline} s", "probe")


# --- the API first, then the rest -----------------------------------------------------------------------

POLL = 0.25


def _refresh(env: TickEnv, group: str) -> None:
    """Put the re-read config of one on-demand group (the canary) in place. One still running is what an
    interrupted tick left (the canary step always stops its own): it is stopped first, never waited for (the
    generated sequences found a tick killed mid-canary left it holding its port, and every later tick
    refused at its canary, then hung in the rollback waiting for it to stop by itself)."""
    _stop(env, group)
    plan = plan_from_document(env.supervisor.plan_reload())
    if group in plan.added:
        env.supervisor.add_group(group)
    elif group in plan.changed:
        replace_idle(env, group)


def _port_taken(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def prove_canary(env: TickEnv, revision: str) -> None:
    """The new revision's API on its own port (`api-canary`): started, probed at deploy.api_canary_url until
    it answers 2xx within probes.api_ready_timeout, and stopped whatever the verdict. The serving API is not
    touched, so a revision whose API never gets ready never serves a request."""
    stack, supervisor = env.stack, env.supervisor
    url, timeout = stack.deploy.api_canary_url, stack.probes.api_ready_timeout
    env.write_config(revision)
    _refresh(env, CANARY)
    if _port_taken(url):
        raise StepError(f"the canary's address {url} is taken by a process that is not the canary", "refused")
    supervisor.start(f"{CANARY}:{CANARY}")
    started = next((int(i["pid"]) for i in supervisor.all_process_info() if i["name"] == CANARY), 0)
    end = time.monotonic() + timeout
    ticker = Ticker(env.report)
    problem = "no answer"
    try:
        while True:
            info = next((i for i in supervisor.all_process_info() if i["name"] == CANARY), None)
            state = info["statename"] if info else "gone"
            if state not in ("STARTING", "RUNNING"):
                signal = killed(supervisor, info, started)
                if signal:
                    raise StepError(
                        f"the canary {CANARY} was killed by {signal} before it got ready (not an exit of its "
                        "own: the revision is not blamed); the serving API was not touched",
                        "killed",
                    )
                exit_status = f" (exit {info['exitstatus']})" if info and state == "EXITED" else ""
                raise StepError(
                    f"the canary {CANARY} is {state}{exit_status} before it got ready; see "
                    f"`protea-supervisor logs {CANARY}`; the serving API was not touched",
                    "program",
                )
            problem, _pid = answer(url, min(5.0, max(0.2, end - time.monotonic())))
            if not problem:
                env.report(f"the canary answered {url}: {deploy_short(revision)} gets ready on its own")
                return
            if time.monotonic() >= end:
                raise StepError(
                    f"the canary never got ready at {url} ({problem} after {timeout} s); "
                    "the serving API was not touched",
                    "probe",
                )
            ticker.say(f"  waiting for the canary at {url} ({problem})")
            time.sleep(POLL)
    finally:
        _stop(env, CANARY)


def _stop(env: TickEnv, group: str) -> None:
    with contextlib.suppress(ProteaError):
        if any(s in LIVE for s in states(env.supervisor, group).values()):
            env.supervisor.stop_group(group)
        wait_until_gone_or_down(env.supervisor, group, states(env.supervisor, group), env.deadlines.stop,
                                env.report)  # fmt: skip


def restart_api(env: TickEnv, revision: str) -> None:
    """Render with the revision and move the API alone onto it; it must answer its readiness URL within
    probes.api_ready_timeout before anything else moves. Workers and web keep their config meanwhile. On a
    socket supervisord holds, the new API starts beside the serving one and replaces it once it answers
    (`apiswitch`); else the API restarts."""
    stack, supervisor = env.stack, env.supervisor
    if not stack.program("api").enabled:
        env.write_config(revision)
        return
    env.write_config(revision)
    moving = plan_from_document(supervisor.plan_reload()).only({"api"})
    if "api" in moving.changed and replaced(env):
        return
    for line in describe_plan(moving):
        env.report(line)
    apply_plan(supervisor, moving, env.deadlines, env.report, start_added=True)
    if not any(s in UP for s in states(supervisor, "api").values()):
        env.report("  api: not running; starting it")
        start_group(supervisor, "api", env.deadlines, env.report)
    url, timeout = stack.probes.api_ready_url, stack.probes.api_ready_timeout
    if url:
        problem = wait_http(url, timeout, waiting=Ticker(env.report).say)
        if problem:
            raise StepError(f"API readiness probe {url}: {problem} after {timeout} s", "probe")


def declare_revision(env: TickEnv, revision: str) -> None:
    """Record `revision` in the server's Postgres as the one that may consume (`declared`)."""
    host = env.stack.host
    digest = declared.migration_digest(env.stack.paths.root, revision, host.migrations_dir)
    declared.declare(env.environ.get(host.db_url_env, ""), host.db_url_env, revision, digest, host.name)
    env.report(f"declared {deploy_short(revision)} in Postgres ({declared.TABLE}) from {host.name}")


def off_revision(env: TickEnv, revision: str) -> list[str]:
    """Each of this stack's own processes that is not RUNNING `revision` by its own environment
    (PROTEA_REVISION, read from /proc), not only by the config; a group with no process at all counts too,
    a process refused for good does not."""
    groups = own_groups(env.stack)
    refused = read_refusals(env.stack.paths.run / REFUSALS)
    infos = [i for i in env.supervisor.all_process_info() if i["group"] in groups]
    wrong = [f"{g}: no process" for g in sorted(groups - {i["group"] for i in infos})]
    for info in infos:
        if refused_for_good(info, refused):
            continue
        if info["statename"] != "RUNNING":
            wrong.append(f"{info['name']} {info['statename']}")
        elif (running := process_revision(int(info["pid"]))) != revision:
            wrong.append(f"{info['name']} runs {deploy_short(running or '')}")
    return wrong


def verify_node(env: TickEnv, revision: str) -> None:
    """A node moved onto `revision`: every worker RUNNING it, by its own environment."""
    if not own_groups(env.stack):
        raise StepError("no worker runs on this node", "program")
    wrong = off_revision(env, revision)
    if wrong:
        raise StepError(f"not every worker runs {deploy_short(revision)}: {', '.join(wrong)}", "program")
    env.report(f"every worker runs {deploy_short(revision)}")
