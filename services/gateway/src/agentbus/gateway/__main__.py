"""`agentbus-gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

from types import FrameType

import uvicorn

from agentbus.common.logs import setup_logging
from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings


class GatewayServer(uvicorn.Server):
    """uvicorn, but WebSocket clients get 1001 (going away) at shutdown, before uvicorn's own 1012."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = getattr(self.config.app.state, "hub", None)
        if hub is not None:
            hub.close_all()
        super().handle_exit(sig, frame)


def main() -> None:
    setup_logging("gateway")
    settings = Settings.from_env()
    settings.check()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
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
    GatewayServer(config).run()


if __name__ == "__main__":
    main()
