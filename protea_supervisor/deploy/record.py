"""The deploy record on disk (`deployed.json` in the run dir): what the tick and a node's follow write, and
what `status`, `render` and `up` read. Apart from the executor, so that a command that only reads it does not
load the deploy steps (supervisord's client, the renderer, git) at every start."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from protea_supervisor.deploy import plan
from protea_supervisor.deploy.plan import DeployRecord
from protea_supervisor.stackfile.files import read_json, write_atomic
from protea_supervisor.stackfile.stack import Stack


def record_path(stack: Stack) -> Path:
    return stack.paths.run / plan.RECORD_FILE


def read_record(stack: Stack) -> DeployRecord:
    return plan.record_from_doc(read_json(record_path(stack)))


def write_record(stack: Stack, record: DeployRecord) -> None:
    write_atomic(record_path(stack), json.dumps(record.to_doc(), indent=2) + "\n")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
