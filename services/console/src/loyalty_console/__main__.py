"""`python -m loyalty_console`: serve the console on LOYALTY_PORT_BASE + 6."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from loyalty_shared.settings import SERVICE_PORT_OFFSETS, PlatformSettings
from pydantic import ValidationError

from .app import create_app
from .config import ConsoleSettings


def uvicorn_config(
    app: Any, settings: ConsoleSettings, platform: PlatformSettings, *, port: int | None = None
) -> uvicorn.Config:
    """How the console is served. Behind a TLS proxy, uvicorn's ProxyHeadersMiddleware takes
    the scheme (X-Forwarded-Proto, hence `Secure` cookies) and the client's address
    (X-Forwarded-For, hence the sign-in throttle) from the proxy, but only from a connection
    whose address is in FORWARDED_ALLOW_IPS; anyone else's headers are ignored."""
    return uvicorn.Config(
        app,
        host=platform.host,
        port=platform.port_base + SERVICE_PORT_OFFSETS["console"] if port is None else port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] != "serve":
        print("usage: python -m loyalty_console [serve]", file=sys.stderr)
        return 2
    platform = PlatformSettings()
    try:
        settings = ConsoleSettings()
    except ValidationError as exc:  # e.g. a CONSOLE_SESSION_SECRET too short to be one
        # Without the values: one of them may be a secret.
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            print(f"console_settings_invalid: {where}: {error['msg']}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn_config(create_app(settings, platform=platform), settings, platform)
    )
    server.run()
    return 0 if server.started else 3  # 3: uvicorn's own code for a failed start


if __name__ == "__main__":
    sys.exit(main())
