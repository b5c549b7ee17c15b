"""The stalled-queue detector's judgement over /api/queues documents."""

from __future__ import annotations

from protea_supervisor.queues import Reading, Watch, judge, readings, running_counts


def api(name: str, messages: int, consumers: int, ack_rate: float | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"name": name, "messages": messages, "consumers": consumers}
    if ack_rate is not None:
        doc["message_stats"] = {"ack_details": {"rate": ack_rate}}
    return doc


def test_only_prefixed_queues_are_read_and_the_dead_letter_queue_is_exempt() -> None:
    doc = [
        api("protea.ping", 0, 1),
        api("other", 5, 0),
        api("protea.dead-letter", 9, 0),
        api("protea.jobs", 2, 1, 0.5),
    ]
    assert readings(doc, "protea.", ["protea.dead-letter"]) == [
        Reading("protea.jobs", 2, 1, 0.5),
        Reading("protea.ping", 0, 1, 0.0),
    ]


def test_messages_without_a_consumer_are_stalled_and_an_idle_queue_is_never_a_fault() -> None:
    verdicts, _ = judge([Reading("protea.a", 3, 0, 0.0), Reading("protea.b", 0, 0, 0.0)], {}, {}, now=100)
    assert [(v.status, v.fault) for v in verdicts] == [("stalled", True), ("idle", False)]


def test_busy_but_silent_is_starved_only_after_its_grace_counted_across_runs() -> None:
    watches = {"protea.predictions.batch": Watch(5400), "protea.jobs": Watch(1800)}
    silent = [Reading("protea.predictions.batch", 10, 2, 0.0), Reading("protea.jobs", 4, 1, 0.0)]
    verdicts, since = judge(silent, watches, {}, now=1000)
    assert [v.status for v in verdicts] == ["ok", "ok"] and since == {n.name: 1000 for n in silent}
    verdicts, since = judge(silent, watches, since, now=3000)
    assert [v.status for v in verdicts] == ["ok", "starved"]
    assert "no acks for 2000 s (grace 1800 s)" in verdicts[1].detail
    # One ack resets the clock.
    acking = [Reading("protea.predictions.batch", 10, 2, 0.0), Reading("protea.jobs", 4, 1, 0.2)]
    verdicts, since = judge(acking, watches, since, now=7000)
    assert [v.status for v in verdicts] == ["starved", "ok"] and "protea.jobs" not in since


def test_consumers_must_match_the_running_workers_of_a_stack_queue() -> None:
    watches = {"protea.embeddings.batch": Watch(5400, "worker-embeddings-batch", running=4)}
    verdicts, _ = judge([Reading("protea.embeddings.batch", 0, 3, 0.0)], watches, {}, now=0)
    assert verdicts[0].status == "mismatch" and "3 consumers, 4 worker-embeddings-batch" in verdicts[0].detail
    verdicts, _ = judge([Reading("protea.embeddings.batch", 0, 4, 0.0)], watches, {}, now=0)
    assert verdicts[0].status == "idle"


def test_running_counts_per_program() -> None:
    infos = [{"group": "w", "statename": "RUNNING"}, {"group": "w", "statename": "STOPPING"},
             {"group": "w", "statename": "RUNNING"}, {"group": "api", "statename": "RUNNING"}]  # fmt: skip
    assert running_counts(infos) == {"w": 2, "api": 1}
