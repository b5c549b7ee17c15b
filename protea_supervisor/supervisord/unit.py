"""The systemd unit that runs the stack at boot, rendered with this host's paths. Pure."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from protea_supervisor.errors import RenderError

UNIT_NAME = "protea-supervisor.service"
TEMPLATE = "protea-supervisor.service.j2"


def unit_path(kind: str, home: Path) -> Path:
    if kind == "system":
        return Path("/etc/systemd/system") / UNIT_NAME
    return home / ".config" / "systemd" / "user" / UNIT_NAME


def render_unit(
    kind: str, exe: Sequence[str], python: str, stack: str, config: Path, stop_grace: int, user: str
) -> str:
    from protea_supervisor.supervisord.render import template_env

    if kind not in ("user", "system"):
        raise RenderError(f"the unit kind must be user or system, got {kind!r}")
    return (
        template_env()
        .get_template(TEMPLATE)
        .render(
            kind=kind,
            exe=" ".join(shlex.quote(a) for a in exe),
            python=shlex.quote(python),
            stack=stack,
            config=shlex.quote(str(config)),
            # systemd's own stop timeout must outlast the longest worker grace (down waits for it).
            stop_timeout=stop_grace + 60,
            user=user,
        )
    )


def next_steps(kind: str, path: Path, user: str) -> list[str]:
    if kind == "system":
        return [
            "systemctl daemon-reload",
            f"systemctl enable --now {UNIT_NAME}",
            f"journalctl -u {UNIT_NAME} -f",
        ]
    return [
        "systemctl --user daemon-reload",
        f"systemctl --user enable --now {UNIT_NAME}",
        f"loginctl enable-linger {user}   # so it starts at boot, without a login",
    ]
