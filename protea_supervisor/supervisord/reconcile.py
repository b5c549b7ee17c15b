"""What changes between a running group and its re-read config. Pure: configs are compared with `==`.

supervisord's own `reread` calls a group `changed` when any part of it differs, including only its process
count, and `update` then restarts every process in it (supervisor-facts Q1). This module tells the two
apart: a count-only change is reconciled in place by the extension; anything else is a real change.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from protea_supervisor.progress import names


@dataclass(frozen=True)
class GroupDiff:
    """One group's processes, running vs re-read, by process name (in the re-read config's order)."""

    unchanged: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def count_only(self) -> bool:
        return not self.changed and bool(self.added or self.removed)

    @property
    def identical(self) -> bool:
        return not (self.changed or self.added or self.removed)


def diff_group(running: Mapping[str, object], wanted: Sequence[tuple[str, object]]) -> GroupDiff:
    """`running` maps process names to their live configs; `wanted` lists the re-read ones in order."""
    wanted_names = {name for name, _ in wanted}
    return GroupDiff(
        unchanged=tuple(name for name, cfg in wanted if name in running and running[name] == cfg),
        added=tuple(name for name, _ in wanted if name not in running),
        removed=tuple(sorted((n for n in running if n not in wanted_names), key=_numbered_key)),
        changed=tuple(name for name, cfg in wanted if name in running and running[name] != cfg),
    )


def _numbered_key(name: str) -> tuple[str, int]:
    # worker-x-10 sorts after worker-x-9.
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, 0)


@dataclass(frozen=True)
class ReloadPlan:
    """The running supervisord against the re-rendered config, group by group."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    scaled: tuple[tuple[str, GroupDiff], ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    priority: tuple[tuple[str, int], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.scaled or self.changed)

    @property
    def moved(self) -> set[str]:
        """Every group the plan touches."""
        return {*self.added, *self.removed, *(g for g, _ in self.scaled), *self.changed}

    def only(self, groups: Collection[str]) -> ReloadPlan:
        """The part of the plan that touches `groups`; everything else counts as unchanged."""
        keep = set(groups)
        moved = self.moved
        return ReloadPlan(
            added=tuple(g for g in self.added if g in keep),
            removed=tuple(g for g in self.removed if g in keep),
            scaled=tuple((g, d) for g, d in self.scaled if g in keep),
            changed=tuple(g for g in self.changed if g in keep),
            unchanged=tuple(sorted({*self.unchanged, *(moved - keep)})),
            priority=self.priority,
        )

    def in_start_order(self, names: tuple[str, ...]) -> list[str]:
        """Lowest priority first, as supervisord starts groups (migrate, api, workers, web, tunnel)."""
        priority = dict(self.priority)
        return sorted(names, key=lambda name: (priority.get(name, 999), name))


def plan_from_document(doc: Mapping[str, object]) -> ReloadPlan:
    """The plan as `protea.planReload` returns it over XML-RPC."""

    def names(key: str) -> tuple[str, ...]:
        value = doc.get(key, [])
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    scaled_doc = doc.get("scaled", {})
    scaled = []
    if isinstance(scaled_doc, dict):
        for group, diff in sorted(scaled_doc.items()):
            scaled.append(
                (
                    str(group),
                    GroupDiff(
                        unchanged=tuple(diff.get("unchanged", ())),
                        added=tuple(diff.get("added", ())),
                        removed=tuple(diff.get("removed", ())),
                        changed=(),
                    ),
                )
            )
    priority = doc.get("priority", {})
    return ReloadPlan(
        added=names("added"),
        removed=names("removed"),
        scaled=tuple(scaled),
        changed=names("changed"),
        unchanged=names("unchanged"),
        priority=tuple(sorted((str(k), int(v)) for k, v in priority.items()))
        if isinstance(priority, dict)
        else (),
    )


def describe_plan(plan: ReloadPlan, replaced: Collection[str] = ()) -> list[str]:
    """The lines `reload` prints, one per group that moves, in the order they are applied; a changed group
    in `replaced` (the API on a socket supervisord holds) is replaced start-first, not restarted."""
    lines = []
    for group, diff in plan.scaled:
        parts = []
        if diff.added:
            parts.append("adds " + names(diff.added))
        if diff.removed:
            parts.append("stops " + names(diff.removed))
        kept = f"; {len(diff.unchanged)} untouched" if diff.unchanged else ""
        lines.append(f"scale    {group}: {'; '.join(parts)}{kept}")
    lines += [f"remove   {name}" for name in plan.removed]
    lines += [
        f"replace  {name} (start-first on its socket; restarted if it cannot be)"
        if name in replaced
        else f"restart  {name}"
        for name in plan.in_start_order(plan.changed)
    ]
    lines += [f"add      {name}" for name in plan.in_start_order(plan.added)]
    if plan.empty:
        lines.append("nothing to do: the running stack matches the rendered config")
    elif plan.unchanged:
        lines.append(f"untouched: {len(plan.unchanged)} program(s)")
    return lines


def scaled_count(current: int, spec: str, maximum: int) -> int:
    """`scale QUEUE N` (absolute) or `+N` / `-N` (relative to the current count), at most `maximum`."""
    text = spec.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise ValueError(f"the count must be N, +N or -N with N at most {maximum}, got {spec!r}")
    number = int(text)
    target = current + number if text[:1] in "+-" else number
    if target < 0:
        raise ValueError(f"{current} {text} would leave {target} processes")
    if target > maximum:
        raise ValueError(f"{target} processes is more than the maximum of {maximum} per queue")
    return target
