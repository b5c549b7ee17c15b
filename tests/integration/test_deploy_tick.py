"""`protea-supervisor tick` on a real supervisord, with a real local git remote and a small app repo."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, wait_for
from deploy_app import AppRepo, deploy_stack, git, lines, record, serving
from rabbit import publish

pytestmark = pytest.mark.integration


@pytest.fixture
def deployed(short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str) -> tuple[AppRepo, Stack]:
    """The app repo at v1, deployed by a first tick on a running supervisord."""
    repo = AppRepo(short_tmp)
    stack = deploy_stack(short_tmp, repo, queue_name)
    supervisord(stack)
    first = stack.ps("tick")
    assert first.code == 10, first.both
    return repo, stack


def test_new_commits_are_deployed_installing_and_building_only_when_needed(
    deployed: tuple[AppRepo, Stack], queue_name: str
) -> None:
    repo, stack = deployed
    installs, builds = stack.root / "installs.log", stack.root / "builds.log"
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    assert serving(stack) == f"v1 {rev1}"
    assert (
        lines(installs) == 2 and lines(builds) == 1
    )  # a first deploy installs (and post-installs) and builds
    assert "tick exit=10 redeployed" in (stack.logs / "deploy-tick.log").read_text()
    assert stack.ps("tick").code == 0  # on the head and healthy: nothing to do
    served = os.readlink(stack.root / "run" / "web-current")
    web_pid = stack.status()["web"]["pid"]

    # An API-only commit: no install, no build; the worker finishes the job it has in hand. Web serves the
    # same build, so it keeps running.
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    dry = stack.ps("tick", "--dry-run")
    assert dry.code == 0 and "install: no; frontend build: no" in dry.out, dry.both
    assert serving(stack) == f"v1 {rev1}"
    program = "worker-" + queue_name.replace(".", "-")
    # Eight 2 s jobs keep the worker busy past the API's restart and readiness wait (the API moves first), so
    # the TERM finds a job in hand (CI once saw four jobs all done before the workers moved).
    publish(queue_name, 8, seconds=2.0)
    wait_for(lambda: "started" in stack.log(program), 20, "a job in flight")
    second = stack.ps("tick")
    assert second.code == 10, second.both
    assert serving(stack) == f"v2 {rev2}"
    assert lines(installs) == 2 and lines(builds) == 1
    assert os.readlink(stack.root / "run" / "web-current") == served
    assert stack.status()["web"]["pid"] == web_pid
    assert "done after TERM" in stack.log(program)
    wait_for(lambda: lines(stack.root / "acks.log") >= 8, 60, "all jobs acked")
    acked = collections.Counter(int(x.split()[0]) for x in (stack.root / "acks.log").read_text().splitlines())
    assert sorted(acked) == list(range(8)) and set(acked.values()) == {1}

    # Dependencies and the frontend change: install, then a fresh build is switched in.
    rev3 = repo.commit(
        "v3", {"pyproject.toml": "[project]\nname='app'\nversion='3'\n", "apps/web/page.txt": "2"}
    )
    third = stack.ps("tick")
    assert third.code == 10, third.both
    assert lines(installs) == 4 and lines(builds) == 2
    now_served = os.readlink(stack.root / "run" / "web-current")
    assert now_served != served and Path(now_served, ".next/standalone/public/protea-mark.png").exists()
    assert stack.status()["web"]["pid"] not in (web_pid, 0)  # a new build: web restarted onto it
    doc = record(stack)
    assert doc["revision"] == rev3 and doc["previous"] == rev2 and doc["last_exit"] == 10
    status = stack.ps("status")
    assert f"deployed {rev3[:10]}" in status.out, status.out

    # The release history: one entry per deploy, newest first, with what it did and who asked.
    history = json.loads(stack.ps("deploys", "--json").out)
    assert [(h["revision"], h["result"], h["installed"], h["built"]) for h in history] == [
        (rev3, "deployed", True, True), (rev2, "deployed", False, False), (rev1, "deployed", True, True),
    ]  # fmt: skip
    assert history[0]["previous"] == rev2 and all(h["trigger"].startswith("by hand (") for h in history)
    assert all(h["duration_s"] > 0 and h["started_at"].endswith("+00:00") for h in history)
    table = stack.ps("deploys", "-n", "2").out.splitlines()
    assert len(table) == 3 and rev3[:10] in table[1] and "install+build" in table[1]
    assert rev2[:10] in table[2] and "code only" in table[2]


@pytest.mark.slow
def test_a_broken_commit_is_rolled_back_and_skipped_until_a_newer_one(
    deployed: tuple[AppRepo, Stack],
) -> None:
    repo, stack = deployed
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    others = {n: r["pid"] for n, r in stack.status().items() if n == "web" or n.startswith("worker-")}
    bad = repo.commit("broken", {"BROKEN": "yes", "VERSION": "v2\n"})
    failed = stack.ps("tick")
    assert failed.code == 20 and "failed at api" in failed.out, failed.both
    assert serving(stack) == f"v1 {rev1}"  # the previous revision serves again
    # The API moves first and alone: its failure never reached a worker or web.
    assert {n: r["pid"] for n, r in stack.status().items() if n in others} == others
    assert git(repo.worktree, "rev-parse", "HEAD") == rev1
    assert bad in record(stack)["failed"]
    again = stack.ps("tick")
    assert again.code == 0 and "failed before" in again.out, again.both
    assert serving(stack) == f"v1 {rev1}"
    fixed = repo.commit("fixed", {"BROKEN": None, "VERSION": "v3\n"})
    assert stack.ps("tick").code == 10
    assert serving(stack) == f"v3 {fixed}"
    history = json.loads(stack.ps("deploys", "--json").out)
    assert [(h["revision"], h["result"], h["exit"]) for h in history] == [
        (fixed, "deployed", 10), (bad, "rolled back", 20), (rev1, "deployed", 10),
    ]  # fmt: skip  # the skipped tick between them deployed nothing and is not history
    assert history[1]["failed_step"] and history[1]["failed_step"] in history[1]["summary"]


def test_rollback_serves_a_previous_good_revision_and_the_tick_does_not_undo_it_until_a_newer_commit(
    deployed: tuple[AppRepo, Stack],
) -> None:
    repo, stack = deployed
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    assert stack.ps("tick").code == 10 and serving(stack) == f"v2 {rev2}"

    unknown = stack.ps("rollback", "deadbeef")
    assert unknown.code == 1 and "never deployed successfully here" in unknown.err, unknown.both
    back = stack.ps("rollback")  # the newest earlier good revision: v1
    assert back.code == 0, back.both
    assert serving(stack) == f"v1 {rev1}" and git(repo.worktree, "rev-parse", "HEAD") == rev1
    doc = record(stack)
    assert doc["revision"] == rev1 and doc["pinned"] == rev1 and doc["pinned_against"] == rev2
    assert "PINNED by rollback" in stack.ps("status").out
    # The timer's tick sees the same head it was rolled back from: it stays.
    held = stack.ps("tick")
    assert held.code == 0 and "pinned to" in held.out, held.both
    assert serving(stack) == f"v1 {rev1}"
    history = json.loads(stack.ps("deploys", "--json").out)
    assert history[0]["revision"] == rev1 and history[0]["trigger"].startswith("rollback (")

    # A newer commit ends the pin; a rollback by sha prefix pins again; `unpin` lets the head back.
    rev3 = repo.commit("v3", {"VERSION": "v3\n"})
    assert stack.ps("tick").code == 10 and serving(stack) == f"v3 {rev3}"
    assert record(stack)["pinned"] == ""
    again = stack.ps("rollback", rev2[:8])
    assert again.code == 0 and serving(stack) == f"v2 {rev2}", again.both
    assert stack.ps("tick").code == 0 and serving(stack) == f"v2 {rev2}"
    unpinned = stack.ps("unpin")
    assert unpinned.code == 0 and f"unpinned {rev2[:10]}" in unpinned.out
    assert stack.ps("tick").code == 10 and serving(stack) == f"v3 {rev3}"
    assert stack.ps("unpin").out.startswith("nothing is pinned")


def test_an_export_defers_the_tick_and_nothing_restarts(deployed: tuple[AppRepo, Stack]) -> None:
    repo, stack = deployed
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}
    repo.commit("v2", {"VERSION": "v2\n"})
    assert stack.ps("lock", "acquire", "export", "exp-42", "multi-day export").code == 0
    deferred = stack.ps("tick")
    assert deferred.code == 0, deferred.both
    assert "deferred: stack owned by export task exp-42 since" in (stack.logs / "deploy-tick.log").read_text()
    assert {n: p["pid"] for n, p in stack.status().items() if p["pid"]} == before
    assert serving(stack).startswith("v1 ")


def test_prerequisites_down_exit_40_naming_the_one_that_failed(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    closed = free_port()
    stack = deploy_stack(
        short_tmp, repo, queue_name, db_url=f"postgresql://postgres:s3cret@127.0.0.1:{closed}/x"
    )
    supervisord(stack)
    result = stack.ps("tick")
    assert result.code == 40, result.both
    assert f"127.0.0.1:{closed} (PROTEA_DB_URL)" in result.out and "s3cret" not in result.out
    assert git(repo.worktree, "rev-parse", "HEAD") == git(repo.dev, "rev-parse", "HEAD")


def test_a_vanished_worktree_is_recreated(deployed: tuple[AppRepo, Stack]) -> None:
    repo, stack = deployed
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    subprocess.run(["rm", "-rf", str(repo.worktree)], check=True)
    result = stack.ps("tick")
    assert result.code == 10, result.both
    assert "recreating it" in result.out and serving(stack) == f"v2 {rev2}"


@contextlib.contextmanager
def polled(url: str) -> Iterator[list[str]]:
    """Every 50 ms, GET `url`; the list collects each answer that was not a 200 (no answer, or an error)."""
    failures: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}")
            except urllib.error.HTTPError as why:
                failures.append(f"HTTP {why.code}")
            except OSError as why:
                failures.append(type(why).__name__)
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield failures
    finally:
        done.set()
        poller.join()


@pytest.mark.slow
def test_with_a_canary_a_revision_whose_api_never_gets_ready_never_serves_and_nothing_moves(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    canary = free_port()
    stack = deploy_stack(short_tmp, repo, queue_name, extra={"deploy": {
        "api_canary_command": f"{{python}} -P app.py {canary}",
        "api_canary_url": f"http://127.0.0.1:{canary}/jobs",
    }})  # fmt: skip
    supervisord(stack)
    first = stack.ps("tick")
    assert first.code == 10 and "step canary" in first.out, first.both
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    worker = "worker-" + queue_name.replace(".", "-")
    before = {name: row["pid"] for name, row in stack.status().items() if name in ("api", "web", worker)}
    assert len(before) == 3 and all(before.values()), before

    bad = repo.commit("broken", {"BROKEN": "yes", "VERSION": "v2\n"})
    with polled(f"http://127.0.0.1:{stack.api_port}/jobs") as failures:
        failed = stack.ps("tick")
    assert failed.code == 20 and "failed at canary" in failed.out, failed.both
    assert failures == []  # the serving API answered every poll while the broken revision was tried
    after = stack.status()
    assert {name: after[name]["pid"] for name in before} == before  # api, web and the worker never moved
    assert after["api-canary"]["state"] != "RUNNING" and serving(stack) == f"v1 {rev1}"
    assert bad in record(stack)["failed"] and "never got ready" in failed.out

    fixed = repo.commit("fixed", {"BROKEN": None, "VERSION": "v3\n"})
    good = stack.ps("tick")
    assert good.code == 10, good.both
    assert serving(stack) == f"v3 {fixed}" and stack.status()["api-canary"]["state"] != "RUNNING"
    assert stack.status()[worker]["pid"] != before[worker]  # the good revision reached the worker
