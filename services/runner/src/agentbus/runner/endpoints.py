"""The runner's ping and info answers as one `nats.micro` service, `agentbus-runner`:
`$SRV.PING|INFO|STATS[.agentbus-runner[.<id>]]` list the runners and count each endpoint's
requests, errors and processing time.

- `ping` (`run.runners.ping`, queue group `runner`): one runner answers, any will do (the
  gateway's `/ready` asks whether a runner is there).
- `info` (`run.runners.info`): a scatter-gather, every runner must answer (the gateway collects
  the agent kinds served). nats.micro always subscribes an endpoint in a queue group, so each
  runner gets a queue group of its own (`runner-<service id>`): every group gets every request.

A request's body is not read: any request is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any

from nats import micro

from agentbus.contracts import encode, subjects

log = logging.getLogger(__name__)

SERVICE_NAME = subjects.RUNNER_SERVICE
QUEUE_GROUP = "runner"


class Endpoints:
    """`await Endpoints(nc, ...).start()`, later `await endpoints.stop()`. `pong` and `info` make
    the answers (a Pong, a RunnerInfo) from the runner's state at the time of the request."""

    def __init__(
        self,
        nc: Any,
        *,
        instance: str,
        version: str,
        agents: list[str],
        pong: Callable[[], Any],
        info: Callable[[], Any],
    ) -> None:
        self._nc, self._instance, self._version, self._agents = nc, instance, version, agents
        self._pong, self._info = pong, info
        self.service: micro.Service | None = None

    async def start(self) -> None:
        config = micro.ServiceConfig(
            name=SERVICE_NAME,
            version="0.0.0",
            description="agentbus runner: holds runs of its agent kinds; ping and agent discovery",
            metadata={"instance": self._instance, "agents": ",".join(self._agents)},
            queue_group=QUEUE_GROUP,
        )
        with suppress(ValueError):  # micro takes semantic versions only (not `0.1.0.dev1`)
            config = replace(config, version=self._version)
        self.service = service = await micro.add_service(self._nc, config)
        await service.add_endpoint(name="ping", subject=subjects.RUN_PING, handler=self.ping)
        await service.add_endpoint(
            name="info", subject=subjects.RUN_INFO, handler=self.info, queue_group=f"runner-{service.id}"
        )

    async def stop(self, timeout: float = 10) -> None:
        if self.service is not None:
            with suppress(Exception):
                await asyncio.wait_for(self.service.stop(), timeout)

    async def ping(self, request: micro.Request) -> None:
        await self._respond(request, self._pong())

    async def info(self, request: micro.Request) -> None:
        """Discovery: what this runner serves right now, with each kind's config schema and limit."""
        await self._respond(request, self._info())

    async def _respond(self, request: micro.Request, answer: Any) -> None:
        try:
            await request.respond(encode(answer))
        except Exception as exc:  # no reply subject, or the connection is going
            log.warning("could not reply on %s: %s", request.subject, exc)
