"""The stalled-queue detector's judgement over /api/queues documents."""

from __future__ import annotations

from typing import Any

import pytest

from protea_supervisor.errors import BrokerAnswerInvalid
from protea_supervisor.operations.queues import (
    Reading,
    Seen,
    Watch,
    judge,
    readings,
    running_counts,
    seen_from_state,
)


def api(name: str, messages: int, consumers: int, acks: int | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"name": name, "messages": messages, "consumers": consumers}
    if acks is not None:
        doc["message_stats"] = {"ack": acks, "ack_details": {"rate": 0.0}}
    return doc


def test_only_prefixed_queues_are_read_and_the_dead_letter_queue_is_exempt() -> None:
    doc = [
        api("protea.ping", 0, 1),
        api("other", 5, 0),
        api("protea.dead-letter", 9, 0),
        api("protea.jobs", 2, 1, 17),
    ]
    assert readings(doc, "protea.", ["protea.dead-letter"]) == [
        Reading("protea.jobs", 2, 1, 17),
        Reading("protea.ping", 0, 1, 0),
    ]
    # A queue on a node that is down answers without counts: read as zero, not refused.
    assert readings([{"name": "protea.x", "state": "down"}], "protea.", []) == [Reading("protea.x", 0, 0, 0)]


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"not": "a list"}, "answered a dict, not a list of queues"),
        ("error", "answered a str"),
        ([["protea.jobs"]], "entry 0 is not a queue with a name"),
        ([{"messages": 1}], "entry 0 is not a queue with a name"),
        ([{"name": "protea.jobs", "messages": "many"}], "'protea.jobs': messages is 'many', not a count"),
        ([{"name": "protea.jobs", "consumers": -1}], "consumers is -1"),
        ([{"name": "protea.jobs", "consumers": True}], "consumers is True"),
        ([{"name": "protea.jobs", "message_stats": "x"}], "message_stats is not an object"),
        ([{"name": "protea.jobs", "message_stats": {"ack": 1.5}}], "ack is 1.5"),
    ],
)
def test_an_answer_that_is_not_the_queue_list_is_refused_in_one_line(doc: Any, why: str) -> None:
    with pytest.raises(BrokerAnswerInvalid) as raised:
        readings(doc, "protea.", [])
    assert why in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.exit_code == 2


def test_messages_without_a_consumer_are_stalled_and_an_idle_queue_is_never_a_fault() -> None:
    verdicts, _ = judge([Reading("protea.a", 3, 0, 0), Reading("protea.b", 0, 0, 0)], {}, {}, now=100)
    assert [(v.status, v.fault) for v in verdicts] == [("stalled", True), ("idle", False)]


def test_busy_but_silent_is_starved_only_after_its_grace_counted_across_runs() -> None:
    watches = {"protea.predictions.batch": Watch(5400), "protea.jobs": Watch(1800)}
    silent = [Reading("protea.predictions.batch", 10, 2, 40), Reading("protea.jobs", 4, 1, 7)]
    verdicts, seen = judge(silent, watches, {}, now=1000)
    assert [v.status for v in verdicts] == ["ok", "ok"]
    assert seen == {"protea.predictions.batch": Seen(40, 1000), "protea.jobs": Seen(7, 1000)}
    verdicts, seen = judge(silent, watches, seen, now=3000)
    assert [v.status for v in verdicts] == ["ok", "starved"]
    assert "ack total 7 unchanged for 2000 s (grace 1800 s)" in verdicts[1].detail
    # One ack (the total moved) resets the clock; so does a total that went back (the broker restarted).
    acking = [Reading("protea.predictions.batch", 10, 2, 40), Reading("protea.jobs", 4, 1, 8)]
    verdicts, seen = judge(acking, watches, seen, now=7000)
    assert [v.status for v in verdicts] == ["starved", "ok"] and seen["protea.jobs"] == Seen(8, 7000)
    reset = [Reading("protea.predictions.batch", 10, 2, 0)]
    verdicts, seen = judge(reset, watches, seen, now=7001)
    assert verdicts[0].status == "ok" and seen["protea.predictions.batch"] == Seen(0, 7001)


def test_a_slow_batch_queue_that_acks_within_its_grace_is_never_starved() -> None:
    """One ack every 15 s with a 20 s grace, read every 5 s (RabbitMQ's own statistics interval): the
    momentary rate reads 0 most of the time, the total keeps moving."""
    watches = {"protea.jobs": Watch(20)}
    seen: dict[str, Seen] = {}
    for t in range(0, 300, 5):
        verdicts, seen = judge([Reading("protea.jobs", 50, 1, t // 15)], watches, seen, now=t)
        assert verdicts[0].status == "ok", t
    for t in range(300, 330, 5):  # it stops acking at 300 s (total 20)
        verdicts, seen = judge([Reading("protea.jobs", 50, 1, 20)], watches, seen, now=t)
    assert verdicts[0].status == "starved"


def test_a_queue_that_was_idle_starts_its_clock_when_it_turns_busy() -> None:
    watches = {"protea.jobs": Watch(20)}
    _, seen = judge([Reading("protea.jobs", 5, 1, 3)], watches, {}, now=0)
    _, seen = judge([Reading("protea.jobs", 0, 1, 3)], watches, seen, now=10)
    assert seen == {}
    verdicts, seen = judge([Reading("protea.jobs", 5, 1, 3)], watches, seen, now=1000)
    assert verdicts[0].status == "ok" and seen["protea.jobs"] == Seen(3, 1000)


def test_the_state_file_is_read_only_where_it_can_vouch() -> None:
    assert seen_from_state({"a": {"acks": 3, "since": 1.5}, "old": 12.0, "bad": {"acks": "x"}}) == {
        "a": Seen(3, 1.5)
    }
    assert seen_from_state(None) == {} and seen_from_state([1]) == {}


def test_consumers_must_match_the_running_workers_of_a_stack_queue() -> None:
    watches = {"protea.embeddings.batch": Watch(5400, "worker-embeddings-batch", running=4)}
    verdicts, _ = judge([Reading("protea.embeddings.batch", 0, 3, 0)], watches, {}, now=0)
    assert verdicts[0].status == "mismatch" and "3 consumers, 4 worker-embeddings-batch" in verdicts[0].detail
    verdicts, _ = judge([Reading("protea.embeddings.batch", 0, 4, 0)], watches, {}, now=0)
    assert verdicts[0].status == "idle"
    # supervisord answers with nothing RUNNING: a consumer is a stray one.
    nothing = {"protea.embeddings.batch": Watch(5400, "worker-embeddings-batch", running=0)}
    verdicts, _ = judge([Reading("protea.embeddings.batch", 0, 1, 0)], nothing, {}, now=0)
    assert verdicts[0].status == "mismatch"


def test_running_counts_per_program() -> None:
    infos = [{"group": "w", "statename": "RUNNING"}, {"group": "w", "statename": "STOPPING"},
             {"group": "w", "statename": "RUNNING"}, {"group": "api", "statename": "RUNNING"}]  # fmt: skip
    assert running_counts(infos) == {"w": 2, "api": 1}
    assert running_counts([]) == {}
