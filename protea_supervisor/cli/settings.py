"""The CLI group's own options, handed to every command (its own module: `exec` must not import the rest)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    stack_choice: str | None
    lock_wait: float | None = None
