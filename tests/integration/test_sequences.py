"""Generated sequences of operator commands and faults on a real supervisord, with invariants after each step.

The stack deploys a real app repo behind a local git remote, runs a numbered queue of real RabbitMQ
consumers (each acked job journaled), and has the deploy timer on (so `trigger` races a hand `tick`). A
seeded generator picks the steps: `up [N]`, `scale` (absolute, +N, -N, --no-wait, --reset), `reload`,
`reload --dry-run`, `render`, `render --check`, `render --diff`, `tick`, `tick --dry-run`, `trigger`,
`gate retry`, the stack-owner lock taken and released, a new commit (an API or web change, a revision whose
API answers 500, its fix), `rollback`, `unpin`, jobs published, `kill -9` of a listener and of supervisord,
`down`; and faults inside a step: the tick killed (SIGKILL) at a random moment of its plan, including the
middle of the API's start-first switch on its socket, or supervisord killed in the middle of a tick, each
followed by the recovery the README prescribes (`up` when supervisord is down, then the next `tick`).

After every step: the command ended within its bound and without a traceback; a dry run left every file
of the host as it was; what supervisord runs equals what the stack file plus overrides say and what
`status --json` reports; the deploy record matches the worktree and the revision every PROTEA program runs;
no orphan survives a command that started the stack. At the end every published job was acked exactly once.
The API (on the socket supervisord holds, replaced start-first, a canary in front) is polled every 50 ms
during every step that deploys or resizes (`tick`, `trigger`, `rollback`, `reload`, `scale`) when it answered
before the step: not one request may fail.

`--sequence-steps N` and `--sequence-seed S` make a longer run (the default is short enough for CI).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, Clock, Result, Stack, free_port, psql, wait_for
from deploy_app import APP, AppRepo, Poller, deploy_stack, git, node_stack, on_socket
from rabbit import WORKER_COMMAND

from protea_supervisor.hosts import declared, heartbeats
from protea_supervisor.stackfile.files import load_stack
from protea_supervisor.stackfile.overrides import with_overrides
from protea_supervisor.stackfile.stack import LISTENERS, HostFacts
from protea_supervisor.supervisord import orphans
from protea_supervisor.supervisord.control import Supervisor, daemon_pids

pytestmark = pytest.mark.integration

# What protea-supervisor renders beside the app's programs: its listeners and the on-demand tick and canary.
ON_DEMAND = frozenset({*LISTENERS, "deploy-tick", "api-canary"})

# Bounds: what each command may take here at most (a stop grace of 30 s, builds of a second).
BOUND = {"up": 150, "down": 90, "scale": 90, "reload": 120, "tick": 180, "gate": 150, "rollback": 180}
# Exit codes each command may end with in some state of the stack (anything else fails the step).
ALLOWED = {
    "up": {0},
    "down": {0},
    "scale": {0, 2, 6},  # 2: scale-down during an export; 6: supervisord not running for a re-add
    "reload": {0, 2, 6},
    "reload --dry-run": {0, 6},
    "render": {0},
    "render --check": {0},
    "render --diff": {0},
    "tick": {
        0,
        10,
        20,
        50,
    },  # 20: a revision whose API answers 500; 50: supervisord down (or busy past the bound)
    "tick --dry-run": {0},
    "trigger": {0},
    "gate retry": {0, 6},
    # 1: nothing deployed here before the current revision; 2: an export holds the lock; 20: the target's own
    # failure (its migrate against a newer schema); 50: supervisord down.
    "rollback": {0, 1, 2, 20, 50},
    "unpin": {0},
}


@dataclass
class World:
    repo: AppRepo
    stack: Stack
    queue: str
    program: str
    log: list[str] = field(default_factory=list)
    published: int = 0
    export_held: bool = False
    killed_supervisord: bool = False
    # Jobs in hand on a connection the broker closed: redelivered, so they may start twice (acked once).
    redone: set[int] = field(default_factory=set)
    # Each stack's listeners and on-demand programs (by stack file), as its first `up` rendered them.
    listeners: dict[str, set[str]] = field(default_factory=dict)
    # Two hosts: a compute node following the server's declaration, both on the server's Postgres (`database`)
    # and on one RabbitMQ; each lists the singleton queue `single`, whose lock the server's worker holds.
    node: Stack | None = None
    database: str = ""
    single: str = ""
    node_killed: bool = False
    # The wall clock of every process the test starts (both hosts'), steppable (tests/clockshift).
    clock: Clock | None = None

    def ps(self, *args: str, bound: float = 60, on: Stack | None = None) -> Result:
        stack = on or self.stack
        where = "node" if stack is self.node else ""
        began = time.monotonic()
        try:
            result = stack.ps(*args, timeout=bound)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{where} `{' '.join(args)}` ran past its bound of {bound} s\n" + "\n".join(self.log[-15:])
            )
        took = time.monotonic() - began
        self.log.append(f"{where}$ {' '.join(args)}  -> exit {result.code} in {took:.1f} s")
        assert "Traceback" not in result.both and "internal error" not in result.both, result.both
        return result

    @property
    def run(self) -> Path:
        return self.stack.root / "run"

    def supervisord_up(self, on: Stack | None = None) -> bool:
        """Asked of supervisord over its socket: a CLI start per question costs seconds on a loaded machine
        (what `status` says is compared in check_host)."""
        return Supervisor((on or self.stack).root / "run" / "supervisor.sock").is_running()

    def stacks(self) -> list[Stack]:
        return [self.stack] + ([self.node] if self.node else [])

    def killed(self, stack: Stack) -> bool:
        """Whether `stack`'s supervisord was killed since its last `up` or `down` (its orphans are expected)."""
        return self.killed_supervisord if stack is self.stack else self.node_killed

    def mark_killed(self, stack: Stack, killed: bool) -> None:
        if stack is self.stack:
            self.killed_supervisord = killed
        else:
            self.node_killed = killed


def make_world(base: Path, queue: str, database: str = "") -> World:
    """One host; with `database`, a server whose ticks declare what they deployed, beside a compute node
    (made at the server's first `up`, `add_node`)."""
    repo = AppRepo(base)
    # The API as PROTEA's will run: on the socket supervisord holds (replaced start-first), behind a canary.
    repo.commit("the API on a socket", {"app.py": on_socket(APP, 0.3)})
    api, canary = free_port(), free_port()
    single = f"{queue}.single" if database else ""
    two_hosts: dict[str, Any] = {
        "host": {"name": "server-1", "declare_revision": True, "revision_guard": True, "heartbeat": True,
                 "stale_after": 15},
        "backup": {"dir": str(base / "backups"), "keep": 2, "min_free_gb": 0.001, "extensions": [],
                   "check_tables": ["items"], "min_tables": 1, "jobs": 2},
    } if database else {}  # fmt: skip
    if database:  # the app's own table, beside what the tool keeps in the server's Postgres
        name = database.rsplit("/", 1)[1]
        psql(name, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
        psql(name, "INSERT INTO items (note) SELECT 'item ' || g FROM generate_series(1, 50) g")
    extra = two_hosts | {
        "queues": {queue: {"numbered": True, "processes": 2}}
        | ({single: {"processes": 1, "command": WORKER_COMMAND, "singleton": True}} if single else {}),
        "programs": {"api": {"command": "{python} -P app.py fd0", "directory": "{root}",
                             "socket": f"tcp://127.0.0.1:{api}"}},
        "deploy": {"enabled": True, "poll_interval": 3600, "check_interval": 0, "retry_ladder": [3600],
                   "api_canary_command": f"{{python}} -P app.py {canary}",
                   "api_canary_url": f"http://127.0.0.1:{canary}/jobs"},
        "probes": {"start_timeout": 30},
        "control": {"operation_wait": 200},
    }  # fmt: skip
    stack = deploy_stack(base, repo, queue, db_url=database, extra=extra, api_port=api)
    # The run dir and the log dir each on a filesystem of its own, which a step may fill (CI runs as root).
    for own in (stack.root / "run", stack.root / "logs"):
        own.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", str(own)], capture_output=True
        )
        assert mounted.returncode == 0, f"mounting a tmpfs needs root: {mounted.stderr!r}"
    return World(repo, stack, queue, "worker-" + queue.replace(".", "-"), database=database, single=single)


def add_node(world: World) -> None:
    """The compute node: a clone of the app at the server's deployed revision, the shared queue's worker
    and the singleton's, following the server's declaration (its timer looks every second)."""
    base = world.stack.root.parent
    checkout = base / "node-checkout"
    git(base, "clone", "--quiet", str(world.repo.remote), str(checkout))
    deployed = json.loads((world.run / "deployed.json").read_text())["revision"]
    git(checkout, "checkout", "--quiet", "--detach", deployed)
    world.node = node_stack(base, checkout, world.queue, world.database, follow=True, singleton=world.single,
                            stop_grace=30)  # fmt: skip


# --- what is compared ----------------------------------------------------------------------------------


def supervisor(world: World, on: Stack | None = None) -> Supervisor:
    return Supervisor((on or world.stack).root / "run" / "supervisor.sock")


def supervisorctl_infos(world: World, on: Stack | None = None) -> list[dict[str, Any]]:
    """supervisord's processes, less those a scale-down is still draining."""
    leaving = {name for names in supervisor(world, on).draining().values() for name in names}
    return [i for i in supervisor(world, on).all_process_info() if i["name"] not in leaving]


def expected_processes(world: World, on: Stack | None = None) -> set[str]:
    """The stack file plus overrides' programs and workers, and the listeners and on-demand programs it
    rendered at the first `up` (the same ever after: no step adds or drops one)."""
    stack = on or world.stack
    parsed = with_overrides(load_stack(str(stack.file), HostFacts(Path.home(), sys.executable)))
    names = {p.role for p in parsed.programs if p.enabled}
    names |= {n for q in parsed.queues for n in q.process_names()}
    return names | world.listeners[str(stack.file)]


def snapshot(world: World) -> dict[str, str]:
    """Every file under the run dir, the worktree and the logs: what the commands write by content, what the
    programs and listeners write as they run (logs, state files) by name only."""
    live = {".log", ".json"}
    owned = {"supervisord.conf", "overrides.json", "deployed.json", "stack-owner.json"}
    seen: dict[str, str] = {}
    for top in (world.run, world.stack.root / "logs", world.repo.worktree):
        for path in sorted(top.rglob("*")) if top.exists() else []:
            if ".git" in path.parts or (path.name.startswith(".") and path.suffix == ".tmp"):
                continue
            rel = str(path.relative_to(world.stack.root.parent))
            if path.is_symlink():
                seen[rel] = "-> " + os.readlink(path)
            elif (
                path.is_file() and (path.name in owned or path.suffix not in live) and path.suffix != ".sock"
            ):
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[rel] = "present"
    head = git(world.repo.worktree, "rev-parse", "HEAD") if (world.repo.worktree / ".git").exists() else ""
    seen["HEAD"] = head
    return seen


def wait_quiet(world: World, on: Stack | None = None) -> None:
    """No tick running, nothing draining, the gate not mid-run: the stack is where the last command left it."""
    run = (on or world.stack).root / "run"

    def quiet() -> bool:
        infos = {i["name"]: i for i in supervisorctl_infos(world, on)}
        tick = infos.get("deploy-tick", {}).get("statename")
        gate = (
            json.loads((run / "gate.json").read_text()).get("phase") if (run / "gate.json").exists() else ""
        )
        # A running timer with a trigger still to act on (its marker, or one waiting for a tick to end) starts
        # a tick soon: not quiet yet.
        timer_doc = run / "deploy-timer.json"
        timer_up = infos.get("deploy-timer", {}).get("statename") == "RUNNING"
        pending = timer_up and (
            (run / "deploy-trigger").exists()
            or bool(timer_doc.exists() and json.loads(timer_doc.read_text() or "{}").get("pending"))
        )
        return tick not in ("STARTING", "RUNNING", "STOPPING") and gate != "running" and not pending

    wait_for(quiet, 200, "the timer's tick and the gate to finish")

    def drained() -> bool:
        return not any(supervisor(world, on).draining().values())

    wait_for(drained, 60, "removed workers to finish their jobs")


def worktree(world: World, stack: Stack) -> Path:
    return world.repo.worktree if stack is world.stack else world.stack.root.parent / "node-checkout"


def check(world: World) -> None:
    check_host(world, world.stack)
    if world.node:
        # The node first follows what the server's step declared (its timer looks at each TICK_5), then
        # it is compared as it stands.
        check_two_hosts(world)
        check_host(world, world.node)


def check_host(world: World, stack: Stack) -> None:
    run = stack.root / "run"
    killed = world.killed(stack)
    status = world.ps("status", "--json", on=stack) if not world.supervisord_up(stack) else None
    if status is not None and status.code == 6:
        doc = json.loads(status.out)
        assert doc["supervisord"] == "down"
        assert killed or not doc["orphans"], ("orphans with no crash", doc["orphans"])
        return
    assert status is None or status.code == 0, status.both
    # A node's timer starts a follow tick every poll_interval (5 s here), which may begin between the two
    # reads: a difference is read again (three times at most) before it counts.
    for attempt in range(3):
        wait_quiet(world, stack)
        status = world.ps("status", "--json", on=stack)
        doc = json.loads(status.out)
        infos = supervisorctl_infos(world, stack)
        running = {i["name"] for i in infos}
        reported = {p["name"]: p["state"] for p in doc["processes"] if p["name"] in running}
        if reported == {i["name"]: i["statename"] for i in infos} or stack is world.stack or attempt == 2:
            break
    # What supervisord runs is what the stack file plus overrides say, and what status says.
    expected = expected_processes(world, stack)
    assert running == expected, (running ^ expected, world.log[-5:])
    assert reported == {i["name"]: i["statename"] for i in infos}
    assert not doc["orphans"], doc["orphans"]
    assert len(daemon_pids(stack.conf)) == 1, "one supervisord per stack"
    # Nothing in the run dir is half-written: every record reads whole.
    for path in run.glob("*.json"):
        json.loads(path.read_text() or "{}")
    # The deploy record matches what runs.
    record = doc["deploy"]
    if record["revision"]:
        assert git(worktree(world, stack), "rev-parse", "HEAD") == record["revision"], world.log[-5:]
        assert not record["older_revision"], (record["older_revision"], world.log[-5:])


def singleton_consumers(world: World) -> int:
    """RabbitMQ's own count of the singleton queue's consumers (a passive declare: no statistics lag)."""
    from rabbit import connect

    connection = connect()
    try:
        return int(connection.channel().queue_declare(world.single, passive=True).method.consumer_count)
    finally:
        connection.close()


def singleton_story(world: World) -> str:
    """For a failure: who consumes the singleton queue (the broker's connection names are process names),
    and what each host's singleton worker logged."""
    import requests

    api, auth = "http://127.0.0.1:15672/api", ("guest", "guest")
    found = requests.get(f"{api}/consumers", auth=auth, timeout=10).json()
    peers = [
        c["channel_details"]["connection_name"]
        for c in found
        if c["queue"]["name"] == world.single and isinstance(c.get("channel_details"), dict)
    ]
    names = [
        requests.get(f"{api}/connections/{urllib.parse.quote(peer, safe='')}", auth=auth, timeout=10)
        .json().get("client_properties", {}).get("connection_name", peer)
        for peer in peers
    ]  # fmt: skip
    program = "worker-" + world.single.replace(".", "-")
    logs = [
        f"--- {stack.root.name}'s {program}.log:\n{stack.log(program)[-1500:]}" for stack in world.stacks()
    ]
    story = f"consumers (management API, 5 s behind): {names}\n" + "\n".join(logs)
    world.log.append(story)
    return "two consumers of the singleton queue (the story is in the log below)"


def declared_revision(world: World) -> str:
    found = declared.current(world.database, "PROTEA_DB_URL")
    return found.revision if found else ""


def server_export_seen(world: World) -> bool:
    """Whether the server's last heartbeat (what a node goes by) says an export holds its lock."""
    return bool(heartbeats.server_export(heartbeats.read_all(world.database, "PROTEA_DB_URL")))


def check_two_hosts(world: World) -> None:
    """A singleton queue never has two consumers; the server's declared revision is what it deployed; a
    node that is up and not held back by an export follows the declaration: its record, its checkout and
    every worker it runs are on the declared revision."""
    assert world.node
    assert singleton_consumers(world) <= 1, singleton_story(world)
    revision = declared_revision(world)
    if not revision:
        return
    if world.supervisord_up():  # (check_host compared this record with what status says)
        record = json.loads((world.run / "deployed.json").read_text())
        assert record["revision"] == revision, ("declared", revision, "deployed", record, world.log[-5:])
    if not world.supervisord_up(world.node) or server_export_seen(world):
        return

    def followed() -> bool:
        doc = json.loads(world.ps("status", "--json", on=world.node).out)
        return bool(doc["deploy"]["revision"] == revision and not doc["deploy"]["older_revision"])

    wait_for(followed, 60, f"the node to follow the declared {revision[:10]}")
    assert git(worktree(world, world.node), "rev-parse", "HEAD") == revision


# --- the steps -----------------------------------------------------------------------------------------


def step_up(world: World, rng: random.Random) -> None:
    args = ["up"] + ([str(rng.randint(1, 3))] if rng.random() < 0.3 else [])
    result = world.ps(*args, bound=BOUND["up"])
    assert result.code == 0, result.both
    world.killed_supervisord = False
    infos = {i["name"]: i["statename"] for i in supervisorctl_infos(world)}
    app = {n: s for n, s in infos.items() if n not in ON_DEMAND}
    # On two hosts the singleton's worker is refused while the node's holds the lock (`status` says so).
    refused = {p["name"] for p in world.stack.status().values() if p["description"].startswith("refused: ")}
    assert refused <= {"worker-" + world.single.replace(".", "-")} if world.single else not refused, refused
    assert all(
        s == ("EXITED" if n == "migrate" else "RUNNING") for n, s in app.items() if n not in refused
    ), app
    world.listeners.setdefault(str(world.stack.file), {n for n in infos if n in ON_DEMAND})
    if world.database and world.node is None:
        add_node(world)


def step_down(world: World, rng: random.Random) -> None:
    down(world, world.stack)


def down(world: World, stack: Stack) -> None:
    result = world.ps("down", "--force", bound=BOUND["down"], on=stack)
    assert result.code == 0, result.both
    world.mark_killed(stack, False)
    assert not orphans.find(stack.root / "run" / "supervisor.sock", None)


def queue_count(world: World, overrides: bool = True, on: Stack | None = None) -> int:
    stack = load_stack(str((on or world.stack).file), HostFacts(Path.home(), sys.executable))
    stack = with_overrides(stack) if overrides else stack
    return stack.queue(world.queue).processes


def listener_pids(world: World, on: Stack | None = None) -> dict[str, int]:
    """The running listeners' pids ({} with supervisord down): `scale` restarts none of them."""
    if not supervisor(world, on).is_running():
        return {}
    infos = supervisor(world, on).all_process_info()
    return {i["name"]: i["pid"] for i in infos if i["name"] in LISTENERS and i["statename"] == "RUNNING"}


def untouched(before: dict[str, int], after: dict[str, int]) -> None:
    if before and after:
        assert before == after, ("scale restarted a listener", before, after)


def step_scale(world: World, rng: random.Random) -> None:
    spec = rng.choice(["1", "2", "3", "+1", "-1", "+2", "--reset"])
    args = ["scale", world.queue, *([spec] if spec != "--reset" else ["--reset"])]
    if rng.random() < 0.4:
        args.append("--no-wait")
    before = queue_count(world)
    if spec == "--reset":
        target = queue_count(world, overrides=False)
    else:
        target = before + int(spec) if spec[0] in "+-" else int(spec)
    expected = 1 if target < 0 else 2 if target < before and world.export_held else 0
    listeners = listener_pids(world)
    with served(world, "scale"):
        result = world.ps(*args, bound=BOUND["scale"])
    assert result.code == expected, (expected, result.both)
    assert queue_count(world) == (target if expected == 0 else before), result.both
    untouched(listeners, listener_pids(world))


def step_reload(world: World, rng: random.Random) -> None:
    if rng.random() < 0.5:
        dry(world, "reload", "--dry-run")
        return
    with served(world, "reload"):
        result = world.ps("reload", bound=BOUND["reload"])
    assert result.code in ALLOWED["reload"], result.both


def step_render(world: World, rng: random.Random) -> None:
    kind = rng.choice(["--check", "--diff", ""])
    if kind:
        dry(world, "render", kind)
    else:
        assert world.ps("render").code == 0


def api_url(world: World) -> str:
    return f"http://127.0.0.1:{world.stack.api_port}/jobs"


def answering(world: World) -> bool:
    try:
        with urllib.request.urlopen(api_url(world), timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def served(world: World, what: str) -> Iterator[None]:
    """A step that deploys or resizes: when the API answered before it, it must answer every request
    during it (polled every 50 ms, each on its own connection)."""
    if not answering(world):
        yield
        return
    with Poller(api_url(world)) as polled:
        yield
    world.log.append(f"  API polled {polled.polls} times during {what}: {polled.failed} failed")
    assert polled.failed == 0, f"{polled.failed} of {polled.polls} API requests failed during {what}"


def step_tick(world: World, rng: random.Random) -> None:
    if rng.random() < 0.4:
        dry(world, "tick", "--dry-run")
        return
    with served(world, "tick"):
        result = world.ps("tick", bound=BOUND["tick"])
    assert result.code in ALLOWED["tick"], result.both


def step_trigger(world: World, rng: random.Random) -> None:
    with served(world, "a triggered tick"):
        assert world.ps("trigger", "sequence").code == 0
        if rng.random() < 0.5:  # a hand tick right behind the timer's: they must not run together
            time.sleep(rng.uniform(0, 2))
            # A real one: a dry run beside the timer's tick cannot be judged by what files changed meanwhile.
            result = world.ps("tick", bound=BOUND["tick"])
            assert result.code in ALLOWED["tick"], result.both
        wait_for(lambda: timer_idle(world), BOUND["tick"], "the timer's tick to end")


def step_rollback(world: World, rng: random.Random) -> None:
    with served(world, "rollback"):
        result = world.ps("rollback", bound=BOUND["rollback"])
    assert result.code in ALLOWED["rollback"], result.both
    assert result.code != 2 or world.export_held, result.both


def step_unpin(world: World, rng: random.Random) -> None:
    assert world.ps("unpin").code == 0
    assert "pinned until" not in world.ps("status").out


def tick_killed(world: World, rng: random.Random, victim: str) -> None:
    """A fault inside a tick: a change is committed (so the tick has a plan to run: checkout, canary, the
    API's start-first switch, the workers), a tick starts, and at a random moment of it `victim` (the tick
    itself, with what it started, or supervisord) is killed with SIGKILL. Then the README's recovery: `up`
    when supervisord is down, then the next `tick`."""
    if not world.supervisord_up():
        return
    step_commit(world, rng)
    tick = subprocess.Popen([PS, "--stack", str(world.stack.file), "tick"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    # The fault's moment, chosen by the seed: a time into the tick, or a moment after a step of its plan
    # began (the tick says `step <name>:` as each one starts; a step the plan does not have is never met).
    aim = rng.choice(["time", "time", *PLAN_STEPS])
    moment = rng.uniform(0.2, 6.0) if aim == "time" else rng.uniform(0.0, 0.5)
    met = threading.Event()

    def read() -> None:
        assert tick.stdout
        for line in tick.stdout:
            if f" step {aim}:" in line:
                met.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while aim != "time" and not met.is_set() and reader.is_alive():  # until met, or the tick ended without it
        met.wait(0.02)
    if aim == "time" or met.is_set():
        time.sleep(moment)
        if victim == "tick":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tick.pid, signal.SIGKILL)
        else:
            pidfile = world.run / "supervisord.pid"
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
            world.killed_supervisord = True
    code = tick.wait(timeout=BOUND["tick"])
    reader.join(timeout=10)
    when = f"{moment:.1f} s into a tick" if aim == "time" else f"{moment:.2f} s into its step {aim}"
    world.log.append(
        f"  fault: {victim} killed {when} (tick exit {code}{'' if met.is_set() or aim == 'time' else ', step not met'})"
    )
    if world.ps("status").code == 6:
        step_up(world, rng)
    with served(world, "the tick after the fault"):
        result = world.ps("tick", bound=BOUND["tick"])
    assert result.code in {0, 10, 20}, result.both


# The deploy plan's steps (deploy/plan.py) a fault may aim at, undo steps included.
PLAN_STEPS = ("checkout", "install", "build", "switch", "migrate", "canary", "api", "apply", "verify", "declare",
              "undo-apply", "undo-declare")  # fmt: skip


def step_kill_tick(world: World, rng: random.Random) -> None:
    tick_killed(world, rng, "tick")


def step_kill_supervisord_mid_tick(world: World, rng: random.Random) -> None:
    tick_killed(world, rng, "supervisord")


def step_kill_successor(world: World, rng: random.Random) -> None:
    """An API change deployed start-first, and its successor (`api-next`, beside the serving API on the
    socket) killed with SIGKILL at a random moment once it exists: the serving API never stops, so every
    request during the tick is answered; the tick ends in one of its codes and the next one deploys."""
    if not world.supervisord_up():
        return
    if (
        world.export_held
    ):  # an export defers every tick (exit 0): the long run saw 11 of 17 successors never start
        step_lock(world, rng)
    world.repo.commit(f"an API change {rng.randint(0, 10**6)}", {"VERSION": f"v{rng.randint(0, 10**6)}\n"})
    moment = rng.uniform(0.0, 1.0)
    with served(world, "a tick whose API successor was killed"):
        tick = subprocess.Popen([PS, "--stack", str(world.stack.file), "tick"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        killed = 0
        deadline = time.monotonic() + BOUND["tick"]
        while tick.poll() is None and not killed and time.monotonic() < deadline:
            found = [
                i for i in supervisor(world).all_process_info() if i["name"].endswith("-next") and i["pid"]
            ]
            if found:
                time.sleep(moment)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(found[0]["pid"], signal.SIGKILL)
                    killed = found[0]["pid"]
            time.sleep(0.02)
        out, _ = tick.communicate(timeout=BOUND["tick"])
    world.log.append(f"  fault: the API's successor {'pid ' + str(killed) if killed else 'not seen'} killed "
                     f"{moment:.2f} s after it started (tick exit {tick.returncode})")  # fmt: skip
    assert "Traceback" not in out, out
    assert tick.returncode in ALLOWED["tick"], out[-1500:]
    with served(world, "the tick after the fault"):
        result = world.ps("tick", bound=BOUND["tick"])
    assert result.code in {0, 10, 20}, result.both


def step_gate_retry(world: World, rng: random.Random) -> None:
    result = world.ps("gate", "retry", bound=BOUND["gate"])
    assert result.code in ALLOWED["gate retry"], result.both


def step_lock(world: World, rng: random.Random) -> None:
    if world.export_held:
        assert world.ps("lock", "release", "seq-export").code == 0
    else:
        assert world.ps("lock", "acquire", "export", "seq-export", "sequence").code == 0
    world.export_held = not world.export_held
    if world.node and listener_pids(world).get("heartbeat"):
        # A node learns of it from the server's next heartbeat (one at the next TICK_5 after a lock change).
        wait_for(lambda: server_export_seen(world) == world.export_held, 30, "the lock in the server's beat")


def step_commit(world: World, rng: random.Random) -> None:
    """An API change, a web change, a revision whose API answers 500 (the canary keeps it from the public),
    or the fix of one."""
    n = rng.randint(0, 10**6)
    broken = (world.repo.dev / "BROKEN").exists()
    roll = rng.random()
    files: dict[str, str | None]
    if broken and roll < 0.5:
        files = {"BROKEN": None, "VERSION": f"v{n}\n"}
    elif roll < 0.15:
        files = {"BROKEN": "yes", "VERSION": f"v{n}\n"}
    elif roll < 0.75:
        files = {"VERSION": f"v{n}\n"}
    else:
        files = {"apps/web/page.txt": f"page {n}"}
    world.repo.commit(f"change {n}", files)


def step_jobs(world: World, rng: random.Random) -> None:
    count = rng.randint(2, 6)
    publish_ids(world, count)


def publish_ids(world: World, count: int) -> None:
    import pika
    from rabbit import connect

    connection = connect()
    channel = connection.channel()
    channel.queue_declare(world.queue, durable=False, auto_delete=False)
    for job in range(world.published, world.published + count):
        channel.basic_publish("", world.queue, json.dumps({"id": job, "seconds": 1.5}).encode(),
                              pika.BasicProperties())  # fmt: skip
    connection.close()
    world.published += count


def step_kill_listener(world: World, rng: random.Random) -> None:
    if not world.supervisord_up():
        return
    name = rng.choice(["gate", "tunnel-watch", "deploy-timer"])
    pid = world.stack.status()[name]["pid"]
    if pid:
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            now = world.stack.status()[name]
            return now["pid"] not in (0, pid) and now["state"] == "RUNNING"

        # Back means RUNNING: a status read while it is still STARTING and a supervisorctl read after its
        # startsecs would disagree for no fault of either.
        wait_for(back, 30, f"{name} to come back")


def step_kill_supervisord(world: World, rng: random.Random) -> None:
    kill_supervisord(world, world.stack)


def kill_supervisord(world: World, stack: Stack) -> None:
    pidfile = stack.root / "run" / "supervisord.pid"
    if not world.supervisord_up(stack) or not pidfile.exists():
        return
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    world.mark_killed(stack, True)
    wait_for(lambda: world.ps("status", on=stack).code == 6, 20, "supervisord to be gone")


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem has no space left; the filler is returned."""
    filler = directory / "filler"
    with (
        filler.open("wb", buffering=0) as out,
        contextlib.suppress(OSError),
    ):  # unbuffered: close flushes nothing
        while True:
            out.write(b"\0" * 65536)
    return filler


def step_fill_run_dir(world: World, rng: random.Random) -> None:
    """The run dir's filesystem fills at a random moment inside a command (a runaway file, another process;
    the world's run dir is a 32 MB tmpfs)."""
    if not world.supervisord_up():
        return
    name, args = rng.choice([
        ("scale", ("scale", world.queue, str(rng.randint(1, 3)))), ("reload", ("reload",)),
        ("render", ("render",)), ("tick", ("tick",)),
    ])  # fmt: skip
    filled_during(world, rng, name, args, rng.uniform(0.0, 2.0))


def step_fill_log_dir(world: World, rng: random.Random) -> None:
    """The log dir's filesystem fills at a random moment inside a command, while the workers run and log:
    no command refuses over it (a log line that cannot be written is lost, nothing else), every process
    runs on, and every job is still done once (the end check)."""
    if not world.supervisord_up():
        return
    name, args = rng.choice([
        ("scale", ("scale", world.queue, str(rng.randint(1, 3)))), ("reload", ("reload",)), ("tick", ("tick",)),
        ("up", ("up",)),
    ])  # fmt: skip
    if name == "tick":
        step_commit(world, rng)
    publish_ids(world, 2)  # workers logging their jobs meanwhile
    filled_during(world, rng, name, args, rng.uniform(0.0, 2.0), world.stack.logs)


def filled_during(
    world: World,
    rng: random.Random,
    name: str,
    args: tuple[str, ...],
    moment: float,
    full: Path | None = None,
) -> int:
    """The command refuses in one line (exit 73, a tick 50) or finishes; nothing is half-written; once there
    is room again the same command does what it says. A negative `moment`: the disk is full before it starts.
    `full`: the directory whose filesystem fills (the run dir; the log dir, which refuses nothing)."""
    full = full or world.run
    filler = fill(full) if moment < 0 else None
    command = subprocess.Popen([PS, "--stack", str(world.stack.file), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    if filler is None:
        time.sleep(moment)
        filler = fill(full)
    try:
        out, err = command.communicate(timeout=BOUND.get(name, 120))
    finally:
        filler.unlink()
    world.log.append(
        f"  fault: {full.name} full {moment:.1f} s into `{' '.join(args)}` (exit {command.returncode})"
    )
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    refusals = {73, 50 if name == "tick" else 73} if full == world.run else set()
    assert command.returncode in ALLOWED[name] | refusals, (out + err)[-800:]
    if command.returncode == 73:
        assert "cannot write" in err and "No space left on device" in err, err
    if name == "up":
        world.killed_supervisord = False
    # Room again: the same command does what it says.
    if world.ps("status").code == 6:
        step_up(world, rng)
    again = world.ps(*args, bound=BOUND.get(name, 120))
    assert again.code in ALLOWED[name], again.both
    return command.returncode


CLOCK_STEPS = (-7200, -3600, -600, -30, 30, 600, 3600, 7200)


def step_clock(world: World, rng: random.Random) -> None:
    """The wall clock steps (NTP correcting a drift, `date -s`, a VM restored) at a seeded moment inside
    another step, on every process of the world at once (both hosts'): back or forward by seconds to two
    hours, kept within a day of the real time. The step inside runs as it would, and the invariants hold
    after it: the listeners' schedules move with the clock (`listeners/clock.py`), a heartbeat's age is
    Postgres's, not the host's."""
    assert world.clock
    by = rng.choice([d for d in CLOCK_STEPS if abs(world.clock.offset + d) <= 86400])
    inner = rng.choice([step_tick, step_scale, step_trigger, step_jobs, step_reload, step_up]
                       + ([step_node_scale, step_node_up] if world.node else []))  # fmt: skip
    moment = rng.uniform(0.0, 3.0)
    stepper = threading.Timer(moment, world.clock.step, (by,))
    stepper.start()
    try:
        inner(world, rng)
    finally:
        stepper.join()
    world.log.append(f"  fault: the wall clock stepped {by:+d} s {moment:.1f} s into {inner.__name__} "
                     f"(now {world.clock.offset:+d} s)")  # fmt: skip


def step_close_connection(world: World, rng: random.Random) -> None:
    """A worker's RabbitMQ connection closed through the management API (a broker restart, a network cut):
    its job in hand goes back to the queue, the worker dies at its next read, and supervisord starts it
    again. What runs is still what status says; the job is redone and acked once."""
    import requests

    api, auth = "http://127.0.0.1:15672/api", ("guest", "guest")
    if not world.supervisord_up():
        return

    def consumers() -> list[dict[str, Any]]:
        # The management API's consumer list lags the broker by its statistics interval (5 s).
        found = requests.get(f"{api}/consumers", auth=auth, timeout=10)
        listed = found.json() if found.status_code == 200 else []
        # A consumer whose channel is going away is listed with `channel_details: []` (seen once).
        return [
            c
            for c in listed
            if c.get("queue", {}).get("name") == world.queue and isinstance(c.get("channel_details"), dict)
        ]

    try:
        listed = wait_for(consumers, 15, "the broker to list the workers' consumers")
    except AssertionError:
        world.log.append("# no consumer to close")
        return
    assert isinstance(listed, list)
    connection = rng.choice(listed)["channel_details"]["connection_name"]
    detail = requests.get(
        f"{api}/connections/{urllib.parse.quote(connection, safe='')}", auth=auth, timeout=10
    )
    if detail.status_code != 200:
        world.log.append(f"# connection {connection} not found ({detail.status_code})")
        return
    client = detail.json().get("client_properties", {})
    process, pid = client.get("connection_name", ""), client.get("process_id")
    # Both hosts name their workers alike: the connection's process id tells whose it is.
    owner = next((stack for stack in world.stacks() if world.supervisord_up(stack)
                  and {i["name"]: i["pid"] for i in supervisorctl_infos(world, stack)}.get(process) == pid), None)  # fmt: skip
    if not process or owner is None:
        world.log.append(
            f"# connection {connection} is no running process of these stacks ({process!r}, {pid})"
        )
        return

    def journal(suffix: str) -> set[int]:
        path = owner.root / f"acks.log{suffix}"
        lines = path.read_text().splitlines() if path.exists() else []
        return {int(line.split()[0]) for line in lines if line.split()[1:3] == [process, str(pid)]}

    closed = requests.delete(f"{api}/connections/{urllib.parse.quote(connection, safe='')}", auth=auth,
                             headers={"X-Reason": "test: connection closed"}, timeout=10)  # fmt: skip
    where = "the node's" if owner is world.node else "the server's"
    world.log.append(f"# closed {where} {process}'s connection ({closed.status_code})")
    # Whatever that process had started and not acked by now is back in the queue.
    world.redone |= journal(".starts") - journal("")

    def restarted() -> bool:
        now = {i["name"]: i for i in supervisorctl_infos(world, owner)}.get(process)
        return now is None or (now["pid"] not in (0, pid) and now["statename"] == "RUNNING")

    try:
        wait_for(restarted, 60, f"{where} {process} to be started again after its connection closed")
    except AssertionError:
        row = owner.status().get(process, {})
        world.log.append(
            f"  {process}: {row.get('state')} {row.get('description')}\n{owner.log(process)[-2500:]}"
        )
        raise


def timer_idle(world: World) -> bool:
    """No deploy tick running or about to run (a trigger waiting): the timer's own tick writes its record
    and takes its locks, which a dry run beside it would be blamed for."""
    if not supervisor(world).is_running():
        return True
    if (world.run / "deploy-trigger").exists():
        return False
    timer = (
        json.loads((world.run / "deploy-timer.json").read_text())
        if (world.run / "deploy-timer.json").exists()
        else {}
    )
    states = {i["name"]: i["statename"] for i in supervisor(world).all_process_info()}
    idle_tick = states.get("deploy-tick") not in ("STARTING", "RUNNING", "STOPPING")
    return not timer.get("running") and not timer.get("pending") and idle_tick


def dry(world: World, *args: str) -> None:
    wait_for(lambda: timer_idle(world), BOUND["tick"], "the timer's tick to end before a dry run")
    before = snapshot(world)
    result = world.ps(*args)
    assert result.code in ALLOWED[" ".join(args)], result.both
    after = snapshot(world)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, (f"`{' '.join(args)}` changed {sorted(changed)}", result.both)


# --- the second host ------------------------------------------------------------------------------------


def step_node_up(world: World, rng: random.Random) -> None:
    assert world.node
    result = world.ps("up", bound=BOUND["up"], on=world.node)
    assert result.code == 0, result.both
    world.node_killed = False
    names = {i["name"] for i in supervisorctl_infos(world, world.node)}
    world.listeners.setdefault(str(world.node.file), {n for n in names if n in ON_DEMAND})


def step_node_down(world: World, rng: random.Random) -> None:
    assert world.node
    down(world, world.node)


def step_node_scale(world: World, rng: random.Random) -> None:
    """The shared queue scaled on the node: a scale-down is refused while the server's last heartbeat says
    an export holds its lock (exit 2); the listeners are not touched."""
    node = world.node
    assert node
    spec = rng.choice(["0", "1", "2", "+1", "-1"])
    parsed = with_overrides(load_stack(str(node.file), HostFacts(Path.home(), sys.executable)))
    before = parsed.queue(world.queue).processes
    target = before + int(spec) if spec[0] in "+-" else int(spec)
    # More than one process of an unnumbered queue numbers it, which `scale` asks to confirm (--yes).
    confirmed = rng.random() < 0.7
    unconfirmed = target > 1 and not parsed.queue(world.queue).numbered and not confirmed
    expected = 1 if target < 0 or unconfirmed else 2 if target < before and server_export_seen(world) else 0
    listeners = listener_pids(world, node)
    args = ("scale", world.queue, spec, *(["--yes"] if confirmed else []))
    result = world.ps(*args, bound=BOUND["scale"], on=node)
    assert result.code == expected, (expected, result.both)
    assert queue_count(world, on=node) == (target if expected == 0 else before), result.both
    untouched(listeners, listener_pids(world, node))


def step_kill_node_supervisord(world: World, rng: random.Random) -> None:
    assert world.node
    kill_supervisord(world, world.node)


def step_end_sessions(world: World, rng: random.Random) -> None:
    """The tool's Postgres sessions ended (pg_terminate_backend, as a Postgres restart or a cut network ends
    them) again and again through a step: the singleton keeper's held session, the heartbeats', a
    declaration's, the revision guard's. RabbitMQ never counts two consumers of the singleton queue meanwhile;
    a tick ends in one of its codes, and the next one (the README's recovery) deploys."""
    name = world.database.rsplit("/", 1)[1]
    inside = rng.choice(["a tick", "the node's up", "nothing"])
    delay, every, span = rng.uniform(0, 1.5), rng.uniform(0.05, 0.5), rng.uniform(1, 5)
    stop = threading.Event()
    ended: list[int] = []
    consumers: list[int] = []

    def terminate() -> None:
        stop.wait(delay)
        while not stop.is_set():
            rows = psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")  # fmt: skip
            ended.append(rows.split().count("t"))
            consumers.append(singleton_consumers(world))
            stop.wait(every)

    thread = threading.Thread(target=terminate, daemon=True)
    thread.start()
    code = 0
    try:
        if inside == "a tick" and world.supervisord_up():
            step_commit(world, rng)
            with served(world, "a tick whose Postgres sessions are ended"):
                code = world.ps("tick", bound=BOUND["tick"]).code
            assert code in ALLOWED["tick"], code
        elif inside == "the node's up":
            code = world.ps("up", bound=BOUND["up"], on=world.node).code
            assert code == 0, world.log[-3:]
            world.node_killed = False
        else:
            stop.wait(span)
    finally:
        stop.set()
        thread.join(timeout=30)
    world.log.append(f"  fault: {sum(ended)} Postgres sessions ended inside {inside} (exit {code})")
    assert max(consumers, default=0) <= 1, (consumers, singleton_story(world))
    if inside == "a tick" and code not in (0, 10):
        with served(world, "the tick after the fault"):
            result = world.ps("tick", bound=BOUND["tick"])
        assert result.code in {0, 10, 20}, result.both


def step_backup_restore(world: World, rng: random.Random) -> None:
    """A backup of the server's database, or a restore of a good one (`--yes`): refused while an export
    holds the lock (exit 2); otherwise the stack is stopped, the database switched and the stack brought
    back through the gate. The declaration lives in that database: after a restore it must still say what
    the server runs (check_two_hosts), or a node would follow the dump's older revision."""
    dumps = sorted((world.stack.root.parent / "backups").glob("*.dump"))
    if not dumps or rng.random() < 0.4:
        result = world.ps("backup", "--label", "seq", bound=120)
        assert result.code == 0, result.both
        return
    dump = rng.choice(dumps)
    up = world.supervisord_up()
    result = world.ps("restore", "--yes", str(dump), bound=240)
    assert result.code == (2 if world.export_held else 0), result.both
    if result.code == 0:
        world.log.append(f"  restored {dump.name} (the stack {'stopped and back' if up else 'down'})")


TWO_HOST_STEPS = [
    (step_node_up, 2), (step_node_down, 1), (step_node_scale, 3), (step_kill_node_supervisord, 1),
    (step_end_sessions, 3), (step_backup_restore, 2),
]  # fmt: skip


STEPS = [
    (step_up, 3), (step_down, 1), (step_scale, 5), (step_reload, 2), (step_render, 2), (step_tick, 3),
    (step_trigger, 2), (step_gate_retry, 1), (step_lock, 2), (step_commit, 3), (step_jobs, 3),
    (step_kill_listener, 1), (step_kill_supervisord, 1), (step_rollback, 2), (step_unpin, 1),
    (step_kill_tick, 2), (step_kill_supervisord_mid_tick, 1), (step_close_connection, 1), (step_kill_successor, 1),
    (step_fill_run_dir, 1), (step_fill_log_dir, 1), (step_clock, 2),
]  # fmt: skip


def pick(world: World, rng: random.Random) -> Any:
    """Any step; but with supervisord down most steps only test refusals, so then `up` comes more often."""
    down = not world.supervisord_up()
    if down and rng.random() < 0.6:
        return step_up
    if world.node and not world.supervisord_up(world.node) and rng.random() < 0.3:
        return step_node_up
    functions, weights = zip(*(STEPS + (TWO_HOST_STEPS if world.node else [])), strict=True)
    return rng.choices(functions, weights)[0]


@pytest.fixture
def world_clock(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every process this test starts (the CLI, so supervisord and all it starts) reads this clock."""
    clock = Clock(short_tmp)
    for name, value in clock.environ().items():
        monkeypatch.setenv(name, value)
    return clock


@pytest.fixture
def world(short_tmp: Path, queue_name: str, world_clock: Clock) -> Iterator[World]:
    made = make_world(short_tmp, queue_name)
    made.clock = world_clock
    yield made
    tear_down(made)


@pytest.fixture
def two_hosts(short_tmp: Path, queue_name: str, database: str, world_clock: Clock) -> Iterator[World]:
    """A server and a compute node on this machine, sharing its Postgres (`database`) and RabbitMQ."""
    made = make_world(short_tmp, queue_name, database)
    made.clock = world_clock
    yield made
    tear_down(made)
    from rabbit import delete_queue

    delete_queue(made.single)


def tear_down(made: World) -> None:
    for full in (made.run, made.stack.logs):  # a step that failed while one was full
        (full / "filler").unlink(missing_ok=True)
    for stack in made.stacks():
        stack.ps("down", "--force", timeout=120)
        for orphan in orphans.find(stack.root / "run" / "supervisor.sock", None):
            os.killpg(orphan.pgid, signal.SIGKILL)
    for mounted in (made.run, made.stack.logs):
        subprocess.run(["umount", "-l", str(mounted)], capture_output=True)


LONG_SEEDS, LONG_STEPS = (1, 2, 3, 4, 5), 200


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One seed (`--sequence-seed`, 13) for CI, or several (`--sequence-seed 3,4,6`); `--sequence-long`:
    seeds 1-5; one test each (xdist spreads them)."""
    if "seed" in metafunc.fixturenames:
        config = metafunc.config
        long = config.getoption("--sequence-long")
        seeds = (
            LONG_SEEDS if long else tuple(int(s) for s in str(config.getoption("--sequence-seed")).split(","))
        )
        metafunc.parametrize("seed", seeds)


@pytest.mark.slow
def test_generated_command_sequences_keep_the_stack_what_the_tool_says(
    world: World, seed: int, request: pytest.FixtureRequest
) -> None:
    run_sequence(world, seed, request)


@pytest.mark.slow
def test_generated_sequences_on_two_hosts_keep_both_what_the_tool_says(
    two_hosts: World, seed: int, request: pytest.FixtureRequest
) -> None:
    """The same steps, with a compute node beside the server (its up, down, scale and supervisord killed;
    it follows each declaration by itself) and the tool's Postgres sessions ended inside steps; after every
    step also: one consumer at most of the singleton queue, the declared revision is the server's deployed
    one, and the node follows it unless an export holds it back."""
    run_sequence(two_hosts, seed, request)


def run_sequence(world: World, seed: int, request: pytest.FixtureRequest) -> None:
    long = request.config.getoption("--sequence-long")
    given = request.config.getoption("--sequence-steps")
    # CI's default: 16 steps on one host, 8 on two (each step there does about twice the work).
    count = LONG_STEPS if long else int(given) if given else 8 if world.node or world.database else 16
    rng = random.Random(seed)
    # A fresh host: the first `up` is the first deploy (checkout, install, build, migrate, start).
    step_up(world, rng)
    check(world)
    head = git(world.repo.dev, "rev-parse", "HEAD")
    assert json.loads((world.run / "deployed.json").read_text())["revision"] == head
    if world.node:  # the node's first up: it follows the server's declaration from there
        step_node_up(world, rng)
        check(world)
    census: collections.Counter[str] = collections.Counter()
    took: list[tuple[float, int, str]] = []
    for number in range(1, count + 1):
        step = pick(world, rng)
        census[step.__name__.removeprefix("step_")] += 1
        world.log.append(f"# step {number}: {step.__name__}")
        began = time.monotonic()
        try:
            step(world, rng)
            check(world)
            took.append((time.monotonic() - began, number, step.__name__))
        except AssertionError as failure:
            raise AssertionError(
                f"seed {seed}, step {number} ({step.__name__}): {failure}\n" + "\n".join(world.log[-25:])
            ) from None
    finish(world, rng)
    faults = [line.strip() for line in world.log if line.startswith("  fault:")]
    print(f"seed {seed}, {count} steps on {len(world.stacks())} host(s):", dict(sorted(census.items())))
    print(
        "slowest steps (with their checks):",
        ", ".join(f"{n} {name} {t:.0f} s" for t, n, name in sorted(took)[-5:]),
    )
    print("\n".join(faults))


def finish(world: World, rng: random.Random) -> None:
    # The end: the stack up, the export released, every job acked exactly once and none cut off.
    if world.export_held:
        step_lock(world, rng)
    step_up(world, rng)
    if world.node:
        step_node_up(world, rng)
        check(world)
    publish_ids(world, 3)

    def journal(suffix: str) -> collections.Counter[int]:
        """Each job's lines in every host's journal (acks.log: acked; acks.log.starts: started)."""
        paths = [stack.root / f"acks.log{suffix}" for stack in world.stacks()]
        lines = [line for path in paths if path.exists() for line in path.read_text().splitlines()]
        return collections.Counter(int(line.split()[0]) for line in lines)

    def acked() -> collections.Counter[int]:
        return journal("")

    wait_for(lambda: sum(acked().values()) >= world.published, 120, "every published job acked")
    counted = acked()
    assert sorted(counted) == list(range(world.published)) and set(counted.values()) == {1}, counted
    # Every job started exactly once: none was cut off and redone (from the workers' journal of starts, not
    # their logs: a worker whose supervisord was killed writes its log lines nowhere).
    starts = journal(".starts")
    # A job in hand on a connection the broker closed is redelivered: it may start twice, never more.
    twice = {job for job, n in starts.items() if n == 2}
    assert sorted(starts) == list(range(world.published)) and set(starts.values()) <= {1, 2}, starts
    assert twice <= world.redone, {job: starts[job] for job in twice - world.redone}


def test_a_connection_the_broker_closes_mid_job_is_redone_once(world: World) -> None:
    """The fault on its own, where the generated sequence may not reach it: a worker's connection is closed
    while it holds a job; supervisord starts the worker again, status agrees, and the job is redone and acked
    once."""
    rng = random.Random(1)
    step_up(world, rng)
    check(world)
    publish_ids(world, 6)
    starts = world.stack.root / "acks.log.starts"
    wait_for(lambda: starts.exists() and starts.read_text().strip(), 60, "a job in hand")
    step_close_connection(world, rng)
    assert world.redone, world.log[-5:]  # a job was in hand on the closed connection
    check(world)
    finish(world, rng)


def test_a_run_or_log_dir_that_fills_leaves_every_record_whole_and_every_job_done(world: World) -> None:
    """The fault on its own, for each command that writes to the run dir, then to the log dir: the disk is
    full before it starts."""
    rng = random.Random(2)
    step_up(world, rng)
    check(world)
    codes = {}
    for name, args in (("scale", ("scale", world.queue, "3")), ("render", ("render",)),
                       ("reload", ("reload",)), ("tick", ("tick",))):  # fmt: skip
        if name == "tick":
            step_commit(world, rng)  # a tick with a plan to run
        codes[name] = filled_during(world, rng, name, args, -1)
        check(world)
    # The disk full before each one starts: each refuses (a tick as an infrastructure failure).
    assert codes == {"scale": 73, "render": 73, "reload": 73, "tick": 50}, codes
    # The log dir full instead, with workers logging their jobs: nothing refuses, the tick deploys.
    logged = {}
    for name, args in (("scale", ("scale", world.queue, "2")), ("tick", ("tick",)), ("up", ("up",))):
        if name == "tick":
            step_commit(world, rng)
        publish_ids(world, 2)
        logged[name] = filled_during(world, rng, name, args, -1, world.stack.logs)
        check(world)
    assert logged["scale"] == logged["up"] == 0 and logged["tick"] in (10, 20), logged
    finish(world, rng)
