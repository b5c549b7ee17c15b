"""A reference app shaped like PROTEA, on the real frameworks: a FastAPI API under uvicorn, alembic
migrations against Postgres, pika queue workers and a Next.js frontend (apps/web)."""
