"""The listener wire protocol over in-memory streams."""

from __future__ import annotations

import io

from protea_supervisor.listeners.protocol import Event, parse_event, read_event, run


def frame(eventname: str, payload: str, serial: int = 1) -> bytes:
    body = payload.encode()
    header = (
        f"ver:3.0 server:supervisor serial:{serial} pool:gate poolserial:{serial} eventname:{eventname} "
        f"len:{len(body)}\n"
    )
    return header.encode() + body


def test_process_state_payload_is_parsed() -> None:
    event = parse_event(
        "ver:3.0 eventname:PROCESS_STATE_EXITED len:70",
        "processname:migrate groupname:migrate from_state:RUNNING expected:1 pid:5252",
    )
    assert event.name == "PROCESS_STATE_EXITED" and event.state == "EXITED"
    assert event.process == "migrate:migrate"
    assert event.fields["expected"] == "1" and event.data == ""


def test_remote_communication_keeps_its_data_and_values_may_hold_colons() -> None:
    event = parse_event(
        "eventname:REMOTE_COMMUNICATION len:40", 'type:protea-gate\n{"command": "start", "x": "a:b"}'
    )
    assert event.fields == {"type": "protea-gate"}
    assert event.data == '{"command": "start", "x": "a:b"}'
    assert parse_event("eventname:TICK_5 len:15", "when:1795840405").fields == {"when": "1795840405"}


def test_read_event_reads_exactly_len_bytes_even_with_multibyte_text() -> None:
    stream = io.BytesIO(frame("REMOTE_COMMUNICATION", "type:t\nnaïve €") + frame("TICK_5", "when:5"))
    first, second = read_event(stream), read_event(stream)
    assert first is not None and first.data == "naïve €"
    assert second is not None and second.name == "TICK_5"
    assert read_event(stream) is None


def test_run_says_ready_acknowledges_every_event_and_survives_a_failing_handler() -> None:
    seen: list[Event] = []

    def handler(event: Event) -> None:
        seen.append(event)
        if event.name == "TICK_5":
            raise RuntimeError("boom")

    stdin = io.BytesIO(
        frame("TICK_5", "when:5") + frame("PROCESS_STATE_RUNNING", "processname:a groupname:a pid:1")
    )
    stdout, stderr = io.BytesIO(), io.StringIO()
    assert run(handler, stdin, stdout, stderr) == 2
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert [e.name for e in seen] == ["TICK_5", "PROCESS_STATE_RUNNING"]
    assert "RuntimeError: boom" in stderr.getvalue()


def test_run_stops_after_max_events() -> None:
    stdin = io.BytesIO(frame("TICK_5", "when:5") * 3)
    assert run(lambda e: None, stdin, io.BytesIO(), io.StringIO(), max_events=2) == 2
