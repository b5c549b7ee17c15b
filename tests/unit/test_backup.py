"""Backup naming, retention, side databases, the table of contents, the judgement of a restored database,
and the database URL turned into libpq's environment."""

from __future__ import annotations

from datetime import datetime

import pytest

from protea_supervisor.operations.backup import (
    ASIDE,
    STAGING,
    BackupFailed,
    RestoreChecks,
    Restored,
    count_mismatches,
    dump_name,
    problems,
    quoted,
    refuse_system_database,
    side_name,
    side_names,
    target_from_url,
    to_delete,
    toc_tables,
)

NOW = datetime(2026, 11, 28, 3, 0, 5)


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
    assert dump_name(NOW, "before migration!") == "protea-20261128T030005-before-migration.dump"
    assert dump_name(NOW, "---") == "protea-20261128T030005.dump"
    names = [f"protea-2026112{d}T030000.dump" for d in range(1, 6)] + [
        "protea-20261125T030000.dump.sha256",
        "backup.lock",
        "x",
    ]
    assert to_delete(names, keep=3) == ["protea-20261121T030000.dump", "protea-20261122T030000.dump"]
    assert to_delete(names, keep=10) == []


def test_two_dumps_in_one_second_get_distinct_names_and_retention_keeps_their_order() -> None:
    first = dump_name(NOW)
    second = dump_name(NOW, "", [first, first + ".sha256"])
    third = dump_name(NOW, "nightly", [first, second])
    assert len({first, second, third}) == 3
    assert second == "protea-20261128T030005.1.dump" and third == "protea-20261128T030005.2-nightly.dump"
    assert dump_name(NOW, "", ["protea-20261128T030004.dump"]) == first  # another second: no number
    # Oldest first, whatever the label: the plain name sorts after ".1" as text, not in time.
    assert to_delete([third, first, second], keep=1) == [first, second]


def test_side_databases_are_named_within_63_bytes_unique_and_recognised() -> None:
    assert side_name("protea", STAGING, NOW) == "protea_rst20261128030005"
    assert side_name("protea", STAGING, NOW, ["protea_rst20261128030005"]) == "protea_rst20261128030005_1"
    long = side_name("d" * 80, ASIDE, NOW)
    assert len(long.encode()) == 63 and long.endswith("_pre20261128030005")
    names = ["protea", "protea_pre20261128030005", "protea_pre20261128030005_1", "protea_rst20261128030005",
             "protea_pre2026", "proteax_pre20261128030005", "other_pre20261128030005"]  # fmt: skip
    assert side_names("protea", ASIDE, names) == ["protea_pre20261128030005", "protea_pre20261128030005_1"]
    assert side_names("d" * 80, ASIDE, [long]) == [long]


@pytest.mark.parametrize("name", ["postgres", "template0", "template1"])
def test_a_restore_never_replaces_a_system_database(name: str) -> None:
    with pytest.raises(BackupFailed, match="system database"):
        refuse_system_database(name)
    refuse_system_database("protea")


def test_the_table_of_contents_names_the_tables_not_their_data() -> None:
    listing = """;
; Archive created at 2026-12-01 06:53:00 UTC
2; 3079 16388 EXTENSION - hstore 
216; 1259 16517 TABLE public items postgres
215; 1259 16516 SEQUENCE public items_id_seq postgres
218; 1259 16526 TABLE audit my table postgres
3449; 0 16517 TABLE DATA public items postgres
3303; 2606 16524 CONSTRAINT public items items_pkey postgres
"""  # noqa: W291 (pg_restore writes the trailing blank of an ownerless entry)
    assert toc_tables(listing) == ["audit.my table", "public.items"]
    assert toc_tables("") == []


def test_a_restored_database_is_judged_by_the_same_rules_for_restore_and_drill() -> None:
    checks = RestoreChecks(extensions=("hstore",), tables=("items", "notes", "no_such_table"), min_tables=2)
    good = Restored(("items", "notes"), ("public.items", "public.notes"), ("plpgsql", "hstore"),
                    {"items": 500, "notes": 120})  # fmt: skip
    assert problems(checks, ["public.items", "public.notes"], good) == ["table no_such_table missing"]
    fine = RestoreChecks(("hstore",), ("items",), 2)
    assert problems(fine, ["public.items", "public.notes"], good) == []
    empty = Restored((), (), ("plpgsql",), {})
    assert problems(fine, ["public.items", "public.notes"], empty) == [
        "0 public tables, expected at least 2",
        "extensions missing: hstore",
        "table items missing",
        "2 tables of the dump not restored (public.items, public.notes)",
    ]
    many = [f"public.t{n}" for n in range(8)]
    assert problems(RestoreChecks((), (), 0), many, empty) == [
        "8 tables of the dump not restored (public.t0, public.t1, public.t2, public.t3, public.t4 and 3 more)"
    ]
    zero = Restored(("items",), ("public.items",), (), {"items": 0})
    assert problems(RestoreChecks((), ("items",), 1), ["public.items"], zero) == ["table items is empty"]


def test_counts_compare_table_by_table() -> None:
    assert count_mismatches({"a": 3, "b": 0}, {"a": 3, "b": 0}) == []
    assert count_mismatches({"a": 3, "b": 1}, {"a": 2}) == ["a: 3 in the source, 2 restored",
                                                             "b: 1 in the source, missing restored"]  # fmt: skip


def test_only_plain_identifiers_reach_sql() -> None:
    assert quoted("protea_drill_1") == '"protea_drill_1"'
    with pytest.raises(BackupFailed):
        quoted('x"; DROP DATABASE protea; --')
