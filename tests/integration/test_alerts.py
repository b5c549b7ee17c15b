"""The alert rules and the dashboard in deploy/: promtool checks the rules and runs their unit tests (each
alert fired from synthetic series), the dashboard loads, and every metric either one uses is one the
metrics listener exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from protea_supervisor.listeners.metrics import from_process_info, samples
from protea_supervisor.listeners.metrics_hosts import host_families

from protea_supervisor.hosts.heartbeats import Beat

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "protea-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "protea-dashboard.json"
METRIC = re.compile(r"\b(protea_[a-z_]+|up)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    return found


def exported() -> set[str]:
    """Every series name the listener serves, from its pure sampler fed every file it reads."""
    state = from_process_info([{"group": "api", "name": "api", "statename": "RUNNING", "pid": 7, "start": 1}])
    files = {
        "gate": {"phase": "done", "step": "done"},
        "tunnel": {"last_ok": True, "restarts": [], "capped": False},
        "deploy": {"revision": "r", "previous": "p", "last_exit": 10, "last_tick_epoch": 5.0},
        "timer": {"paused_until": 0.0},
        "lock": {"owner": "export", "task_id": "t", "since": 1.0},
        "queues": {"checked_at": 9.0, "queues": [{"name": "protea.jobs", "status": "ok", "messages": 0}]},
        "autoscale": {
            "queues": {
                "protea.jobs": {"count": 2, "min": 1, "max": 6, "backlog": 30, "wanted": 3, "pinned": False}
            },
            "changes": {"protea.jobs up": 1},
        },
    }
    families = samples(state, files, 10.0, lambda pid: 1.0, lambda pid: "r")
    # With host.heartbeat, every host's families too.
    beat = Beat(
        "gpu-1", "node", "r", ({"name": "w", "group": "w", "state": "RUNNING", "revision": "r"},), 3.0
    )
    families += host_families([beat], "r", True)
    # prometheus_client serves a counter as <name>_total.
    return {f.name + ("_total" if f.kind == "counter" else "") for f in families}


def test_the_rules_pass_promtool_and_fire_each_alert_in_its_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 17 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "protea-alerts.test.yml"], cwd=RULES.parent,
                          capture_output=True, text=True)  # fmt: skip
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    # Every alert is fired somewhere in the unit tests.
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    fired = set(
        re.findall(
            r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels",
            (RULES.parent / "protea-alerts.test.yml").read_text(),
        )
    )
    assert alerts == fired, alerts ^ fired


def test_every_metric_the_rules_and_the_dashboard_use_is_exported() -> None:
    served = exported() | {"up"}
    rules = set(METRIC.findall(RULES.read_text().split("groups:", 1)[1]))
    assert rules and rules <= served, rules - served
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "protea-supervisor" and dashboard["panels"]
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel
        for target in panel["targets"]:
            used |= set(METRIC.findall(target["expr"]))
    assert used <= served, used - served
    # The dashboard covers every family the listener serves but its own event counter.
    assert served - used - {"up", "protea_metrics_events_total"} <= {"protea_gate_phase"}, served - used
