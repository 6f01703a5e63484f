"""`agentbus-gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import uvicorn

from agentbus.common.logs import setup_logging
from agentbus.common.settings import SettingsError
from agentbus.gateway.app import create_app
from agentbus.gateway.settings import Settings


class GatewayServer(uvicorn.Server):
    """uvicorn, but stream clients are closed first (WebSocket 1001, going away), then uvicorn stops
    (which would close what is left with 1012)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = getattr(self.config.app.state, "hub", None)
        if hub is None or self.should_exit or not hub.clients():
            super().handle_exit(sig, frame)
            return
        hub.close_all()
        loop = asyncio.get_running_loop()  # signal handlers run on the loop's thread
        loop.call_soon_threadsafe(lambda: loop.create_task(self._exit_when_closed(hub, sig, frame)))

    async def _exit_when_closed(self, hub: Any, sig: int, frame: FrameType | None) -> None:
        deadline = asyncio.get_running_loop().time() + 2.0
        # Bounded (2 s) and only at shutdown: the hub has no "last client gone" signal to wait on.
        while hub.clients() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        super().handle_exit(sig, frame)


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line, before connecting anywhere
        print(f"agentbus-gateway: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
    settings.check()
    setup_logging("gateway", settings.log_level)
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
