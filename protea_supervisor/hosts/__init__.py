"""What hosts share in the server's Postgres: the declared revision (`declared.py`), every host's heartbeat
(`heartbeats.py`), a singleton queue's one consumer across hosts (`singleton.py`, and the keeper process that
holds its lock, `singleton_keeper.py`) and the revision guard every worker start passes (`guard.py`).

May import `operations`, `supervisord`, `locks`, `stackfile` and the base modules.
"""
