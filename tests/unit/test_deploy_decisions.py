"""The deploy tick's pure decisions."""

from __future__ import annotations

from protea_supervisor.deploy.plan import (
    DeployRecord,
    after_failure,
    after_success,
    decide,
    pin_note,
    pinned,
    record_from_doc,
    unpinned,
    web_build_problems,
    work_for,
)

A, B, C = "a" * 40, "b" * 40, "c" * 40
DEPLOYED = DeployRecord(revision=A, deployed_at="t0", web_build="/builds/a")


def test_same_revision_and_healthy_is_a_noop_and_unhealthy_is_a_revive() -> None:
    assert decide(DEPLOYED, A, A, healthy=True, force=False).action == "noop"
    assert decide(DEPLOYED, A, A, healthy=False, force=False).action == "revive"


def test_a_new_revision_deploys_and_force_deploys_anyway() -> None:
    assert decide(DEPLOYED, B, A, healthy=True, force=False).action == "deploy"
    assert decide(DEPLOYED, A, A, healthy=True, force=True).action == "deploy"


def test_a_revision_that_failed_is_skipped_until_a_newer_one_arrives() -> None:
    failed = after_failure(DEPLOYED, B, rolled_back=True)
    assert failed.result == "rolled back" and failed.revision == A
    skip = decide(failed, B, A, healthy=True, force=False)
    assert skip.action == "skip" and "failed before" in skip.reason
    assert decide(failed, C, A, healthy=True, force=False).action == "deploy"
    assert decide(failed, B, A, healthy=True, force=True).action == "deploy"


def test_the_first_tick_deploys_even_when_the_worktree_is_on_the_head() -> None:
    assert decide(DeployRecord(), A, A, healthy=True, force=False).action == "deploy"


def test_install_only_for_lock_files_and_build_only_for_the_frontend() -> None:
    locks = ("pyproject.toml", "poetry.lock")
    assert work_for(["protea/api.py"], locks, "apps/web", have_build=True) == work_for(
        [], locks, "apps/web", True
    )
    api_only = work_for(["protea/api.py"], locks, "apps/web", have_build=True)
    assert not api_only.install and not api_only.build
    both = work_for(["poetry.lock", "apps/web/page.tsx"], locks, "apps/web", have_build=True)
    assert both.install and both.build
    assert not work_for(["apps/webby/x"], locks, "apps/web", have_build=True).build
    assert work_for([], locks, "apps/web", have_build=False).build  # nothing served yet
    assert work_for(None, locks, "apps/web", have_build=True) == work_for(None, locks, "x", False)


def test_a_web_build_needs_its_server_a_css_chunk_and_every_public_file() -> None:
    good = {".next/standalone/server.js", ".next/standalone/.next/static/chunks/a.css",
            ".next/standalone/public/protea-mark.png"}  # fmt: skip
    assert web_build_problems(good, {"protea-mark.png"}) == []
    problems = web_build_problems({".next/static/chunks/a.css"}, {"protea-mark.png"})
    assert len(problems) == 3 and "server.js" in problems[0] and "protea-mark.png" in problems[2]


def test_success_moves_the_previous_revision_and_build_along_and_clears_the_failure() -> None:
    failed = after_failure(DEPLOYED, B, rolled_back=True)
    done = after_success(failed, B, "/builds/b", "t1")
    assert (done.revision, done.previous, done.web_build, done.previous_web_build) == (
        B,
        A,
        "/builds/b",
        "/builds/a",
    )
    assert done.failed == () and done.result == "deployed"
    same_build = after_success(done, C, "/builds/b", "t2")
    assert same_build.previous_web_build == "/builds/a"  # an API-only deploy keeps the build to go back to


def test_a_rollback_pin_holds_against_the_revision_rolled_back_from_only() -> None:
    # B was deployed, then `rollback` put A back and pinned it against B.
    held = pinned(after_success(after_success(DEPLOYED, B, "/b", "t1"), A, "/a", "t2"), B, "t3")
    assert (held.revision, held.pinned, held.pinned_against, held.pinned_at) == (A, A, B, "t3")
    stay = decide(held, B, A, healthy=True, force=False)
    assert stay.action == "noop" and "pinned to aaaaaaa" in stay.reason and "unpin" in stay.reason
    assert decide(held, B, A, healthy=False, force=False).action == "revive"  # the pinned revision
    assert decide(held, C, A, healthy=True, force=False).action == "deploy"  # a newer commit
    assert decide(held, B, A, healthy=True, force=True).action == "deploy"  # tick --force
    moved_on = after_success(held, C, "/c", "t4")
    assert moved_on.pinned == moved_on.pinned_against == moved_on.pinned_at == ""
    assert record_from_doc(held.to_doc()) == held


def test_unpin_leaves_no_summary_that_says_pinned() -> None:
    from dataclasses import replace

    held = replace(pinned(DEPLOYED, B, "t3"), last_summary=f"deployed {A[:10]} (was {B[:10]}){pin_note(B)}")
    assert "pinned until a commit other than bbbbbbbbbb" in held.last_summary
    free = unpinned(held)
    assert free.last_summary == f"deployed {A[:10]} (was {B[:10]}); the pin has ended"
    assert free.pinned == free.pinned_against == ""
    plain = replace(DEPLOYED, last_summary="no-op: on the head")
    assert unpinned(plain).last_summary == "no-op: on the head"


def test_the_record_round_trips() -> None:
    record = after_failure(after_success(DEPLOYED, B, "/b", "t1"), C, rolled_back=False)
    assert record_from_doc(record.to_doc()) == record
    assert record_from_doc(None) == DeployRecord()


def test_only_the_revisions_own_failures_blame_it() -> None:
    from protea_supervisor.deploy.plan import blame

    assert blame("migrate", "exit") == "revision"
    assert blame("build", "command") == "revision" and blame("build", "incomplete") == "revision"
    assert blame("verify", "probe") == "revision"
    assert blame("apply", "program") == "revision"  # a worker of the new revision went FATAL
    assert blame("api", "probe") == "revision" and blame("canary", "probe") == "revision"
    assert blame("canary", "program") == "revision"  # the new revision's API exited before it got ready
    assert blame("canary", "refused") == "infra"  # its port taken by something else
    # What supervisord, the host or the network did is not the revision's (`killed`: the new API or its
    # canary killed by a signal, an operator's SIGKILL or the OOM killer).
    for step in ("migrate", "canary", "api", "apply", "verify", "start", "switch"):
        for kind in ("supervisord", "refused", "stop-timeout", "lock", "killed"):
            assert blame(step, kind) == "infra", (step, kind)
    assert blame("install", "command") == "infra"  # a network failure must not blacklist a good revision
    assert blame("checkout", "git") == "fetch"


def test_the_plan_and_its_rollback_undo_exactly_what_ran() -> None:
    from protea_supervisor.deploy.plan import Work, deploy_plan, rollback_plan

    plan = deploy_plan(B, Work(install=True, build=True), supervisord_up=True)
    assert [s.name for s in plan] == [
        "checkout", "install", "build", "switch", "migrate", "api", "apply", "verify",
    ]  # fmt: skip
    # With a canary, the new revision's API is proved on its own before the serving one moves.
    canary = deploy_plan(B, Work(install=False, build=False), supervisord_up=True, canary=True)
    assert [s.name for s in canary] == ["checkout", "migrate", "canary", "api", "apply", "verify"]
    # Failed at migrate: the switch, the install and the checkout are undone, newest first, then re-applied.
    done = plan[:4]
    assert [s.name for s in rollback_plan(done, supervisord_up=True)] == [
        "undo-switch", "undo-install", "undo-checkout", "undo-apply", "verify",
    ]  # fmt: skip
    # Failed at the checkout: nothing ran, so nothing is undone but the re-apply.
    assert [s.name for s in rollback_plan((), supervisord_up=True)] == ["undo-apply", "verify"]
    # With supervisord down, files are put back and nothing is started.
    assert [s.name for s in rollback_plan(done, supervisord_up=False)] == [
        "undo-switch", "undo-install", "undo-checkout",
    ]  # fmt: skip
    first = deploy_plan(B, Work(install=True, build=True), supervisord_up=False)
    assert [s.name for s in first][-2:] == ["start", "verify"]


def test_exit_codes_after_a_failed_deploy() -> None:
    from protea_supervisor.deploy.plan import outcome

    assert outcome("revision", rolled_back=True) == 20
    assert outcome("infra", rolled_back=True) == 50
    assert outcome("fetch", rolled_back=True) == 30
    assert outcome("infra", rolled_back=False) == 21 and outcome("revision", rolled_back=False) == 21
