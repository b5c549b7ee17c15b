"""protea-supervisor: run the PROTEA application stack under supervisord.

The package is in wings, each named for the part of the system it owns; a wing imports only the wings
below it (the contract `lint-imports` checks, in pyproject.toml), top to bottom:

- `cli/`: the operator CLI, one module per command group; `client.py`: the client for other tools;
- `listeners/` (installed from the checkout's top-level `listeners/`): the event listeners (gate, tunnel
  watchdog, deploy timer, metrics, heartbeat); `extension/`: the in-process supervisord extension;
- `deploy/`: ticks, follow, rollout, the API switch, the frontend build, releases, notifications;
- `hosts/`: what hosts share in the server's Postgres (declaration, heartbeats, singleton, revision guard);
- `operations/`: backup, restore and drill, Postgres, the queue detector; `supervisord/`: the supervisord
  edge (render, read-back, control, apply, lifecycle, orphans, status);
- `locks/`: the stack-owner lock and the operation lock;
- `stackfile/`: the stack description, its schema and parser;
- the base: `errors.py`, `humane.py`, `progress.py`.
"""

__version__ = "0.1.0"
