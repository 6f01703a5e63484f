"""`agentbus-gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import uvicorn

from agentbus.common.logs import setup_logging
from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings


def main() -> None:
    setup_logging("gateway")
    settings = Settings.from_env()
    settings.check()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=loop,
        http="httptools",
        ws="websockets-sansio",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
