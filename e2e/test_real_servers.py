"""The end-to-end stage: what a PROTEA operator does, on the servers PROTEA really runs.

The reference app (examples/protea-app) is deployed from a local git remote by protea-supervisor with the
shipped PROTEA stack under a host file: FastAPI under uvicorn, alembic against this machine's Postgres, pika
workers on its RabbitMQ, a real `next build` served by `node .next/standalone/server.js`. The steps run in
order, one world for all: the first `up` on a fresh host, PROTEA's switch-over of its API to the socket
supervisord holds (deploy/api-socket), a tick of each commit kind, rollbacks, backup and restore of the real
schema, and `down` with jobs in flight. During every step that changes what runs, jobs are in hand on three
queues and the API, the API through the frontend's /api-proxy rewrite and the web page are each polled every
50 ms. After every step, what runs is what `status` and the release history say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tomllib

import pytest
from stage import APP, QUEUES, SWITCH_OVER, Figures, Stage, git, psql, wait_for

from protea_supervisor.supervisord.control import Supervisor

pytestmark = pytest.mark.e2e

SHAS: dict[str, str] = {}
PAGE = (APP / "apps/web/app/page.js").read_text()
CHECKS = (APP / "protea/checks.py").read_text()
ONE_SHOTS = {"migrate", "deploy-tick"}


def page(text: str) -> str:
    assert "<p>page 1</p>" in PAGE
    return PAGE.replace("<p>page 1</p>", f"<p>{text}</p>")


def truth(stage: Stage, revision: str) -> None:
    """What runs is what `status` says, every long-running process is RUNNING on `revision`, the worktree and
    the deploy record are at it, and the API serves it."""
    doc = stage.status()
    infos = Supervisor(stage.run / "supervisor.sock").all_process_info()
    assert {p["name"]: p["state"] for p in doc["processes"]} == {i["name"]: i["statename"] for i in infos}
    down = {
        i["name"]: i["statename"]
        for i in infos
        if i["group"] not in ONE_SHOTS and i["statename"] != "RUNNING"
    }
    assert not down, down
    workers = [i for i in infos if i["group"].startswith("worker-")]
    assert len(workers) == sum(QUEUES.values()), workers
    assert doc["deploy"]["revision"] == revision
    assert not doc["deploy"]["older_revision"], doc["deploy"]["older_revision"]
    assert not doc["orphans"]
    assert git(stage.worktree, "rev-parse", "HEAD") == revision
    assert stage.api()[0]["revision"] == revision


def untouched(before: dict[str, int], stage: Stage) -> None:
    """Not one process of the stack was started or stopped (same pids): a failed revision reached nothing."""
    after = stage.pids()
    assert {n: after.get(n) for n in before} == before, (before, after)


def answered(figures: Figures, switched: bool) -> None:
    """0 failed API requests, but for uvicorn's own race on a start-first switch: the old process, as it
    stops, closes a connection it accepted in that instant before reading its request (no answer: a reset;
    Kludex/uvicorn#2757, discussion #2315). At most one such reset a switch passes, and it is counted in the
    figures; any other failure (refused, timed out, an error status) fails the step."""
    assert figures.api_failed == figures.api_resets <= (1 if switched else 0), figures.extra


def latest(stage: Stage, revision: str, result: str) -> dict[str, object]:
    entry = stage.deploys()[0]
    assert (entry["revision"], entry["result"]) == (revision, result), entry
    return entry


def refused(stage: Stage, label: str, sha: str, before: dict[str, int], failed_step: str) -> None:
    """A tick of a revision that fails at `failed_step`: exit 20, not one failed request, no job cut off,
    not one process started or stopped, the web-change revision still serving, and the history saying
    so."""
    result, figures = stage.under_load(label, "tick")
    assert result.code == 20, result.both
    assert figures.api_failed == figures.proxy_failed == figures.web_failed == 0, figures.extra
    assert figures.cut_off == 0
    untouched(before, stage)
    truth(stage, SHAS["web-change"])
    entry = latest(stage, sha, "rolled back")
    assert entry["failed_step"] == failed_step, entry


def test_the_first_up_on_a_fresh_host_deploys_the_remote_head(stage: Stage) -> None:
    head = git(stage.dev, "rev-parse", "HEAD")
    SHAS["v1"] = head
    assert not stage.worktree.exists()
    stage.up_to_the_public_page("first up")
    truth(stage, head)
    assert stage.schema() == "0001"
    assert "page 1" in stage.page("web") and "PROTEA" in stage.page("public")
    # The browser's way to the API: Next's /api-proxy rewrite, set at `next build` from PROTEA_API_URL.
    assert json.loads(stage.page("proxy"))["revision"] == head
    entry = latest(stage, head, "deployed")
    assert entry["installed"] and entry["built"] and entry["trigger"] == "first deploy (up)"


def test_protea_switches_its_api_to_the_socket_supervisord_holds(stage: Stage) -> None:
    """deploy/api-socket: the app's X-Api-Pid middleware is deployed first (the API still restarts), then the
    host file's two keys and `reload` put the API on the socket. Both moves are measured, not held to zero."""
    git(stage.dev, "apply", str(SWITCH_OVER / "api-pid.patch"))
    sha = SHAS["pid"] = stage.commit("the API sends X-Api-Pid (deploy/api-socket/api-pid.patch)")
    result, figures = stage.under_load("switch-over: app", "tick", new_revision=sha)
    assert result.code == 10, result.both
    assert figures.cut_off == 0
    truth(stage, sha)
    assert stage.api()[1], "the patched app sends X-Api-Pid"
    keys = tomllib.loads((SWITCH_OVER / "host-socket.toml").read_text())["programs"]["api"]
    keys["socket"] = keys["socket"].replace("0.0.0.0:8000", f"127.0.0.1:{stage.ports['api']}")
    stage.stack["programs"]["api"] = keys
    stage.write_stack()
    dry = stage.ps("reload", "--dry-run")
    assert dry.code == 0 and "api" in dry.out, dry.both
    result, figures = stage.under_load("switch-over: socket", "reload")
    assert result.code == 0, result.both
    assert "[fcgi-program:api]" in (stage.run / "supervisord.conf").read_text()
    assert figures.cut_off == 0
    truth(stage, sha)
    _answer, pid = stage.api()
    assert pid and "--fd" in (stage.run / "supervisord.conf").read_text()


@pytest.mark.parametrize(
    ("kind", "files"),
    [
        ("api-change", {"protea/version.py": 'VERSION = "v2"\n'}),
        ("deps-change", None),
        ("web-change", {"apps/web/app/page.js": page("page 5")}),
    ],
)
def test_a_commit_is_deployed_with_no_failed_api_request_and_no_job_cut_off(
    stage: Stage, kind: str, files: dict[str, str | None] | None
) -> None:
    if kind == "deps-change":
        lock = stage.app_file("requirements.lock") + "six==1.17.0\n"
        pyproject = stage.app_file("pyproject.toml").replace('"pika"]', '"pika", "six"]')
        files = {"requirements.lock": lock, "pyproject.toml": pyproject}
    before = stage.pids()
    sha = SHAS[kind] = stage.commit(kind, files)
    shown = "page 5" if kind == "web-change" else ""
    result, figures = stage.under_load(kind, "tick", new_revision=sha, new_page=shown)
    assert result.code == 10, result.both
    answered(figures, switched=True)
    assert figures.cut_off == 0
    truth(stage, sha)
    entry = latest(stage, sha, "deployed")
    assert entry["installed"] == (kind == "deps-change") and entry["built"] == (kind == "web-change")
    if kind == "web-change":
        assert "page 5" in stage.page("web") and "page 5" in stage.page("public")
        # What bounds the web gap: a restart is the old server's stop and Next.js's own start.
        figures.extra["next_start"] = round(stage.next_start(), 2)
        assert stage.pids()["web"] != before["web"]
    else:
        # Only a frontend change moves web: the proxy and the page never failed.
        assert figures.web_failed == 0 and figures.proxy_failed == 0, figures.extra
        assert stage.pids()["web"] == before["web"]
    if kind == "deps-change":
        freeze = subprocess.run(
            [str(stage.worktree / ".venv/bin/pip"), "freeze"], capture_output=True, text=True
        )
        assert "six==1.17.0" in freeze.stdout.splitlines()


def test_a_migration_that_fails_half_way_leaves_nothing_and_reaches_no_process(stage: Stage) -> None:
    half = (
        '"""Half a migration.\n\nRevision ID: 0002\nRevises: 0001\n"""\n\nimport sqlalchemy as sa\n'
        "from alembic import op\n\n"
        'revision = "0002"\ndown_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\n'
        '    op.execute("SELECT 1 / 0")\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_table("half")\n'
    )
    before = stage.pids()
    sha = SHAS["bad-migration"] = stage.commit(
        "a migration that fails", {"migrations/versions/0002_half.py": half}
    )
    refused(stage, "failing migration", sha, before, "migrate")
    # Postgres's DDL is transactional: the table created before the failure went with the failed upgrade.
    assert stage.schema() == "0001"
    assert psql(stage.database, "SELECT to_regclass('public.half') IS NULL") == "t"
    assert sha in stage.status()["deploy"]["failed"]


def test_an_api_whose_start_up_fails_never_serves_and_reaches_no_worker(stage: Stage) -> None:
    raising = CHECKS.replace(
        "    return None\n",
        '    raise RuntimeError("PROTEA_JWT_SECRET is not set but PROTEA_AUTHN_REQUIRED is on")\n',
    )
    assert raising != CHECKS
    before = stage.pids()
    sha = SHAS["bad-start"] = stage.commit(
        "the API's start-up fails", {"migrations/versions/0002_half.py": None, "protea/checks.py": raising}
    )
    refused(stage, "start-up fails", sha, before, "api")
    # uvicorn reports the lifespan's failure and exits 3; the tick saw the successor exit.
    assert "Application startup failed" in (stage.logs / "api.log").read_text()


def test_a_frontend_build_that_fails_leaves_the_served_build_and_every_process(stage: Stage) -> None:
    broken = PAGE.replace("export default", 'import Missing from "./missing-component";\n\nexport default', 1)
    before = stage.pids()
    served = (stage.run / "web-current").resolve()
    sha = SHAS["bad-build"] = stage.commit(
        "a frontend build that fails", {"protea/checks.py": CHECKS, "apps/web/app/page.js": broken}
    )
    refused(stage, "build fails", sha, before, "build")
    assert (stage.run / "web-current").resolve() == served


def test_the_fix_deploys_with_a_migration_that_adds_a_table(stage: Stage) -> None:
    labels = (
        '"""The labels table.\n\nRevision ID: 0002\nRevises: 0001\n"""\n\nimport sqlalchemy as sa\n'
        "from alembic import op\n\n"
        'revision = "0002"\ndown_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.create_table("labels", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_table("labels")\n'
    )
    sha = SHAS["fix"] = stage.commit(
        "the fix", {"apps/web/app/page.js": page("page 9"), "migrations/versions/0002_labels.py": labels}
    )
    result, figures = stage.under_load("fix", "tick", new_revision=sha, new_page="page 9")
    assert result.code == 10, result.both
    answered(figures, switched=True)
    assert figures.cut_off == 0
    assert stage.schema() == "0002" and stage.api()[0]["schema"] == "0002"
    assert "page 9" in stage.page("web")
    truth(stage, sha)
    # The failed revisions stay on the list (a tick skips them); the one that serves is not on it.
    assert set(stage.status()["deploy"]["failed"]) == {
        SHAS["bad-migration"],
        SHAS["bad-start"],
        SHAS["bad-build"],
    }
    latest(stage, sha, "deployed")


def test_a_rollback_across_a_migration_is_refused_by_alembic_and_the_fix_keeps_serving(stage: Stage) -> None:
    """alembic's `upgrade head` of a revision that does not know the database's revision fails: the rollback
    fails at its migrate step and the current revision keeps serving (the schema is never downgraded)."""
    before = stage.pids()
    result, figures = stage.under_load("rollback across 0002", "rollback", SHAS["web-change"])
    assert result.code == 20, result.both
    assert figures.api_failed == 0 and figures.cut_off == 0, figures.extra
    assert stage.schema() == "0002"
    untouched(before, stage)
    truth(stage, SHAS["fix"])
    assert "Can't locate revision" in (stage.logs / "migrate.log").read_text()
    assert not stage.status()["deploy"].get("pinned_against")


def test_a_rollback_on_the_same_schema_serves_the_older_revision_until_unpinned(stage: Stage) -> None:
    sha = SHAS["v3"] = stage.commit("api change v3", {"protea/version.py": 'VERSION = "v3"\n'})
    result, figures = stage.under_load("api-change (v3)", "tick", new_revision=sha)
    assert result.code == 10, result.both
    answered(figures, switched=True)
    result, figures = stage.under_load("rollback", "rollback", new_revision=SHAS["fix"])
    assert result.code == 0, result.both
    answered(figures, switched=True)
    assert figures.proxy_failed == 0 and figures.cut_off == 0, figures.extra
    truth(stage, SHAS["fix"])
    entry = latest(stage, SHAS["fix"], "deployed")
    assert str(entry["trigger"]).startswith("rollback")
    assert "pinned" in stage.ps("status").out
    assert stage.ps("tick").code == 0, "the pinned revision stays while the head is the one rolled back from"
    truth(stage, SHAS["fix"])
    assert stage.ps("unpin").code == 0
    assert "pinned until" not in stage.ps("status").out, "the last summary no longer says it is pinned"
    result, figures = stage.under_load("after unpin", "tick", new_revision=sha)
    assert result.code == 10, result.both
    answered(figures, switched=True)
    assert figures.cut_off == 0
    truth(stage, sha)


def test_backup_and_restore_of_the_real_schema(stage: Stage) -> None:
    psql(stage.database, "INSERT INTO jobs (id, queue) VALUES ('kept', 'protea.jobs')")
    backup = stage.ps("backup", "--label", "e2e")
    assert backup.code == 0, backup.both
    dumps = sorted((stage.host / "backups").glob("*.dump"))
    assert len(dumps) == 1
    psql(stage.database, "INSERT INTO jobs (id, queue) VALUES ('after-the-dump', 'protea.jobs')")
    assert stage.api()[0]["jobs"] == 2
    drill = stage.ps("restore", "--drill", str(dumps[0]))
    assert drill.code == 9 and "jobs" in drill.both, "the drill's counts differ from the live table's"
    ids = stage.publish(per_queue=2)
    wait_for(lambda: stage.started(ids), 30, "a job in hand")
    restore = stage.ps("restore", str(dumps[0]), "--yes")
    assert restore.code == 0, restore.both
    stage.wait_jobs(ids)
    assert not set(stage.cut_off()) & set(ids)
    answer, _pid = stage.api()
    assert answer["jobs"] == 1 and answer["schema"] == "0002"
    truth(stage, SHAS["v3"])


def test_workers_orphaned_by_a_killed_supervisord_finish_their_jobs_and_up_stops_them_gracefully(
    stage: Stage,
) -> None:
    """supervisord killed (the OOM killer) with jobs in hand: its programs run on as orphans. Their output
    has no reader any more and is lost, but a worker that logs as PROTEA's does (logging) goes on with its
    job and acks it; `up` stops the orphans with their stop signal and grace and starts the stack."""
    ids = stage.publish(per_queue=1)
    wait_for(lambda: len(stage.started(ids)) >= 2, 30, "jobs in hand")
    os.kill(int((stage.run / "supervisord.pid").read_text()), signal.SIGKILL)
    in_hand = stage.started(ids)
    wait_for(lambda: all(stage.done()[job] for job in in_hand), 30, "the orphans to finish their jobs")
    logs = "".join(path.read_text() for path in stage.logs.glob("worker-*.log"))
    lost = [job for job in in_hand if f"job {job} done" not in logs]
    assert lost, "the lines the orphans wrote after supervisord died reached no log"
    gone = stage.ps("status", "--json")
    assert gone.code == 6 and json.loads(gone.out)["orphans"], gone.both
    up = stage.ps("up")
    assert up.code == 0 and "orphan" in up.out, up.both
    stage.wait_jobs(ids)
    assert not set(stage.cut_off()) & set(ids)
    truth(stage, SHAS["v3"])
    killed = Figures(step="supervisord killed", code=up.code, seconds=up.seconds, jobs=len(in_hand))
    stage.figures.append(killed)


def test_down_with_jobs_in_flight_finishes_every_job_in_hand_and_loses_none(stage: Stage) -> None:
    ids = stage.publish(per_queue=4)
    wait_for(lambda: len(stage.started(ids)) >= 3, 30, "jobs in hand on every loaded queue")
    down = stage.ps("down")
    assert down.code == 0, down.both
    started = stage.started(ids)
    assert all(stage.done()[job] == 1 for job in started), (
        "every job in hand finished before its worker exited"
    )
    assert not set(stage.cut_off()) & set(ids)
    waiting = sum(stage.ready_messages(q) for q in {job.split("/")[0] for job in ids})
    assert waiting == len(ids) - len(started), "a job not started waits in its queue"
    stage.figures.append(Figures(step="down", code=down.code, seconds=down.seconds, jobs=len(started)))
    gone = stage.ps("status", "--json")
    assert gone.code == 6 and json.loads(gone.out)["orphans"] == []
    # Every job published over the whole stage ran exactly once, or waits in its queue.
    assert stage.cut_off() == []


def test_a_cold_start_of_the_deployed_host_serves_the_public_page_through_the_gate(stage: Stage) -> None:
    """`up` after `down`: supervisord, migrate (nothing to do), the API's lifespan, Next.js, the tunnel."""
    stage.up_to_the_public_page("cold start")
    truth(stage, SHAS["v3"])
    assert stage.schema() == "0002"
