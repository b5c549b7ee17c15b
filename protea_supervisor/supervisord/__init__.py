"""The supervisord edge: the rendered config (`render.py`) and its read-back through supervisord's own parser
(`readback.py`), the XML-RPC facade (`control.py`), applying `scale` and `reload` in place (`apply.py`,
`reconcile.py`), starting and stopping the whole stack behind the readiness gate and `down`'s parallel
drain (`lifecycle.py`, `gate_contract.py`, `probes.py`), orphans a dead supervisord left (`orphans.py`),
status rows (`status.py`), old process logs (`logfiles.py`), and the systemd unit (`unit.py`).

May import `stackfile` and the base modules.
"""
