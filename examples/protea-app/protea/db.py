"""The database, from PROTEA_DB_URL as PROTEA reads it."""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine


def url() -> str:
    return os.environ.get("PROTEA_DB_URL", "postgresql://postgres@127.0.0.1:5432/protea")


def engine() -> Engine:
    # pool_pre_ping: a connection Postgres ended (a restore's switch, a restarted server) is replaced, not
    # handed to a request.
    return create_engine(url(), pool_pre_ping=True, pool_size=4)
