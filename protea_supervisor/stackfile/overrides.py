"""Process counts chosen at run time (`up N`, later `scale`), kept in the run dir so `render` keeps them."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile.files import write_atomic
from protea_supervisor.stackfile.stack import MAX_PROCESSES, Stack, quoted

FILENAME = "overrides.json"


def apply_counts(stack: Stack, counts: Mapping[str, int], numbered: Collection[str] = ()) -> Stack:
    """Set process counts by program name, and number the queues `scale --yes` renamed; entries for queues
    no longer in the stack are ignored."""
    queues = []
    for queue in stack.queues:
        count = counts.get(queue.program)
        if queue.program in numbered and not queue.numbered:
            queue = replace(queue, numbered=True)
        if count is not None and count != queue.processes:
            if count > 1 and not queue.numbered:
                raise StackError(f"{queue.name} is an unnumbered queue and runs one process, not {count}.")
            queue = replace(queue, processes=count)
        queues.append(queue)
    return replace(stack, queues=tuple(queues))


def with_overrides(stack: Stack, recorded: Recorded | None = None) -> Stack:
    """The stack as it runs: with the counts and numbering recorded by `up N` and `scale` (`recorded`, or
    read now)."""
    found = recorded or load(stack.paths.run)
    return apply_counts(stack, found.counts, found.numbered)


def shadowed_counts(base: Stack, running: Stack) -> list[tuple[str, str, str, int, int]]:
    """Queues whose stack-file count an override shadows: (queue, dotted key, file, stack count, count)."""
    wanted = {q.name: q.processes for q in base.queues}
    shadowed = []
    for queue in running.queues:
        if queue.name in wanted and wanted[queue.name] != queue.processes:
            key = f"queues.{quoted(queue.name)}.processes"
            shadowed.append((queue.name, key, base.origin(key), wanted[queue.name], queue.processes))
    return shadowed


def batch_counts(stack: Stack, count: int) -> dict[str, int]:
    """manage.sh `start N`: N processes for every numbered queue in use (the two batch queues by default)."""
    if count < 1:
        raise StackError(f"the process count must be at least 1, got {count}.")
    return {q.program: count for q in stack.queues if q.numbered and q.processes and not q.singleton}


def _load(run_dir: Path) -> dict[str, object]:
    path = run_dir / FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as why:
        raise StackError(
            f"{path}: cannot read the recorded process counts ({why}); remove the file."
        ) from None
    if not isinstance(data, dict):
        raise StackError(f"{path}: expected a JSON object; remove the file.")
    return data


@dataclass(frozen=True)
class Recorded:
    """What overrides.json holds, read and checked in one go."""

    counts: dict[str, int]  # process counts by program name
    numbered: frozenset[str]  # unnumbered queues an operator let `scale --yes` number (renamed once)
    pinned: frozenset[str]  # autoscaled queues an operator pinned with `scale Q N`, until `scale Q --auto`


def load(run_dir: Path) -> Recorded:
    data = _load(run_dir)
    counts, numbered, pinned = data.get("processes", {}), data.get("numbered", []), data.get("pinned", [])
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_PROCESSES for v in counts.values()
    ):
        raise StackError(
            f"{run_dir / FILENAME}: processes must map program names to counts; remove the file."
        )
    lists: dict[str, frozenset[str]] = {}
    for key, names in (("numbered", numbered), ("pinned", pinned)):
        if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
            raise StackError(f"{run_dir / FILENAME}: {key} must list program names; remove the file.")
        lists[key] = frozenset(names)
    return Recorded(dict(counts), lists["numbered"], lists["pinned"])


def load_counts(run_dir: Path) -> dict[str, int]:
    return load(run_dir).counts


def load_pinned(run_dir: Path) -> set[str]:
    return set(load(run_dir).pinned)


def save_counts(
    run_dir: Path,
    counts: Mapping[str, int],
    numbered: Collection[str] | None = None,
    pinned: Collection[str] | None = None,
) -> None:
    if numbered is None or pinned is None:  # what is not given stays as recorded
        recorded = load(run_dir)
        numbered = recorded.numbered if numbered is None else numbered
        pinned = recorded.pinned if pinned is None else pinned
    document = {"processes": dict(sorted(counts.items())), "numbered": sorted(set(numbered)),
                "pinned": sorted(set(pinned))}  # fmt: skip
    write_atomic(run_dir / FILENAME, json.dumps(document, indent=2) + "\n")
