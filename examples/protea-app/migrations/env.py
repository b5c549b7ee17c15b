"""alembic's environment: online migrations against PROTEA_DB_URL, all revisions of one `upgrade` in one
transaction (Postgres's DDL is transactional: a revision that fails half-way leaves nothing behind)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from protea import db
from sqlalchemy import create_engine

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

with create_engine(db.url()).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
