"""The stack parser's checks of single values (URLs, hosts, signals, commands, names) and its placeholder
expander: each refusal names the file that set the key, the key and what was expected."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile import carry
from protea_supervisor.stackfile.placeholders import NAMES, PlaceholderError, expand, shown
from protea_supervisor.stackfile.schema import Reader, quoted
from protea_supervisor.stackfile.stack import (
    ENV_NAME,
    STOP_SIGNALS,
    HostFacts,
)

SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")


class Expander:
    """Placeholders and a leading ~, per key: `{stack_dir}` is the directory of the host file that set it."""

    def __init__(self, reader: Reader, host: HostFacts) -> None:
        self.reader = reader
        self.home = host.home
        self.values: dict[str, str] = {"python": host.python, "home": str(host.home)}

    def text(self, dotted: str, raw: str, extra: Mapping[str, str] | None = None) -> str:
        values = dict(self.values)
        source = self.reader.where(dotted.split("[", 1)[0])
        if source.startswith("/"):
            values["stack_dir"] = str(Path(source).parent)
        values.update(extra or {})
        allowed = tuple(n for n in NAMES if n in values or n == "stack_dir")
        try:
            return expand(raw, values, allowed)
        except PlaceholderError as why:
            raise self.reader.fail(dotted, str(why)) from None

    def path(self, dotted: str, raw: str, base: Path | None = None) -> Path:
        expanded = self.text(dotted, raw)
        if expanded == "~" or expanded.startswith("~/"):
            expanded = str(self.home) + expanded[1:]
        problem = carry.path_problem(expanded)
        if problem:
            raise self.reader.fail(dotted, problem)
        path = Path(expanded)
        if not path.is_absolute():
            if base is None:
                raise self.reader.fail(
                    dotted, f"must be an absolute path (or start with ~ or a placeholder), got {shown(raw)!r}"
                )
            path = base / path
        problem = carry.path_problem(str(path))
        if problem:
            raise self.reader.fail(dotted, problem)
        return path


def no_nul(data: Any, source: str, prefix: str = "") -> None:
    """A NUL byte can reach no program, file name or config line: refused wherever it is."""
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{quoted(key)}"
            if "\0" in key:
                raise StackError(f"{source}: {dotted} holds a NUL byte in its name.")
            no_nul(value, source, dotted + ".")
    elif isinstance(data, list):
        for item in data:
            no_nul(item, source, prefix)
    elif isinstance(data, str) and "\0" in data:
        raise StackError(f"{source}: {prefix.rstrip('.')} holds a NUL byte, which no program can receive.")


def env_names(reader: Reader, dotted: str, names: list[str]) -> list[str]:
    for name in names:
        if not ENV_NAME.fullmatch(name):
            raise reader.fail(dotted, f"must hold environment variable names, got {shown(name)!r}")
    return names


def sql_names(reader: Reader, dotted: str, names: list[str]) -> list[str]:
    for name in names:
        if not SQL_NAME.fullmatch(name):
            raise reader.fail(
                dotted, f"must hold plain SQL names (letters, digits, _, $, -), got {shown(name)!r}"
            )
    return names


def check_url(reader: Reader, dotted: str, url: str, allow_empty: bool = True) -> str:
    if not url and allow_empty:
        return url
    problem = carry.arg_problem(url)
    if problem or url != url.strip():
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}")
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is no IPv6 address
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail(dotted, f"must be an http(s) URL, got {shown(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535") from None
    if port == 0:
        raise reader.fail(dotted, "has a port out of range; expected 1-65535")
    return url


def check_host(reader: Reader, dotted: str, host: str, loopback_only: bool) -> str:
    """An address to bind. Empty or a wildcard would bind every interface: refused. With `loopback_only`,
    anything but a loopback address must be named as a literal address (an explicit choice)."""
    if not host or host != host.strip() or carry.arg_problem(host) or host in ("*", "0.0.0.0", "::"):
        raise reader.fail(
            dotted,
            f"must name one address to bind (127.0.0.1 or another), not {shown(host)!r}, which binds all",
        )
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if loopback_only or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise reader.fail(dotted, f"must be an IP address, got {shown(host)!r}") from None
    return host


def check_signal(reader: Reader, dotted: str, value: str) -> str:
    if value not in STOP_SIGNALS:
        raise reader.fail(dotted, f"must be one of {', '.join(STOP_SIGNALS)}, got {shown(value)!r}")
    return value


def check_command(reader: Reader, dotted: str, command: str, required: bool = True) -> str:
    """A command is split like a POSIX shell line (no comments: `#` and `;` are arguments like any other);
    its arguments reach the program exactly, and only a line break cannot be carried."""
    if not command.strip():
        if required:
            raise reader.fail(dotted, "must not be empty")
        return command
    try:
        argv = shlex.split(command)
    except ValueError as why:
        raise reader.fail(dotted, f"is not a valid command line ({why})") from None
    for arg in argv:
        problem = carry.arg_problem(arg)
        if problem:
            raise reader.fail(dotted, problem)
    if "\n" in command or "\r" in command:
        raise reader.fail(dotted, "holds a line break outside its arguments; a command is one line")
    return command
