"""Start-up checks the API's lifespan runs before it accepts (PROTEA's create_app checks its bearer config
so, and the process exits when one fails)."""


def startup_checks() -> None:
    return None
