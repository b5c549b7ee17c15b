"""A host's role, the revision guard's verdict and the declare step in the deploy plan: pure decisions."""

from __future__ import annotations

import pytest

from protea_supervisor.deploy.plan import Step, Work, deploy_plan, rollback_plan
from protea_supervisor.hosts import broker
from protea_supervisor.stackfile.host import (
    Checkout,
    HostSettings,
    default_name,
    guard_verdict,
    host_problems,
)

A, B = "a" * 40, "b" * 40
CLEAN_A = Checkout(A, ())


def test_a_node_runs_only_workers_and_never_declares() -> None:
    assert host_problems(HostSettings(name="gpu-box"), ["migrate", "api", "web", "tunnel"]) == []
    node = HostSettings(role="node", name="gpu-box")
    assert host_problems(node, []) == []
    assert host_problems(node, ["api", "tunnel"]) == [
        ("programs.api.enabled", 'must be false on a node (host.role = "node" runs only workers)'),
        ("programs.tunnel.enabled", 'must be false on a node (host.role = "node" runs only workers)'),
    ]
    declaring = HostSettings(role="node", name="gpu-box", declare_revision=True)
    assert host_problems(declaring, []) == [
        ("host.declare_revision", "must be false on a node: only the server declares")
    ]
    assert host_problems(HostSettings(role="worker", name="x"), [])[0][0] == "host.role"
    assert host_problems(HostSettings(name="bad name"), [])[0][0] == "host.name"


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("gpu-box.tailnet.ts.net", "gpu-box"),
        ("My Laptop", "My-Laptop"),
        ("", "localhost"),
        ("...", "localhost"),
    ],
)
def test_the_default_host_name_is_the_first_label_of_the_hostname(hostname: str, expected: str) -> None:
    assert default_name(hostname) == expected


def test_the_guard_starts_only_a_clean_checkout_at_the_revision_it_must_run() -> None:
    # The server: clean, at the revision its config names (or any, before a deploy rendered one).
    assert guard_verdict(CLEAN_A, A, None, node=False) == ""
    assert guard_verdict(CLEAN_A, "", None, node=False) == ""
    assert guard_verdict(CLEAN_A, B, None, node=False) == (
        "the checkout is at aaaaaaaaaa, not at the deployed revision bbbbbbbbbb"
    )
    dirty = Checkout(A, (" M worker.py", "M  notes.py"))
    assert (
        guard_verdict(dirty, A, A, node=True)
        == "the checkout has uncommitted changes (M worker.py and 1 more)"
    )
    assert guard_verdict(Checkout("", ()), A, A, node=True) == "the worker's directory is not a git checkout"
    # A node: also the declared revision; nothing declared is a refusal, not a pass.
    assert guard_verdict(CLEAN_A, A, A, node=True) == ""
    assert guard_verdict(CLEAN_A, "", A, node=True) == ""
    assert guard_verdict(CLEAN_A, A, B, node=True) == (
        "the checkout is at aaaaaaaaaa, not at the declared revision bbbbbbbbbb"
    )
    assert "no revision is declared yet" in guard_verdict(CLEAN_A, A, None, node=True)
    # The server does not refuse on the declaration: it is the one that writes it.
    assert guard_verdict(CLEAN_A, A, B, node=False) == ""


def names(steps: tuple[Step, ...]) -> list[str]:
    return [s.name for s in steps]


def test_the_server_declares_after_the_api_is_proved_and_a_rollback_declares_the_previous_again() -> None:
    work = Work(install=False, build=False)
    plan = deploy_plan(B, work, supervisord_up=True, canary=True, declare=True)
    assert names(plan) == ["checkout", "migrate", "canary", "api", "declare", "apply", "verify"]
    # Failed at migrate: nothing was declared, nothing is declared back.
    assert "undo-declare" not in names(rollback_plan(plan[:1], supervisord_up=True))
    # Failed at verify, after the declaration: the previous revision is declared again once it runs.
    assert names(rollback_plan(plan[:-1], supervisord_up=True)) == [
        "undo-checkout", "undo-apply", "undo-declare", "verify",
    ]  # fmt: skip
    first = deploy_plan(B, work, supervisord_up=False, declare=True)
    assert names(first) == ["checkout", "start", "declare", "verify"]
    assert names(rollback_plan(first[:-1], supervisord_up=False)) == [
        "undo-checkout",
        "undo-stop",
        "undo-declare",
    ]
    assert "declare" not in names(deploy_plan(B, work, supervisord_up=True))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("not a url :: s3cret", "the broker URL does not parse"),
        ("amqp://u:s3cret@127.0.0.1:1/%2F", "the broker did not answer (AMQPConnectionError)"),
    ],
)
def test_a_broker_that_cannot_be_asked_is_said_without_the_url(url: str, why: str) -> None:
    """A singleton's start goes on with the lock alone when RabbitMQ cannot be asked; what it says never
    quotes the URL (its password)."""
    count = broker.wait_alone(url, "protea.embeddings", 30)
    assert (count.consumers, count.why, count.waited) == (None, why, 0.0)
    assert "s3cret" not in count.why
