"""`agentbus-metrics` / `python -m agentbus.metrics`: run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from agentbus.common.logs import setup_logging
from agentbus.common.settings import SettingsError, exit_on_bad_settings
from agentbus.common.tracing import setup_tracing
from agentbus.metrics.ops import MetricsOps
from agentbus.metrics.service import MetricsService
from agentbus.metrics.settings import Settings

log = logging.getLogger("agentbus.metrics")


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows has no add_signal_handler
            loop.add_signal_handler(sig, stop.set)
    service = MetricsService(settings)
    ops = MetricsOps(service) if settings.metrics_port else None  # /metrics, /healthz, /readyz
    if ops is not None:
        await ops.start()  # /healthz answers (and /readyz says 503) while it starts
    # Race the start against the signal: a copy still waiting for its database or
    # broker must stop promptly when told to.
    starting = asyncio.create_task(service.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start raises here
            await stopping
        log.info("signal received, shutting down")
    finally:
        for task in (starting, stopping):
            task.cancel()
        await asyncio.gather(starting, stopping, return_exceptions=True)
        await service.stop()
        if ops is not None:
            await ops.stop()


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line, before connecting anywhere; not worth a restart
        exit_on_bad_settings("agentbus-metrics", exc)
    setup_logging("metrics", settings.log_level, settings.log_format)
    setup_tracing("agentbus-metrics")
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings))
    except Exception:
        log.exception("metrics failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
