"""Process counts chosen at run time (`up N`, later `scale`), kept in the run dir so `render` keeps them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from protea_supervisor.errors import StackError
from protea_supervisor.files import write_atomic
from protea_supervisor.stack import Stack

FILENAME = "overrides.json"


def apply_counts(stack: Stack, counts: Mapping[str, int]) -> Stack:
    """Set process counts by program name; counts for queues no longer in the stack are ignored."""
    queues = []
    for queue in stack.queues:
        count = counts.get(queue.program)
        if count is not None and count != queue.processes:
            if count > 1 and not queue.numbered:
                raise StackError(f"{queue.name} is an unnumbered queue and runs one process, not {count}.")
            queue = replace(queue, processes=count)
        queues.append(queue)
    return replace(stack, queues=tuple(queues))


def batch_counts(stack: Stack, count: int) -> dict[str, int]:
    """manage.sh `start N`: N processes for every numbered queue in use (the two batch queues by default)."""
    if count < 1:
        raise StackError(f"the process count must be at least 1, got {count}.")
    return {q.program: count for q in stack.queues if q.numbered and q.processes}


def load_counts(run_dir: Path) -> dict[str, int]:
    path = run_dir / FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as why:
        raise StackError(
            f"{path}: cannot read the recorded process counts ({why}); remove the file."
        ) from None
    counts = data.get("processes", {}) if isinstance(data, dict) else None
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise StackError(f"{path}: processes must map program names to counts; remove the file.")
    return counts


def save_counts(run_dir: Path, counts: Mapping[str, int]) -> None:
    write_atomic(run_dir / FILENAME, json.dumps({"processes": dict(sorted(counts.items()))}, indent=2) + "\n")
