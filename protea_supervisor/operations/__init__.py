"""Operations on the services beside the stack: Postgres backup, restore and drill (`backup.py` decides,
`dumps.py` runs them over `postgres.py`, the edge to psql, pg_dump and pg_restore, including the restore
switch), and the stalled-queue detector over RabbitMQ's management API (`queues.py`).

May import `locks`, `stackfile` and the base modules.
"""
