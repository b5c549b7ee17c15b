"""The in-process extension, loaded by supervisord as `[rpcinterface:protea]` (`rpcinterface.py`): a worker
group resized in place and the scale-down drain (`groupsync.py`), the API switch's start-first
replacement on a held socket (`switcher.py`) and the workers' restart delay (`reviver.py`).

Runs inside supervisord: may import `supervisord` (its pure `reconcile`), `stackfile` and the base modules.
"""
