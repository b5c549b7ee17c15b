"""The start order of a stack and the pure judgement of each stage from supervisord's process info."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from protea_supervisor.stack import Stack

RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")


@dataclass(frozen=True)
class Stage:
    label: str
    groups: tuple[str, ...]
    oneshot: bool
    deadline: float


@dataclass(frozen=True)
class Verdict:
    done: bool
    failed: bool
    reason: str = ""
    failed_process: str = ""
    waiting_on: tuple[str, ...] = ()


def stages(stack: Stack) -> list[Stage]:
    """migrate -> api -> workers -> web -> tunnel, the order manage.sh used. Disabled programs drop out."""
    enabled = {p.role: p for p in stack.programs if p.enabled}
    plan: list[Stage] = []

    def add(label: str, groups: Sequence[str], oneshot: bool, startsecs: int) -> None:
        if groups:
            plan.append(Stage(label, tuple(groups), oneshot, deadline=float(startsecs) + 60.0))

    if "migrate" in enabled:
        add("migrate", ["migrate"], True, 0)
    if "api" in enabled:
        add("api", ["api"], False, enabled["api"].startsecs)
    add("workers", [q.program for q in stack.queues if q.processes], False, stack.workers.startsecs)
    if "web" in enabled:
        add("web", ["web"], False, enabled["web"].startsecs)
    if "tunnel" in enabled:
        add("tunnel", ["tunnel"], False, enabled["tunnel"].startsecs)
    return plan


def describe(info: dict[str, Any]) -> str:
    if info["statename"] == "EXITED":
        return f"exited with status {info['exitstatus']}"
    if info["statename"] == "FATAL":
        return f"could not be started ({info.get('spawnerr') or info.get('description') or 'FATAL'})"
    return str(info["statename"]).lower()


def assess(stage: Stage, infos: Iterable[dict[str, Any]]) -> Verdict:
    members = [i for i in infos if i["group"] in stage.groups]
    missing = set(stage.groups) - {i["group"] for i in members}
    if missing:
        return Verdict(
            False, True, f"supervisord does not know {', '.join(sorted(missing))}; render and reload"
        )
    waiting = []
    for info in members:
        state = info["statename"]
        if stage.oneshot:
            if state == "EXITED" and info["exitstatus"] == 0:
                continue
            if state in ("EXITED", "FATAL"):
                return Verdict(False, True, describe(info), failed_process=_full_name(info))
        else:
            if state == "RUNNING":
                continue
            if state in ("FATAL", "EXITED"):
                return Verdict(False, True, describe(info), failed_process=_full_name(info))
        waiting.append(_display_name(info))
    return Verdict(done=not waiting, failed=False, waiting_on=tuple(waiting))


def needs_start(stage: Stage, infos: Iterable[dict[str, Any]]) -> list[str]:
    """Process names (group:name) of the stage that are not up yet and must be asked to start."""
    wanted = []
    for info in infos:
        if info["group"] not in stage.groups:
            continue
        if stage.oneshot and info["statename"] == "EXITED" and info["exitstatus"] == 0:
            continue
        if info["statename"] not in RUNNING_STATES:
            wanted.append(_full_name(info))
    return wanted


def _full_name(info: dict[str, Any]) -> str:
    return f"{info['group']}:{info['name']}"


def _display_name(info: dict[str, Any]) -> str:
    return str(info["name"])
