"""The systemd unit rendered with the host's paths."""

from __future__ import annotations

from pathlib import Path

from protea_supervisor.supervisord.unit import render_unit, unit_path


def test_the_user_unit_runs_supervisord_in_the_foreground_and_drains_on_stop() -> None:
    text = render_unit("user", ["/opt/ps/bin/protea-supervisor"], "/opt/ps/bin/python", "/etc/protea/stack.toml",
                       Path("/home/op/.local/state/protea-supervisor/supervisord.conf"), 300, "op")  # fmt: skip
    assert "ExecStart=/opt/ps/bin/python -m supervisor.supervisord -n -c " in text
    assert "Environment=PROTEA_STACK=/etc/protea/stack.toml" in text
    assert "ExecStop=/opt/ps/bin/protea-supervisor down --force" in text
    assert "TimeoutStopSec=360" in text and "WantedBy=default.target" in text and "User=" not in text


def test_the_system_unit_runs_as_the_user_and_without_a_stack_uses_the_defaults() -> None:
    text = render_unit("system", ["/opt/ps/bin/protea-supervisor"], "/usr/bin/python3", "", Path("/run/s.conf"),
                       30, "op")  # fmt: skip
    assert "User=op" in text and "WantedBy=multi-user.target" in text and "PROTEA_STACK" not in text
    assert unit_path("system", Path("/home/op")) == Path("/etc/systemd/system/protea-supervisor.service")
    assert unit_path("user", Path("/home/op")) == Path(
        "/home/op/.config/systemd/user/protea-supervisor.service"
    )
