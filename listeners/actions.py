"""Action records every listener's handler may return; each listener adds its own beside them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Log:
    """One line for the listener's log (its executor redacts env-file values)."""

    message: str
