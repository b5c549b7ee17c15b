"""Progress lines for waits: a line when what is awaited changes, and at least every 2 s while it does not,
so no command sits silent for longer than that."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

EVERY = 2.0
SHOWN_NAMES = 6


def names(items: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """`a, b, c and 497 more`: long lists (a large scale-down) stay one short line."""
    if len(items) <= shown:
        return ", ".join(items)
    return f"{', '.join(items[:shown])} and {len(items) - shown} more"


class Ticker:
    """Says a waiting line when it changes, or when `every` seconds passed since the last one."""

    def __init__(
        self, report: Callable[[str], None], every: float = EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.report = report
        self.every = every
        self.clock = clock
        self.began = clock()
        self.last_line = ""
        self.last_at = float("-inf")

    @property
    def elapsed(self) -> float:
        return self.clock() - self.began

    def say(self, line: str) -> None:
        now = self.clock()
        if line != self.last_line or now - self.last_at >= self.every:
            self.report(f"{line} ({now - self.began:.0f} s)")
            self.last_line, self.last_at = line, now
