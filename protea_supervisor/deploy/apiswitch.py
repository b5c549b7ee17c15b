"""A deploy's API replaced start-first on the socket supervisord holds (`programs.api.socket`).

The extension starts a successor of the new revision beside the serving API on the one socket
(`switcher.Switcher`). Either may take any request, so the successor is proved ready by an answer that
carries its own pid in `X-Api-Pid` (uvicorn accepts only once the app's start-up ran, so any answer from it
is a ready one, and one that is not 2xx is an error served to the public: the successor is stopped at once);
then the serving process drains and stops, and the successor becomes `api`. A successor
that exits or never answers within probes.api_ready_timeout is stopped and dropped: the serving API never
stopped. Where a switch cannot prove anything (the API is not on a socket, or not serving, or its answers
carry no pid), `replace_api` says why and the caller restarts the API as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from protea_supervisor.deploy.worktree import StepError
from protea_supervisor.errors import ProteaError
from protea_supervisor.progress import Ticker
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.apply import Deadlines
from protea_supervisor.supervisord.control import Supervisor


class SwitchEnv(Protocol):
    """What a switch needs: a tick's `TickEnv` has it, and so does `reload`'s `SwitchContext`."""

    @property
    def stack(self) -> Stack: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def deadlines(self) -> Deadlines: ...
    @property
    def report(self) -> Callable[[str], None]: ...


@dataclass(frozen=True)
class SwitchContext:
    stack: Stack
    supervisor: Supervisor
    deadlines: Deadlines
    report: Callable[[str], None]


PID_HEADER = "X-Api-Pid"
POLL = 0.05  # between two requests to the readiness URL while the successor warms up
SETTLE_MARGIN = 10.0  # beyond the stop deadline, for supervisord to drop the stopped process


def answer(url: str, timeout: float) -> tuple[str, str]:
    """(what went wrong or '' for a 2xx, the X-Api-Pid header of the answer or '')."""
    import requests

    try:
        response = requests.get(url, timeout=max(0.2, timeout), allow_redirects=False)
    except requests.RequestException as why:
        return type(why).__name__, ""
    problem = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return problem, response.headers.get(PID_HEADER, "").strip()


def _info(env: SwitchEnv, name: str) -> dict[str, Any] | None:
    return next(
        (i for i in env.supervisor.all_process_info() if i["group"] == "api" and i["name"] == name), None
    )


def _settle(env: SwitchEnv, what: str) -> None:
    """Wait until the extension has no switch of the API under way (the leaving process dropped)."""
    end = time.monotonic() + env.deadlines.stop + SETTLE_MARGIN
    ticker = Ticker(env.report)
    while "api" in env.supervisor.switches():
        if time.monotonic() > end:
            raise StepError(f"the API switch did not settle ({what})", "exit")
        ticker.say(f"  api: {what}")
        time.sleep(0.1)


def _abort(env: SwitchEnv) -> None:
    switch = env.supervisor.switches().get("api")
    if switch is None:
        return
    if switch["phase"] == "warming":
        env.supervisor.switch("abort", "api")
    _settle(env, f"stopping {switch['successor']}")


def replace_api(env: SwitchEnv) -> str:
    """Replace the API start-first onto the re-read config; '' when done, else why it could not be (nothing
    was changed then). Raises StepError when the successor exits or never answers (it is gone by then, and
    the serving API is untouched)."""
    stack, supervisor = env.stack, env.supervisor
    url, timeout = stack.probes.api_ready_url, stack.probes.api_ready_timeout
    if not stack.program("api").socket:
        return "programs.api.socket is not set"
    if not url:
        return "probes.api_ready_url is not set, and a new process is proved ready by its answer there"
    _abort(env)  # one an interrupted tick left behind
    problem, serving_pid = answer(url, 5.0)
    if problem:
        return f"the serving API does not answer {url} ({problem})"
    if not serving_pid:
        return f"the API's answers carry no {PID_HEADER} header, so a new process cannot be told from the old"
    begun = supervisor.switch("begin", "api")
    if not begun["switching"]:
        return str(begun["why"])
    successor, pid = str(begun["successor"]), int(begun["pid"])
    env.report(f"  api: {successor} (pid {pid}) started beside api (pid {serving_pid}) on the one socket")
    try:
        _prove(env, successor, pid, url, timeout)
    except BaseException:
        try:
            _abort(env)
        except ProteaError as why:
            env.report(f"  api: stopping {successor} failed: {why}")
        raise
    supervisor.switch("finish", "api")
    _settle(env, f"api (pid {serving_pid}) finishing its requests")
    now = {i["name"]: i for i in supervisor.all_process_info() if i["group"] == "api"}
    if set(now) != {"api"} or now["api"]["pid"] != pid:
        seen = ", ".join(f"{n} {i['statename']} pid {i['pid']}" for n, i in now.items()) or "nothing"
        raise StepError(f"after the API switch the api group holds {seen}, not api pid {pid}", "exit")
    env.report(f"  api: pid {serving_pid} drained and stopped; pid {pid} serves as api")
    return ""


def replaced(env: SwitchEnv) -> bool:
    """The API replaced start-first onto the re-read config; False, said, when it cannot be (the caller
    restarts it)."""
    why = replace_api(env)
    if why:
        env.report(f"  api: restarting it (not replaced start-first: {why})")
    return not why


def killed(supervisor: Supervisor, info: Mapping[str, Any] | None, pid: int) -> str:
    """The signal that ended a process nobody of ours stopped (SIGKILL by an operator or the OOM killer), or
    ''. Not the revision's own failure: the next tick tries the revision again."""
    if info is None or info["statename"] not in ("EXITED", "BACKOFF", "FATAL"):
        return ""
    return supervisor.ended_by_signal(str(info["name"]), pid)


def _prove(env: SwitchEnv, successor: str, pid: int, url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    ticker = Ticker(env.report)
    heard = "no answer from it yet"
    while True:
        info = _info(env, successor)
        state = info["statename"] if info else "gone"
        if state not in ("STARTING", "RUNNING") or (info and info["pid"] != pid):
            signal = killed(env.supervisor, info, pid)
            if signal:
                raise StepError(
                    f"the new API process {successor} was killed by {signal} before it answered (not an exit "
                    "of its own: the revision is not blamed); the serving API was not touched",
                    "killed",
                )
            exit_status = f" (exit {info['exitstatus']})" if info and state in ("EXITED", "BACKOFF") else ""
            raise StepError(
                f"the new API process {successor} is {state}{exit_status} before it answered; see "
                "`protea-supervisor logs api`; the serving API was not touched",
                "program",
            )
        problem, answered_by = answer(url, min(5.0, max(0.2, end - time.monotonic())))
        if problem and answered_by == str(pid):
            # It accepts, so it takes the public's requests too: an error from it is served, not waited out.
            raise StepError(
                f"the new API process {successor} answered {url} with {problem}; stopped at once, since it "
                "was answering the public too; the serving API was not touched",
                "probe",
            )
        if not problem and answered_by == str(pid):
            if state == "RUNNING":
                env.report(f"  api: {successor} answered {url} itself: ready")
                return
            heard = f"it answers, and is {state} until its startsecs pass"
        elif problem:
            heard = f"{url}: {problem}"
        if time.monotonic() >= end:
            raise StepError(
                f"the new API process {successor} never answered {url} itself within {timeout} s ({heard}); "
                "the serving API was not touched",
                "probe",
            )
        ticker.say(f"  waiting for {successor} to answer ({heard})")
        time.sleep(POLL)
