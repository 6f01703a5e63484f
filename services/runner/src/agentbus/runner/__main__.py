"""`agentbus-runner` / `python -m agentbus.runner`: run one runner until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from agentbus.common.logs import setup_logging
from agentbus.common.settings import SettingsError, exit_on_bad_settings
from agentbus.common.tracing import setup_tracing
from agentbus.runner.ops import RunnerOps
from agentbus.runner.service import Runner
from agentbus.runner.settings import Settings

log = logging.getLogger("agentbus.runner")


async def serve(settings: Settings) -> None:
    runner = Runner(settings)
    ops = RunnerOps(runner) if settings.metrics_port else None  # /metrics, /healthz, /readyz
    if ops is not None:
        await ops.start()  # /healthz answers (and /readyz says 503) while it connects
    await runner.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: stopping (grace %ss)", settings.grace_s)
    await runner.stop()
    if ops is not None:
        await ops.stop()


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # one line, before connecting anywhere; not worth a restart
        exit_on_bad_settings("agentbus-runner", exc)
    setup_logging("runner", settings.log_level, settings.log_format)
    setup_tracing("agentbus-runner")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
