"""Deploy notifications to webhooks: a Slack-compatible body (`{"text": ...}`) or a plain JSON event.

The tick and the deploy timer never wait for a webhook. `send_detached` starts
`python -m protea_supervisor.deploy.notify` in its own session and returns at once; that sender reads the URLs
from the env files itself (they never reach an argv, a log line or the event), posts with a bounded
timeout, retries with a doubling pause, and logs one line per attempt to `<logs>/notify.log`, naming the
webhook by its variable, never by its URL.

`tick_event` and `payload` are pure; `deliver` is the sender's loop, with the clock and the poster passed in.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from protea_supervisor.deploy import plan
from protea_supervisor.humane import iso
from protea_supervisor.stackfile.stack import NotifySettings, Stack

LOG_FILE = "notify.log"
TITLES = {
    "succeeded": "deployed",
    "failed": "deploy failed, rolled back",
    "rollback_failed": "deploy failed AND THE ROLLBACK FAILED",
    "escalated": "deploys keep failing: escalated",
    "paused": "deploys paused after the escalation",
    "resumed": "deploys resumed",
}


@dataclass(frozen=True)
class Event:
    event: str  # one of stack.NOTIFY_EVENTS
    stack: str
    host: str
    at: str  # ISO 8601 UTC
    summary: str
    revision: str = ""
    exit: int | None = None
    trigger: str = ""


def tick_event(
    code: int, summary: str, revision: str, trigger: str, stack: str, host: str, at: str
) -> Event | None:
    """The event a tick's outcome is, or None (nothing deployed: a no-op, a fetch or prerequisite failure,
    which the timer's escalation reports if they persist)."""
    kind = {
        plan.REDEPLOYED: "succeeded",
        plan.FAILED_ROLLED_BACK: "failed",
        plan.INFRA_FAILED: "failed",
        plan.FAILED_ROLLBACK_FAILED: "rollback_failed",
    }.get(code)
    if kind is None or (
        code == plan.INFRA_FAILED and "rolled back" not in summary and "back on" not in summary
    ):
        return None  # an infrastructure failure before anything was deployed changed nothing
    return Event(kind, stack, host, at, summary, revision, code, trigger)


def payload(style: str, event: Event) -> bytes:
    if style == "slack":
        rev = f" `{event.revision[:10]}`" if event.revision else ""
        by = f" ({event.trigger})" if event.trigger else ""
        text = f"*{event.stack}* on {event.host}: {TITLES[event.event]}{rev}{by}\n{event.summary}"
        return json.dumps({"text": text}).encode()
    return json.dumps({**asdict(event), "event": f"deploy.{event.event}"}).encode()


@dataclass(frozen=True)
class Target:
    variable: str  # the env variable holding the URL: the only name a log line uses
    style: str  # slack or json


def targets(settings: NotifySettings) -> list[Target]:
    return [Target(v, "slack") for v in settings.slack_url_env] + [
        Target(v, "json") for v in settings.json_url_env
    ]


Post = Callable[[str, bytes, float], int]  # url, body, timeout -> HTTP status; raises OSError on failure


def deliver(
    event: Event,
    sends: Sequence[Target],
    urls: Mapping[str, str],
    settings: NotifySettings,
    post: Post,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Post the event to every target at once, each on its own thread and up to 1 + retries times, so that a
    webhook that hangs or refuses delays no other; returns how many took it (2xx)."""
    if not sends:
        return 0
    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        taken = pool.map(lambda target: deliver_one(event, target, urls, settings, post, log, sleep), sends)
        return sum(taken)


def deliver_one(
    event: Event,
    target: Target,
    urls: Mapping[str, str],
    settings: NotifySettings,
    post: Post,
    log: Callable[[str], None],
    sleep: Callable[[float], None],
) -> bool:
    """One target's attempts, with a doubling pause between them."""
    url = urls.get(target.variable, "")
    name = f"${target.variable} ({target.style})"
    if not url:
        log(f"deploy.{event.event} -> {name}: the variable is not set in the environment or the env files")
        return False
    pause = 1.0
    for attempt in range(1, settings.retries + 2):
        try:
            status = post(url, payload(target.style, event), settings.timeout)
            outcome = f"HTTP {status}"
            ok = 200 <= status < 300
        except OSError as why:  # a refused connection, a timeout, a name that does not resolve
            outcome, ok = type(why).__name__, False
        if ok:
            log(f"deploy.{event.event} -> {name}: {outcome}")
            return True
        if attempt > settings.retries:
            log(f"deploy.{event.event} -> {name}: {outcome}; giving up after {attempt} attempts")
            return False
        log(f"deploy.{event.event} -> {name}: {outcome}; retry in {pause:g} s")
        sleep(pause)
        pause *= 2
    return False


# --- the edge --------------------------------------------------------------------------------------------


def http_post(url: str, body: bytes, timeout: float) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as answer:
        return int(answer.code)
    except urllib.error.URLError as why:
        # The cause (ConnectionRefusedError, TimeoutError, ...) names what happened; only its type is logged.
        raise why.reason if isinstance(why.reason, OSError) else OSError() from None
    except ValueError:  # not a URL urllib can open
        raise OSError() from None


def now_iso() -> str:
    return iso(time.time())


def send_detached(stack: Stack, event: Event, report: Callable[[str], None]) -> None:
    """Start the sender in its own session and return; nothing here waits for a webhook."""
    if event.event not in stack.notify.events or not targets(stack.notify):
        return
    stack.paths.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-P", "-m", "protea_supervisor.deploy.notify", "--stack", stack.choice or "",
            "--event", json.dumps(asdict(event))]  # fmt: skip
    # Without supervisord's marks: the sender outlives a tick, and a marked process outside supervisord's
    # tree is what `status` calls an orphan.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    with (stack.paths.logs / LOG_FILE).open("ab") as log:
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    report(f"notifying {len(targets(stack.notify))} webhook(s) of deploy.{event.event} (see {LOG_FILE})")


def host_name() -> str:
    return socket.gethostname()


def main(argv: Sequence[str] | None = None) -> int:
    from protea_supervisor.stackfile.env import merged_environment
    from protea_supervisor.stackfile.files import load_stack, machine_facts

    parser = argparse.ArgumentParser(prog="protea_supervisor.deploy.notify")
    parser.add_argument("--stack", default="")
    parser.add_argument("--event", required=True)
    args = parser.parse_args(argv)
    stack = load_stack(args.stack or None, machine_facts())
    event = Event(**json.loads(args.event))
    urls = merged_environment(os.environ, stack.env.files)

    def log(line: str) -> None:
        print(f"{now_iso()} {line}", flush=True)

    deliver(event, targets(stack.notify), urls, stack.notify, http_post, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
