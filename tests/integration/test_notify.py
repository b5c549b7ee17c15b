"""Deploy notifications to a webhook receiver on loopback: what a good deploy, a failed one and an
escalation send, in both bodies; a dead webhook never holds a tick up; the URL (a secret) never shows."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, wait_for
from deploy_app import AppRepo, deploy_stack

pytestmark = pytest.mark.integration
TOKEN = "T0KEN-in-the-url-is-a-secret"


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, object]]]]]:
    """A webhook receiver: yields its base URL and the (path, body) pairs it was sent."""
    got: list[tuple[str, dict[str, object]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def hooked(stack: Stack, base: str, extra: str = "") -> None:
    """The webhook URLs go into the env file, where secrets live; the stack names the variables."""
    env = stack.root / "protea.env"
    env.write_text(
        env.read_text() + f"HOOK_SLACK={base}/slack/{TOKEN}\nHOOK_JSON={base}/json/{TOKEN}\n{extra}"
    )


def events(got: list[tuple[str, dict[str, object]]], kind: str) -> list[str]:
    if kind == "json":
        return [str(body["event"]) for path, body in got if path.startswith("/json/")]
    return [str(body["text"]) for path, body in got if path.startswith("/slack/")]


def test_a_good_and_a_failed_deploy_are_sent_in_both_bodies_and_a_dead_hook_holds_nothing_up(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    notify = {"notify": {"slack_url_env": ["HOOK_SLACK"], "json_url_env": ["HOOK_JSON", "HOOK_DEAD"],
                         "retries": 1, "timeout": 1}}  # fmt: skip
    stack = deploy_stack(short_tmp, repo, queue_name, extra=notify)
    with receiver() as (base, got):
        hooked(stack, base, f"HOOK_DEAD=http://127.0.0.1:{free_port()}/{TOKEN}\n")
        supervisord(stack)
        first = stack.ps("tick")
        assert first.code == 10, first.both
        wait_for(lambda: len(got) >= 2, 20, "the first deploy's notifications")
        assert events(got, "json") == ["deploy.succeeded"]
        assert "deployed" in events(got, "slack")[0] and "by hand (" in events(got, "slack")[0]
        body = next(b for p, b in got if p.startswith("/json/"))
        assert body["exit"] == 10 and body["revision"] and body["stack"] == "test" and body["at"]

        repo.commit("broken", {"BROKEN": "yes", "VERSION": "v2\n"})
        failed = stack.ps("tick")
        assert failed.code == 20, failed.both
        wait_for(lambda: len(got) >= 4, 20, "the failed deploy's notifications")
        assert events(got, "json") == ["deploy.succeeded", "deploy.failed"]
        assert "deploy failed, rolled back" in events(got, "slack")[1]

    log = stack.root / "logs" / "notify.log"
    wait_for(
        lambda: log.exists() and log.read_text().count("giving up after 2 attempts") == 2, 30, "the dead hook"
    )
    text = log.read_text()
    assert (
        "$HOOK_JSON (json): HTTP 200" in text
        and "$HOOK_DEAD (json): ConnectionRefusedError; retry in 1 s" in text
    )
    for output in (text, first.both, failed.both, (stack.root / "logs" / "deploy-tick.log").read_text()):
        assert TOKEN not in output


@pytest.mark.slow
def test_an_escalation_and_the_pause_are_sent(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    extra = {
        "deploy": {"enabled": True, "remote": "nowhere", "poll_interval": 3600, "check_interval": 0,
                   "retry_ladder": [1, 1], "pause_after_escalation": 1800},
        "notify": {"json_url_env": ["HOOK_JSON"], "events": ["escalated", "paused"]},
    }  # fmt: skip
    stack = deploy_stack(short_tmp, repo, queue_name, extra=extra)
    with receiver() as (base, got):
        hooked(stack, base)
        supervisord(stack)
        wait_for(lambda: "polling every" in stack.log("deploy-timer"), 20, "the timer listener")
        assert stack.ps("trigger", "go").code == 0
        wait_for(lambda: len(got) >= 2, 60, "the escalation's notifications")
        assert sorted(events(got, "json")) == ["deploy.escalated", "deploy.paused"]
        escalated = next(b for _, b in got if b["event"] == "deploy.escalated")
        assert "tick exit=30" in str(escalated["summary"]) and escalated["trigger"] == "deploy timer"
