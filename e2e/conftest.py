"""The end-to-end stage (scripts/e2e.sh): one world for the whole sequence, and its figures at the end."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stage import Figures, Stage

STAGES: list[Stage] = []


@pytest.fixture(scope="module")
def stage() -> Iterator[Stage]:
    base = Path(tempfile.mkdtemp(prefix="e2e-"))
    world = Stage(base)
    STAGES.append(world)
    world.create()
    yield world
    world.destroy()
    if os.environ.get("PROTEA_E2E_KEEP") != "1":
        shutil.rmtree(base, ignore_errors=True)


def cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


COLUMNS: list[tuple[str, Callable[[Figures], object]]] = [
    ("exit", lambda f: f.code),
    ("s", lambda f: round(f.seconds, 1)),
    ("API failed", lambda f: f"{f.api_failed}/{f.api_polls}"),
    ("resets", lambda f: f.api_resets),
    ("proxy failed", lambda f: f.proxy_failed),
    ("web failed", lambda f: f"{f.web_failed}/{f.web_polls}"),
    ("web gap s", lambda f: f.web_gap),
    ("API new s", lambda f: f.serving_after),
    ("page new s", lambda f: f.extra.get("page_after")),
    ("next start s", lambda f: f.extra.get("next_start")),
    ("jobs", lambda f: f.jobs),
    ("cut off", lambda f: f.cut_off),
]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of every step, as a table, and as JSON in $PROTEA_E2E_FIGURES when it is set."""
    for world in STAGES:
        terminalreporter.section("the real servers' figures")
        header = f"{'step':<22} " + " ".join(f"{name:>{len(name) + 1}}" for name, _ in COLUMNS)
        terminalreporter.write_line(header)
        for f in world.figures:
            cells = " ".join(f"{cell(get(f)):>{len(name) + 1}}" for name, get in COLUMNS)
            terminalreporter.write_line(f"{f.step:<22} {cells}")
        out = os.environ.get("PROTEA_E2E_FIGURES")
        if out:
            Path(out).write_text(json.dumps([asdict(f) for f in world.figures], indent=2) + "\n")
