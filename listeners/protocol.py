"""The supervisord event-listener wire protocol. The only code that touches a listener's stdin and stdout.

supervisord writes one header line (`ver:3.0 server:supervisor ... eventname:X len:N`) and then exactly N
bytes of payload. The listener answers `RESULT 2\\nOK` (or `RESULT 4\\nFAIL`), then `READY\\n` again. stdout
carries protocol bytes only; everything else goes to stderr.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

READY = b"READY\n"
OK = b"RESULT 2\nOK"
FAIL = b"RESULT 4\nFAIL"


@dataclass(frozen=True)
class Event:
    """One event: its name, the header line's fields, the payload's header fields, and any data after them."""

    name: str
    headers: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    data: str = ""

    @property
    def process(self) -> str:
        """`group:name` of a PROCESS_STATE_* event."""
        return f"{self.fields.get('groupname', '')}:{self.fields.get('processname', '')}"

    @property
    def state(self) -> str:
        """RUNNING for PROCESS_STATE_RUNNING, and so on."""
        return self.name.removeprefix("PROCESS_STATE_")


def parse_fields(line: str) -> dict[str, str]:
    """`key:value key:value`; a value may itself contain ':' (split once per token, unlike childutils)."""
    fields = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            fields[key] = value
    return fields


def parse_event(header_line: str, payload: str) -> Event:
    headers = parse_fields(header_line)
    first, _, data = payload.partition("\n")
    # Payloads start with key:value fields; PROCESS_LOG, PROCESS_COMMUNICATION and REMOTE_COMMUNICATION
    # carry free data after the first line.
    return Event(name=headers.get("eventname", ""), headers=headers, fields=parse_fields(first), data=data)


def read_event(stdin: BinaryIO) -> Event | None:
    """The next event, or None when supervisord closed our stdin."""
    header = stdin.readline()
    if not header:
        return None
    line = header.decode("utf-8", errors="replace")
    length = int(parse_fields(line).get("len", "0"))
    payload = stdin.read(length) if length else b""
    return parse_event(line, payload.decode("utf-8", errors="replace"))


def send(stdout: BinaryIO, message: bytes) -> None:
    stdout.write(message)
    stdout.flush()


def run(
    handle: Callable[[Event], None],
    stdin: BinaryIO,
    stdout: BinaryIO,
    stderr: TextIO,
    max_events: int | None = None,
) -> int:
    """READY, read, handle, OK; forever or for `max_events`. Returns the number of events handled.

    Every event is acknowledged with OK, even when the handler raises: a FAIL would make supervisord resend
    the same event, and an exception escaping would kill the listener and replay it (a poison loop).
    """
    handled = 0
    while max_events is None or handled < max_events:
        send(stdout, READY)
        event = read_event(stdin)
        if event is None:
            return handled
        try:
            handle(event)
        except Exception:
            stderr.write(f"listener: error handling {event.name}:\n{traceback.format_exc()}")
            stderr.flush()
        send(stdout, OK)
        handled += 1
    return handled
