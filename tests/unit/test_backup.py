"""Backup naming, retention, and the database URL turned into libpq's environment."""

from __future__ import annotations

from datetime import datetime

import pytest

from protea_supervisor.backup import (
    BackupFailed,
    count_mismatches,
    dump_name,
    quoted,
    target_from_url,
    to_delete,
)


def test_the_url_becomes_libpq_environment_and_the_password_stays_out_of_the_description() -> None:
    target = target_from_url("postgresql+psycopg://protea:p%40ss@db.local:5433/protea", "PROTEA_DB_URL")
    assert target.env() == {"PGHOST": "db.local", "PGPORT": "5433", "PGDATABASE": "protea", "PGUSER": "protea",
                            "PGPASSWORD": "p@ss"}  # fmt: skip
    assert "p@ss" not in target.describe() and target.env("other")["PGDATABASE"] == "other"


@pytest.mark.parametrize("url", ["mysql://x@h/db", "postgresql://x@h:99999/db", "postgresql://x@h/"])
def test_bad_urls_are_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(BackupFailed, match="PROTEA_DB_URL"):
        target_from_url(url, "PROTEA_DB_URL")


def test_dumps_are_named_by_time_and_label_and_retention_keeps_the_newest() -> None:
    assert dump_name(datetime(2026, 11, 28, 3, 0, 5), "before migration!") == (
        "protea-20261128T030005-before-migration.dump"
    )
    names = [f"protea-2026112{d}T030000.dump" for d in range(1, 6)] + [
        "protea-20261125T030000.dump.sha256",
        "x",
    ]
    assert to_delete(names, keep=3) == ["protea-20261121T030000.dump", "protea-20261122T030000.dump"]
    assert to_delete(names, keep=10) == []


def test_counts_compare_table_by_table() -> None:
    assert count_mismatches({"a": 3, "b": 0}, {"a": 3, "b": 0}) == []
    assert count_mismatches({"a": 3, "b": 1}, {"a": 2}) == ["a: 3 in the source, 2 restored",
                                                             "b: 1 in the source, missing restored"]  # fmt: skip


def test_only_plain_identifiers_reach_sql() -> None:
    assert quoted("protea_drill_1") == '"protea_drill_1"'
    with pytest.raises(BackupFailed):
        quoted('x"; DROP DATABASE protea; --')
