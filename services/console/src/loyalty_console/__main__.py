"""`python -m loyalty_console`: serve the console on LOYALTY_PORT_BASE + 6."""

from __future__ import annotations

import sys

import uvicorn
from loyalty_shared.settings import SERVICE_PORT_OFFSETS, PlatformSettings

from .app import create_app


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] != "serve":
        print("usage: python -m loyalty_console [serve]", file=sys.stderr)
        return 2
    platform = PlatformSettings()
    uvicorn.run(
        create_app(platform=platform),
        host=platform.host,
        port=platform.port_base + SERVICE_PORT_OFFSETS["console"],
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
