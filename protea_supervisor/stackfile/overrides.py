"""Process counts chosen at run time (`up N`, later `scale`), kept in the run dir so `render` keeps them."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import replace
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


def with_overrides(stack: Stack) -> Stack:
    """The stack as it runs: with the counts and numbering recorded by `up N` and `scale`."""
    return apply_counts(stack, load_counts(stack.paths.run), load_numbered(stack.paths.run))


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


def load_counts(run_dir: Path) -> dict[str, int]:
    counts = _load(run_dir).get("processes", {})
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_PROCESSES for v in counts.values()
    ):
        raise StackError(
            f"{run_dir / FILENAME}: processes must map program names to counts; remove the file."
        )
    return counts


def load_numbered(run_dir: Path) -> set[str]:
    """Unnumbered queues an operator has let `scale --yes` number (their one worker was renamed once)."""
    numbered = _load(run_dir).get("numbered", [])
    if not isinstance(numbered, list) or not all(isinstance(v, str) for v in numbered):
        raise StackError(f"{run_dir / FILENAME}: numbered must list program names; remove the file.")
    return set(numbered)


def load_pinned(run_dir: Path) -> set[str]:
    """Autoscaled queues (by program) an operator pinned with `scale Q N`, until `scale Q --auto`."""
    pinned = _load(run_dir).get("pinned", [])
    if not isinstance(pinned, list) or not all(isinstance(v, str) for v in pinned):
        raise StackError(f"{run_dir / FILENAME}: pinned must list program names; remove the file.")
    return set(pinned)


def save_counts(
    run_dir: Path,
    counts: Mapping[str, int],
    numbered: Collection[str] | None = None,
    pinned: Collection[str] | None = None,
) -> None:
    kept = load_numbered(run_dir) if numbered is None else set(numbered)
    pins = load_pinned(run_dir) if pinned is None else set(pinned)
    document = {"processes": dict(sorted(counts.items())), "numbered": sorted(kept), "pinned": sorted(pins)}
    write_atomic(run_dir / FILENAME, json.dumps(document, indent=2) + "\n")
