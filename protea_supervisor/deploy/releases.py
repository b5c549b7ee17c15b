"""Release history: every deploy a tick makes (the revision changes, or it was tried and rolled back) is
one entry in `<run>/deploys.json`, newest last, the newest 1000 kept. The file is rewritten whole (temp
file, then rename), so a crash never leaves half an entry. `deploys` lists it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from protea_supervisor.humane import ago
from protea_supervisor.stackfile.files import write_atomic

HISTORY_FILE = "deploys.json"
KEEP = 1000


@dataclass(frozen=True)
class Release:
    revision: str
    previous: str
    started_at: str  # ISO 8601, UTC
    duration_s: float
    result: str  # deployed, failed-rolled-back, ... (deploy.MEANING of the exit code)
    exit: int
    installed: bool
    built: bool
    failed_step: str  # "" when it succeeded
    trigger: str  # "timer (trigger:new-commit)", "by hand (alice)", "first deploy (up)"
    summary: str


def from_doc(doc: Any) -> Release | None:
    if not isinstance(doc, dict):
        return None
    try:
        return Release(**{f.name: doc[f.name] for f in fields(Release)})
    except (KeyError, TypeError):
        return None


def read_history(run_dir: Path) -> list[Release]:
    try:
        docs = json.loads((run_dir / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in map(from_doc, docs if isinstance(docs, list) else []) if r is not None]


def append(run_dir: Path, release: Release, keep: int = KEEP) -> None:
    history = [*read_history(run_dir), release][-keep:]
    write_atomic(run_dir / HISTORY_FILE, json.dumps([asdict(r) for r in history], indent=1) + "\n")


class NoTarget(ValueError):
    """No revision in the history can be rolled back to as asked."""


def rollback_target(history: Sequence[Release], current: str, requested: str = "") -> str:
    """The revision `rollback` deploys: a revision that was deployed here successfully and is not the current
    one; the newest such without `requested`, else the one whose sha starts with `requested`."""
    good: list[str] = []
    for release in reversed(history):
        if release.result == "deployed" and release.revision != current and release.revision not in good:
            good.append(release.revision)
    if not requested:
        if not good:
            raise NoTarget("no earlier revision was deployed successfully here; `deploys` shows the history")
        return good[0]
    if len(requested) < 4 or not all(c in "0123456789abcdef" for c in requested.lower()):
        raise NoTarget(f"{requested!r} is not a revision (at least 4 hex digits of its sha)")
    matches = [r for r in good if r.startswith(requested.lower())]
    if len(matches) > 1:
        raise NoTarget(f"{requested} matches {len(matches)} deployed revisions; give more of the sha")
    if not matches:
        if current.startswith(requested.lower()):
            raise NoTarget(f"{requested} is the revision deployed now")
        raise NoTarget(
            f"{requested} was never deployed successfully here; `deploys` lists the revisions that were"
        )
    return matches[0]


def table(releases: Sequence[Release], now: float) -> str:
    if not releases:
        return "no deploys recorded yet (a tick that deploys adds one)"
    lines = [f"{'WHEN':<32} {'REVISION':<10} {'RESULT':<22} {'TOOK':>7}  {'WORK':<15} TRIGGER"]
    for r in reversed(releases):
        try:
            when = f"{r.started_at[:19]}Z ({ago(datetime.fromisoformat(r.started_at).timestamp(), now)})"
        except ValueError:
            when = r.started_at
        work = "+".join(w for w, on in (("install", r.installed), ("build", r.built)) if on) or "code only"
        result = r.result + (f" at {r.failed_step}" if r.failed_step else "")
        lines.append(
            f"{when:<32} {r.revision[:10]:<10} {result:<22} {r.duration_s:>6.1f}s  {work:<15} {r.trigger}"
        )
    return "\n".join(lines)
