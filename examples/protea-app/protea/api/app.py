"""The API: an app factory run as `uvicorn protea.api.app:create_app --factory`, as PROTEA's is."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text

from protea import checks, db
from protea.version import VERSION

# How long the lifespan warms up before the app accepts (PROTEA loads its models and caches here).
WARM_UP_SECONDS = float(os.environ.get("PROTEA_APP_WARM_UP", "2"))


def create_app() -> FastAPI:
    engine = db.engine()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        checks.startup_checks()
        await asyncio.sleep(WARM_UP_SECONDS)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        yield
        engine.dispose()

    app = FastAPI(title="protea-app", lifespan=lifespan)

    @app.get("/jobs")
    def jobs() -> dict[str, object]:
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()
            schema = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        return {
            "version": VERSION,
            "revision": os.environ.get("PROTEA_REVISION", ""),
            "schema": schema,
            "jobs": count,
        }

    return app
