"""File I/O at the edge: loading stack files and writing files atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from protea_supervisor.errors import StackError, WriteFailed, write_failure
from protea_supervisor.stackfile.parser import parse_stack
from protea_supervisor.stackfile.stack import HostFacts, Stack


def builtin_stack_text(name: str) -> str:
    return resources.files("protea_supervisor.stacks").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as why:
        raise StackError(f"{source}: not valid TOML ({why}).") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackError(f"{path}: stack file not found.") from None
    except (OSError, UnicodeDecodeError) as why:
        raise StackError(f"{path}: cannot read the stack file ({why}).") from None
    return parse_toml(text, str(path))


def stack_layers(choice: str | None) -> list[tuple[str, Mapping[str, Any]]]:
    """The shipped PROTEA defaults, then the chosen host file (a path, or the built-in `demo`)."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("built-in protea stack", parse_toml(builtin_stack_text("protea"), "built-in protea stack"))
    ]
    if choice in (None, "", "protea"):
        return layers
    if choice == "demo":
        layers.append(("built-in demo stack", parse_toml(builtin_stack_text("demo"), "built-in demo stack")))
        return layers
    path = Path(choice).expanduser().absolute()
    # The source is the file's absolute path: the parser's {stack_dir} is its directory.
    layers.append((str(path), read_toml(path)))
    return layers


def load_stack(choice: str | None, host: HostFacts) -> Stack:
    stack = parse_stack(stack_layers(choice), host)
    if choice in (None, "", "protea", "demo"):
        return replace(stack, choice=choice or "")
    return replace(stack, choice=str(Path(choice).expanduser().absolute()))


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see old or new, never half.
    A write that fails (a full disk) leaves the old file and no temp file, and raises WriteFailed."""
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as why:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(why, OSError):
            raise WriteFailed(write_failure(path, why)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def machine_facts() -> HostFacts:
    """What the parser needs from this machine: the home directory, this Python, the host name."""
    import socket
    import sys

    from protea_supervisor.stackfile.host import default_name

    return HostFacts(home=Path.home(), python=sys.executable, hostname=default_name(socket.gethostname()))


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o600)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a state file; None when it is missing or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
