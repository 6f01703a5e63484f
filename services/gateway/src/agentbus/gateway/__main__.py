"""`agentbus-gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from agentbus.common.logs import setup_logging
from agentbus.common.settings import SettingsError, exit_on_bad_settings
from agentbus.common.tracing import setup_tracing
from agentbus.gateway.app import Gateway
from agentbus.gateway.settings import Settings, is_loopback
from agentbus.gateway.streams.hub import Hub


class GatewayServer(uvicorn.Server):
    """uvicorn, but stream clients are closed first (WebSocket 1001, going away), then uvicorn stops
    (which would close what is left with 1012)."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = self.hub
        if self.should_exit or not hub.clients():
            super().handle_exit(sig, frame)
            return
        hub.close_all()
        loop = asyncio.get_running_loop()  # signal handlers run on the loop's thread
        loop.call_soon_threadsafe(lambda: loop.create_task(self._exit_when_closed(hub, sig, frame)))

    async def _exit_when_closed(self, hub: Hub, sig: int, frame: FrameType | None) -> None:
        await hub.wait_clients_gone(timeout=2.0)
        super().handle_exit(sig, frame)


log = logging.getLogger("agentbus.gateway")

# The kernel send buffer of every connection, instead of Linux's autotuning (up to 4 MB a socket): a
# stream client that stops reading is noticed after a few hundred KB, not megabytes, and costs no
# more than that. Set on the listening socket, which accepted connections inherit it from.
SEND_BUFFER = 128 * 1024  # the kernel doubles it


def listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line, before connecting anywhere; not worth a restart
        exit_on_bad_settings("agentbus-gateway", exc)
    setup_logging("gateway", settings.log_level, settings.log_format)
    setup_tracing("agentbus-gateway")
    if settings.auth_on:
        log.info("%s", settings.auth_summary())
    elif is_loopback(settings.host):
        log.warning("%s (set AGENTBUS_ADMIN_TOKEN to turn it on)", settings.auth_summary())
    else:
        log.critical("INSECURE: %s", settings.auth_summary())
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    gateway = Gateway(settings)
    config = uvicorn.Config(
        gateway.asgi,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http="httptools",
        ws="websockets-sansio",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keepalive_s,
    )
    GatewayServer(config, gateway.hub).run(sockets=[listening_socket(settings.host, settings.port)])


if __name__ == "__main__":
    main()
