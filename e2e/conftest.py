"""The end-to-end stage (scripts/e2e.sh): one world for the whole sequence, and its figures at the end."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stage import Stage

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of every step, as a table, and as JSON in $PROTEA_E2E_FIGURES when it is set."""
    for world in STAGES:
        terminalreporter.section("the real servers' figures")
        terminalreporter.write_line(
            f"{'step':<22} {'exit':>4} {'s':>6} {'API failed':>11} {'proxy failed':>12} {'web failed':>11} "
            f"{'web gap s':>9} {'API new s':>9} {'page new s':>10} {'next start s':>12} "
            f"{'jobs':>4} {'cut off':>7}"
        )
        for f in world.figures:
            serving = "-" if f.serving_after is None else f"{f.serving_after:.1f}"
            page = f.extra.get("page_after", "-")
            ready = f.extra.get("next_start", "-")
            terminalreporter.write_line(
                f"{f.step:<22} {f.code:>4} {f.seconds:>6.1f} {f'{f.api_failed}/{f.api_polls}':>11} "
                f"{f.proxy_failed:>12} {f'{f.web_failed}/{f.web_polls}':>11} {f.web_gap:>9.2f} {serving:>9} "
                f"{page:>10} {ready:>12} {f.jobs:>4} {f.cut_off:>7}"
            )
        out = os.environ.get("PROTEA_E2E_FIGURES")
        if out:
            Path(out).write_text(json.dumps([asdict(f) for f in world.figures], indent=2) + "\n")
