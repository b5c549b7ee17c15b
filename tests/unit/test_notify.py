"""Deploy notifications: which tick outcomes are events, the two bodies, and the sender's retries, with the
URL (a secret) never in a log line."""

from __future__ import annotations

import json
import threading

from protea_supervisor.deploy.notify import Event, Target, deliver, payload, tick_event
from protea_supervisor.stackfile.stack import NotifySettings

AT = "2026-12-01T07:00:00Z"
EVENT = Event(
    "succeeded", "protea", "gpu-box", AT, "deployed abc1234 (was def5678)", "a" * 40, 10, "by hand (ops)"
)
SECRET_URL = "https://hooks.example/services/T000/B000/s3cr3t"


def test_only_deploys_that_ran_are_events() -> None:
    def kind(
        code: int, summary: str = "deploy of abc failed at verify; not marked failed; back on def"
    ) -> str:
        event = tick_event(code, summary, "r", "t", "s", "h", AT)
        return event.event if event else "-"

    assert [kind(c) for c in (0, 10, 20, 21, 30, 40, 50)] == [
        "-", "succeeded", "failed", "rollback_failed", "-", "-", "failed",
    ]  # fmt: skip
    assert kind(50, "supervisord is not running (no answer ...); nothing was changed") == "-"


def test_the_slack_body_is_a_text_and_the_json_body_is_the_event() -> None:
    slack = json.loads(payload("slack", EVENT))
    assert slack == {
        "text": "*protea* on gpu-box: deployed `aaaaaaaaaa` (by hand (ops))\ndeployed abc1234 (was def5678)"
    }
    plain = json.loads(payload("json", EVENT))
    assert plain["event"] == "deploy.succeeded" and plain["revision"] == "a" * 40 and plain["exit"] == 10
    assert set(plain) == {"event", "stack", "host", "at", "summary", "revision", "exit", "trigger"}


def test_the_sender_retries_with_a_doubling_pause_gives_up_and_never_logs_the_url() -> None:
    answers = iter([OSError, 503, 200])
    posted: list[tuple[str, float]] = []

    def post(url: str, body: bytes, timeout: float) -> int:
        posted.append((url, timeout))
        answer = next(answers)
        if answer is OSError:
            raise ConnectionRefusedError()
        return int(answer)  # type: ignore[call-overload]

    lines: list[str] = []
    pauses: list[float] = []
    settings = NotifySettings(slack_url_env=("HOOK",), retries=3, timeout=2.5)
    sent = deliver(EVENT, [Target("HOOK", "slack"), Target("UNSET", "json")], {"HOOK": SECRET_URL}, settings,
                   post, lines.append, pauses.append)  # fmt: skip
    assert sent == 1 and pauses == [1.0, 2.0] and posted == [(SECRET_URL, 2.5)] * 3
    # The targets are sent to at once: each one's lines are in order, the two interleave as they may.
    assert [line for line in lines if "$HOOK" in line] == [
        "deploy.succeeded -> $HOOK (slack): ConnectionRefusedError; retry in 1 s",
        "deploy.succeeded -> $HOOK (slack): HTTP 503; retry in 2 s",
        "deploy.succeeded -> $HOOK (slack): HTTP 200",
    ]
    assert [line for line in lines if "$UNSET" in line] == [
        "deploy.succeeded -> $UNSET (json): the variable is not set in the environment or the env files",
    ]
    never = deliver(EVENT, [Target("HOOK", "json")], {"HOOK": SECRET_URL}, NotifySettings(retries=0),
                    lambda *a: 500, lines.append, pauses.append)  # fmt: skip
    assert (
        never == 0 and lines[-1] == "deploy.succeeded -> $HOOK (json): HTTP 500; giving up after 1 attempts"
    )
    assert all("s3cr3t" not in line for line in lines)


def test_a_webhook_that_hangs_holds_no_other() -> None:
    """The Slack hook answers only once the JSON hook has been sent to: sent one after the other, Slack first,
    it would wait in vain (and the JSON hook would be late by Slack's whole timeout)."""
    json_sent = threading.Event()

    def post(url: str, body: bytes, timeout: float) -> int:
        if url == "https://slack.example/hook":
            return 200 if json_sent.wait(10) else 504
        json_sent.set()
        return 200

    lines: list[str] = []
    settings = NotifySettings(slack_url_env=("SLACK",), json_url_env=("JSON",), retries=0)
    urls = {"SLACK": "https://slack.example/hook", "JSON": "https://json.example/hook"}
    sent = deliver(
        EVENT, [Target("SLACK", "slack"), Target("JSON", "json")], urls, settings, post, lines.append
    )
    assert sent == 2, lines
