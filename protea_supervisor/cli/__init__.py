"""The operator CLI: the command group and the one place errors become exit codes (`main.py`), what every
command shares (`common.py`, `settings.py`), and one module per command group: `stack.py` (render, up, down,
reload, gate), `scale.py`, `status.py` (status, logs, tunnel), `deploy.py` (tick, trigger, deploys, rollback,
unpin), `ops.py` (queues, backup, restore, install-unit), `lock.py` and `exec.py` (the wrapper every program
starts through; it imports nothing of the rest).

The top: may import every wing and `protea_supervisor.listeners`; nothing imports it.
"""
