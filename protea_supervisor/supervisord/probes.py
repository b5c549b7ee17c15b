"""Readiness probes shared by the gate and the deploy tick: infrastructure ports from URL variables (host and
port only: the URL holds a password), TCP connects, and HTTP 2xx, each polled until a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_SCHEME_PORTS = {"postgresql": 5432, "postgres": 5432, "amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class InfraTarget:
    name: str
    host: str
    port: int


def parse_infra(names: Sequence[str], environ: Mapping[str, str]) -> tuple[list[InfraTarget], list[str]]:
    """host:port of each URL variable; never keeps the URL itself (it holds a password)."""
    targets, problems = [], []
    for name in names:
        url = environ.get(name, "")
        if not url:
            problems.append(f"{name} is not set; its port is not checked")
            continue
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_SCHEME_PORTS.get(parts.scheme.split("+", 1)[0])
        except ValueError:  # a port out of range, or a bracketed host that is no IPv6 address
            problems.append(f"{name} has no host and port this gate can check")
            continue
        if not parts.hostname or not port:
            problems.append(f"{name} has no host and port this gate can check")
            continue
        targets.append(InfraTarget(name, parts.hostname, port))
    return targets, problems


def wait_ports(
    targets: Sequence[InfraTarget], deadline: float, clock: Callable[[], float] = time.monotonic
) -> list[str]:
    """Poll until every port accepts a TCP connection; the ones still closed at the deadline."""
    end = clock() + deadline
    closed = list(targets)
    while True:
        still = []
        for target in closed:
            try:
                socket.create_connection((target.host, target.port), timeout=1).close()
            except OSError:
                still.append(target)
        closed = still
        if not closed or clock() >= end:
            return [f"{t.host}:{t.port} ({t.name})" for t in closed]
        time.sleep(0.5)


FAST_POLL, FAST_FOR, SLOW_POLL = 0.1, 10.0, 0.5


def wait_http(
    url: str,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    waiting: Callable[[str], None] | None = None,
) -> str:
    """Poll until `url` answers 2xx; '' on success, else the last problem seen. `waiting` hears a line per
    failed poll (a Ticker rate-limits it). Every 0.1 s for the first 10 s (a readiness wait is on the start-up
    chain: a coarse poll adds up to its interval to every step), then every 0.5 s."""
    import requests

    began = clock()
    end = began + deadline
    last = "no answer"
    while True:
        try:
            response = requests.get(url, timeout=5, allow_redirects=False)
            if 200 <= response.status_code < 300:
                return ""
            last = f"HTTP {response.status_code}"
        except requests.RequestException as why:
            last = type(why).__name__
        if clock() >= end:
            return last
        if waiting:
            waiting(f"  waiting for {url} ({last})")
        time.sleep(FAST_POLL if clock() - began < FAST_FOR else SLOW_POLL)
