"""The deploy tick's decisions. Pure: git, files, supervisord and the clock are the tick's edge (`tick.py`).

What deploy-keeper's `protea_redeploy.sh` decided with a shell loop is here as data: whether a tick deploys,
revives or does nothing; which of install and frontend build a new revision needs; whether a frontend
build is complete enough to serve; and what the record of the deployed revision says.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from protea_supervisor import exitcodes

# Exit codes of `protea-supervisor tick` (deploy-keeper's, plus 21 and 40).
# The tick's exit codes (the table, with their meanings, is exitcodes.TICK).
NOOP = exitcodes.TICK_NOOP
REDEPLOYED = exitcodes.TICK_REDEPLOYED
FAILED_ROLLED_BACK = exitcodes.TICK_FAILED_ROLLED_BACK
FAILED_ROLLBACK_FAILED = exitcodes.TICK_FAILED_ROLLBACK_FAILED
FETCH_FAILED = exitcodes.TICK_FETCH_FAILED
PREREQUISITES_DOWN = exitcodes.TICK_PREREQUISITES_DOWN
INFRA_FAILED = exitcodes.TICK_INFRA_FAILED
MEANING = {
    NOOP: "no-op or deferred",
    REDEPLOYED: "redeployed",
    FAILED_ROLLED_BACK: "deploy failed, rolled back",
    FAILED_ROLLBACK_FAILED: "deploy failed and the rollback failed",
    FETCH_FAILED: "fetch or worktree failure",
    PREREQUISITES_DOWN: "prerequisites down",
    INFRA_FAILED: "infrastructure failure; the revision is not blamed",
}
# The release history's word for how a deploy ended.
RESULT = {
    REDEPLOYED: "deployed",
    FAILED_ROLLED_BACK: "rolled back",
    FAILED_ROLLBACK_FAILED: "rollback failed",
    INFRA_FAILED: "infra failure",
}
TICK_TASK_ID = "deploy-tick"
RECORD_FILE = "deployed.json"


@dataclass(frozen=True)
class DeployRecord:
    """`<run>/deployed.json`: what runs, what ran before, and revisions that failed (skipped until a newer
    commit arrives)."""

    revision: str = ""
    deployed_at: str = ""
    previous: str = ""
    result: str = ""
    web_build: str = ""
    previous_web_build: str = ""
    failed: tuple[str, ...] = field(default_factory=tuple)
    last_tick_at: str = ""
    last_exit: int | None = None
    last_summary: str = ""
    # `rollback` pins the revision it deployed against the one it rolled back from: the timer does not move
    # forward again until a commit other than `pinned_against` is the remote head, or `unpin`.
    pinned: str = ""
    pinned_against: str = ""
    pinned_at: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "deployed_at": self.deployed_at,
            "previous": self.previous,
            "result": self.result,
            "web_build": self.web_build,
            "previous_web_build": self.previous_web_build,
            "failed": list(self.failed),
            "last_tick_at": self.last_tick_at,
            "last_exit": self.last_exit,
            "last_summary": self.last_summary,
            "pinned": self.pinned,
            "pinned_against": self.pinned_against,
            "pinned_at": self.pinned_at,
        }


def record_from_doc(doc: Mapping[str, Any] | None) -> DeployRecord:
    if not doc:
        return DeployRecord()
    last_exit = doc.get("last_exit")
    return DeployRecord(
        revision=str(doc.get("revision", "")),
        deployed_at=str(doc.get("deployed_at", "")),
        previous=str(doc.get("previous", "")),
        result=str(doc.get("result", "")),
        web_build=str(doc.get("web_build", "")),
        previous_web_build=str(doc.get("previous_web_build", "")),
        failed=tuple(str(r) for r in doc.get("failed", [])),
        last_tick_at=str(doc.get("last_tick_at", "")),
        last_exit=int(last_exit) if isinstance(last_exit, int) else None,
        last_summary=str(doc.get("last_summary", "")),
        pinned=str(doc.get("pinned", "")),
        pinned_against=str(doc.get("pinned_against", "")),
        pinned_at=str(doc.get("pinned_at", "")),
    )


@dataclass(frozen=True)
class Decision:
    action: Literal["noop", "skip", "deploy", "revive"]
    reason: str


def decide(record: DeployRecord, remote: str, head: str, healthy: bool, force: bool) -> Decision:
    """What this tick does, given the fetched remote revision, the worktree's HEAD and the stack's health."""
    current = record.revision or head
    if force:
        return Decision("deploy", f"forced: deploying {short(remote)}")
    if remote in record.failed:
        return Decision("skip", f"{short(remote)} failed before; waiting for a newer commit")
    if record.pinned and remote == record.pinned_against:
        if not healthy:
            return Decision("revive", f"{short(current)} (pinned) is deployed but the stack is not healthy")
        return Decision(
            "noop",
            f"pinned to {short(record.pinned)} by `rollback` since {record.pinned_at}; the head "
            f"{short(remote)} is the revision rolled back from (a newer commit or `unpin` resumes deploys)",
        )
    if not record.revision:
        return Decision("deploy", f"first deploy: {short(remote)}")
    if remote != current:
        return Decision("deploy", f"new revision {short(current)} -> {short(remote)}")
    if not healthy:
        return Decision("revive", f"{short(current)} is deployed but the stack is not healthy")
    return Decision("noop", f"already on {short(current)} and healthy")


@dataclass(frozen=True)
class Work:
    install: bool
    build: bool


def work_for(
    changed: Sequence[str] | None, lock_files: Collection[str], web_dir: str, have_build: bool
) -> Work:
    """Install only when a dependency lock file changed; build only when the frontend changed (or nothing is
    built yet). `changed` is None when the two revisions cannot be compared (a first deploy): do both."""
    if changed is None:
        return Work(install=True, build=True)
    prefix = web_dir.rstrip("/") + "/"
    return Work(
        install=any(path in lock_files for path in changed),
        build=not have_build or any(path.startswith(prefix) for path in changed),
    )


def web_build_problems(files: Collection[str], public: Collection[str]) -> list[str]:
    """What keeps a Next.js standalone build from being served (manage.sh's checks): its server, at least one
    CSS chunk under static, and every public file. Paths are relative to the build directory."""
    problems = []
    if ".next/standalone/server.js" not in files:
        problems.append(".next/standalone/server.js is missing")
    css = [f for f in files if f.startswith(".next/standalone/.next/static/") and f.endswith(".css")]
    if not css:
        problems.append("no CSS chunk under .next/standalone/.next/static")
    missing = sorted(p for p in public if f".next/standalone/public/{p}" not in files)
    if missing:
        problems.append(f"public files missing from the build: {', '.join(missing[:5])}")
    return problems


def after_success(record: DeployRecord, revision: str, web_build: str, now: str) -> DeployRecord:
    previous = record.revision if record.revision != revision else record.previous
    previous_build = record.web_build if record.web_build != web_build else record.previous_web_build
    return replace(
        unpinned(record),
        revision=revision,
        deployed_at=now,
        previous=previous,
        result="deployed",
        web_build=web_build,
        previous_web_build=previous_build,
        failed=tuple(r for r in record.failed if r != revision),
    )


PINNED_UNTIL = "; pinned until a commit other than "


def pin_note(against: str) -> str:
    """What a `rollback`'s summary says of its pin."""
    return f"{PINNED_UNTIL}{short(against)} is the head, or `unpin`"


def pinned(record: DeployRecord, against: str, now: str) -> DeployRecord:
    """After a successful `rollback`: hold the deployed revision until the head moves past `against`."""
    return replace(record, pinned=record.revision, pinned_against=against, pinned_at=now)


def unpinned(record: DeployRecord) -> DeployRecord:
    """A new deploy or `unpin` ends a `rollback`'s pin; the last summary no longer says it is pinned."""
    summary, pin, _until = record.last_summary.partition(PINNED_UNTIL)
    return replace(
        record,
        pinned="",
        pinned_against="",
        pinned_at="",
        last_summary=f"{summary}; the pin has ended" if pin else record.last_summary,
    )


def after_failure(record: DeployRecord, revision: str, rolled_back: bool) -> DeployRecord:
    failed = (*[r for r in record.failed if r != revision], revision)[-20:]
    return replace(record, failed=failed, result="rolled back" if rolled_back else "rollback failed")


# --- the plan: steps, their failure classes and their undo --------------------------------------------

# Who a failure is attributed to. Only "revision" puts a revision on the failed list.
Blame = Literal["revision", "infra", "fetch"]


@dataclass(frozen=True)
class Step:
    """One step of a deploy. `undo` names the step that reverses it in a rollback ("" when nothing does)."""

    name: str
    says: str
    undo: str = ""


# A step's failure is the revision's own only for these kinds of failure (its migration, its build, its
# health after start); anything supervisord, the host or the network did is infrastructure.
REVISION_FAILURES: dict[str, frozenset[str]] = {
    "build": frozenset({"command", "incomplete"}),
    "migrate": frozenset({"exit"}),
    "canary": frozenset({"exit", "program", "probe"}),
    "api": frozenset({"program", "probe"}),
    "apply": frozenset({"program"}),
    "start": frozenset({"exit", "program", "probe"}),
    "verify": frozenset({"probe"}),
}


def blame(step: str, failure: str) -> Blame:
    """`failure` is the kind of thing that went wrong: `exit` (a one-shot exited non-zero), `program` (a
    program went FATAL or exited during start), `probe` (a readiness probe never answered), `command` (a
    command exited non-zero), `incomplete` (a build lacks files), or an infrastructure kind (`supervisord`,
    `refused`, `stop-timeout`, `lock`, `git`)."""
    if step == "checkout" or failure == "git":
        return "fetch"
    return "revision" if failure in REVISION_FAILURES.get(step, frozenset()) else "infra"


def _declare_step(rev: str) -> Step:
    return Step("declare", f"declare {rev} in Postgres as the revision that may consume (nodes follow it)",
                undo="declare")  # fmt: skip


def deploy_plan(
    revision: str, work: Work, supervisord_up: bool, canary: bool = False, declare: bool = False
) -> tuple[Step, ...]:
    """The steps that take the stack to `revision`. With supervisord down (a first deploy), supervisord is
    started at the end and the gate runs migrate and starts everything in order.

    With supervisord up the API goes first and alone: with a `canary`, the new revision's API is proved ready
    on its own port before the serving one is touched; then the serving API moves onto it (replaced
    start-first when it is on a socket supervisord holds, else restarted) and must get ready. Only then do
    the workers and web move (`apply`), so a revision whose API fails never reaches a worker or web.

    With `declare` (host.declare_revision), the revision is declared in Postgres once it is migrated and its
    API proved, before this host's workers move onto it (their revision guard reads nothing, but the nodes
    follow the declaration); a rollback declares the previous revision again."""
    rev = short(revision)
    steps = [Step("checkout", f"check out {rev} (detached)", undo="checkout")]
    if work.install:
        steps.append(Step("install", "install dependencies (a lock file changed)", undo="install"))
    if work.build:
        steps.append(Step("build", f"build the frontend at {rev} into a fresh directory and verify it"))
        steps.append(Step("switch", "switch the served frontend to the new build", undo="switch"))
    if supervisord_up:
        steps.append(Step("migrate", "run migrate (it must exit 0)"))
        if canary:
            steps.append(Step("canary", f"start {rev}'s API on its own (api-canary); it must get ready"))
        steps.append(Step("api", f"render with PROTEA_REVISION={rev}; move the API (start-first on its "
                                 "socket, else restarted); it must get ready", undo="apply"))  # fmt: skip
        if declare:
            steps.append(_declare_step(rev))
        steps.append(Step("apply", "restart the rest that changed (workers within their grace, web when "
                                   "its build changed)", undo="apply"))  # fmt: skip
    else:
        steps.append(Step("start", f"render with PROTEA_REVISION={rev}; start supervisord; the gate "
                                   "migrates and starts the stack in order", undo="stop"))  # fmt: skip
        if declare:
            steps.append(_declare_step(rev))
    steps.append(Step("verify", "probe API readiness and web"))
    return tuple(steps)


def rollback_plan(done: Sequence[Step], supervisord_up: bool) -> tuple[Step, ...]:
    """Undo what ran, newest first; then bring the previous revision back up and verify it. Steps that
    changed nothing on disk or in supervisord (build, migrate, verify) have no undo: the fresh build is only
    left unused, and a migration that ran is not undone."""
    undo = {step.undo for step in done if step.undo}
    steps = [
        Step(f"undo-{name}", f"undo {name}") for name in ("switch", "install", "checkout") if name in undo
    ]
    if "stop" in undo:
        steps.append(Step("undo-stop", "stop the stack that was started"))
    elif supervisord_up:
        steps.append(Step("undo-apply", "render with the previous revision; restart what changed"))
    if "declare" in undo:
        steps.append(Step("undo-declare", "declare the previous revision again (nodes follow it back)"))
    if "stop" not in undo and supervisord_up:
        steps.append(Step("verify", "probe API readiness and web"))
    return tuple(steps)


def outcome(blamed: Blame, rolled_back: bool) -> int:
    """The tick's exit code after a failed deploy."""
    if not rolled_back:
        return FAILED_ROLLBACK_FAILED
    return {"revision": FAILED_ROLLED_BACK, "infra": INFRA_FAILED, "fetch": FETCH_FAILED}[blamed]


def short(revision: str) -> str:
    return revision[:10] if revision else "(none)"
