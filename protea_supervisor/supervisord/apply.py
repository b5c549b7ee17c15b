"""Applying `scale` and `reload` to a running supervisord, with the least disruption.

The decisions (which group is added, removed, scaled in place or really changed) come from the
extension's `planReload` and `reconcile`; this module carries them out through the XML-RPC facade and
waits on conditions with deadlines. `report` receives one line per step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from protea_supervisor.errors import ProgramFailed, StopTimeout
from protea_supervisor.progress import Ticker, names
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.control import RUNNING_STATES, Supervisor
from protea_supervisor.supervisord.reconcile import ReloadPlan

# Not yet stopped (STOPPING included), and up (starting or running).
LIVE = RUNNING_STATES
UP = ("STARTING", "RUNNING", "BACKOFF")
POLL = 0.2
# How long a started program may take to reach RUNNING (its startsecs plus a margin).
START_DEADLINE = 60.0
# Programs only a deploy starts (the tick itself, the API canary): added to supervisord, never started here.
ON_DEMAND = frozenset({"deploy-tick", "api-canary"})

Report = Callable[[str], None]


@dataclass(frozen=True)
class Deadlines:
    stop: float  # the longest stop grace in the stack, plus a margin
    start: float = START_DEADLINE


def states(supervisor: Supervisor, group: str | None = None) -> dict[str, str]:
    """Process name -> state name, for one group or all."""
    return {
        i["name"]: i["statename"]
        for i in supervisor.all_process_info()
        if group is None or i["group"] == group
    }


def stack_is_up(stack: Stack, supervisor: Supervisor) -> bool:
    """Any of the stack's own programs up (listeners do not count): then new programs are started too."""
    own = {p.role for p in stack.programs} | {q.program for q in stack.queues}
    return any(i["statename"] in UP for i in supervisor.all_process_info() if i["group"] in own)


def wait_until_gone_or_down(
    supervisor: Supervisor, group: str | None, processes: Iterable[str], deadline: float, report: Report
) -> None:
    """Wait until each named process (of one group, or of any) is stopped or dropped."""
    wanted = set(processes)
    end = time.monotonic() + deadline
    ticker = Ticker(report)
    while True:
        now = states(supervisor, group)
        busy = sorted(n for n in wanted if now.get(n) in LIVE)
        if not busy:
            return
        if time.monotonic() > end:
            raise StopTimeout(f"{names(busy)} did not stop within {deadline:g} s.")
        ticker.say(f"  waiting for {len(busy)} to finish their jobs (each within its grace): {names(busy)}")
        time.sleep(POLL)


def wait_started(
    supervisor: Supervisor,
    group: str,
    deadline: float,
    processes: Iterable[str] | None = None,
    report: Report | None = None,
) -> None:
    """Wait until every process of the group (or the named ones) is RUNNING, or a one-shot has exited;
    fail on FATAL."""
    wanted = None if processes is None else set(processes)
    end = time.monotonic() + deadline
    ticker = Ticker(report) if report else None
    while True:
        now = {n: s for n, s in states(supervisor, group).items() if wanted is None or n in wanted}
        failed = sorted(n for n, s in now.items() if s == "FATAL")
        if failed:
            raise ProgramFailed(f"{names(failed)} failed to start; see `protea-supervisor logs {failed[0]}`.")
        if now and all(s in ("RUNNING", "EXITED") for s in now.values()):
            return
        slow = [f"{n} {s}" for n, s in sorted(now.items()) if s != "RUNNING"]
        if time.monotonic() > end:
            raise ProgramFailed(f"{group} did not reach RUNNING within {deadline:g} s ({names(slow)}).")
        if ticker:
            ticker.say(f"  waiting for {group} to reach RUNNING: {names(slow)}")
        time.sleep(POLL)


def start_group(supervisor: Supervisor, group: str, deadlines: Deadlines, report: Report) -> None:
    supervisor.start_group(group)
    wait_started(supervisor, group, deadlines.start, report=report)


def sync_group(
    supervisor: Supervisor, group: str, deadlines: Deadlines, report: Report, wait: bool = True
) -> dict[str, list[str]]:
    draining = supervisor.draining().get(group, [])
    wanted = set(supervisor.plan_reload().get("scaled", {}).get(group, {}).get("added", []))
    back = sorted(wanted & set(draining))
    if back:
        # Asked for again while still finishing their jobs: they must be gone before they are added anew.
        report(f"  {group}: {names(back)} still finishing a job; waiting before adding them again")
        wait_until_gone_or_down(supervisor, group, back, deadlines.stop, report)
        wait_dropped(supervisor, group, back, deadlines.stop)
    result = supervisor.sync_group(group)
    if result["started"]:
        wait_started(supervisor, group, deadlines.start, result["started"], report)
    if result["added"]:
        started = " and running" if result["started"] else " (not started: the group is stopped)"
        report(f"  {group}: added {names(result['added'])}{started}")
    if result["removed"]:
        report(f"  {group}: stopping {names(result['removed'])}")
    report(f"  {group}: untouched {names(result['unchanged']) or 'none'}")
    if wait and result["draining"]:
        wait_until_gone_or_down(supervisor, group, result["draining"], deadlines.stop, report)
        report(f"  {group}: {names(result['draining'])} finished and removed")
    return result


def wait_dropped(supervisor: Supervisor, group: str, processes: Iterable[str], deadline: float) -> None:
    """Wait until stopped processes the extension is draining are dropped from the group (it drops them on
    their state event, or on the next TICK_5)."""
    wanted = set(processes)
    end = time.monotonic() + deadline
    while wanted & set(supervisor.draining().get(group, [])):
        if time.monotonic() > end:
            raise StopTimeout(f"{names(sorted(wanted))} were not dropped within {deadline:g} s.")
        time.sleep(POLL)


def restart_groups(
    supervisor: Supervisor, groups: Sequence[str], deadlines: Deadlines, report: Report
) -> None:
    """Replace changed groups of one priority together (the worker queues): all are told to stop at once and
    each finishes its job within its grace, as `down` drains them; then the new configs go in and the groups
    that were up start at once. Each queue is down only for its own restart either way; one after another,
    a deploy of PROTEA's eleven queues waited for eleven jobs and eleven startsecs in a row."""
    before = {group: states(supervisor, group) for group in groups}
    was_up = [g for g in groups if any(s in UP for s in before[g].values())]
    live = [g for g in groups if any(s in LIVE for s in before[g].values())]
    for group in live:
        report(f"  {group}: stopping")
        supervisor.stop_group(group)
    for group in live:
        wait_until_gone_or_down(supervisor, group, before[group], deadlines.stop, report)
    for group in groups:
        supervisor.replace_group(group)
    for group in was_up:
        supervisor.start_group(group)
    for group in groups:
        if group in was_up:
            wait_started(supervisor, group, deadlines.start, report=report)
            report(f"  {group}: restarted")
        else:
            report(f"  {group}: new config in place (it was not running, so it stays stopped)")


def apply_plan(
    supervisor: Supervisor, plan: ReloadPlan, deadlines: Deadlines, report: Report, start_added: bool
) -> None:
    """Count-only changes in place; removed groups stopped in parallel and dropped; changed ones restarted in
    priority order, those of one priority (the worker queues) together; added ones started in priority order
    when the stack is up."""
    for group, _diff in plan.scaled:
        sync_group(supervisor, group, deadlines, report, wait=False)
    for group in plan.removed:
        supervisor.stop_group(group)
    for group in plan.removed:
        wait_until_gone_or_down(supervisor, group, states(supervisor, group), deadlines.stop, report)
        supervisor.remove_group(group)
        report(f"  {group}: stopped and removed")
    ordered = plan.in_start_order(plan.changed)
    priority = dict(plan.priority)
    for _level, same in itertools.groupby(ordered, key=lambda group: priority.get(group, 999)):
        restart_groups(supervisor, list(same), deadlines, report)
    for group in plan.in_start_order(plan.added):
        supervisor.add_group(group)
        if start_added and group not in ON_DEMAND:
            start_group(supervisor, group, deadlines, report)
            report(f"  {group}: added and started")
        elif group in ON_DEMAND:
            report(f"  {group}: added (a deploy starts it when it needs it)")
        else:
            report(f"  {group}: added (the stack is not up, so it stays stopped)")
    for group, diff in plan.scaled:
        if diff.removed:
            wait_until_gone_or_down(supervisor, group, diff.removed, deadlines.stop, report)
