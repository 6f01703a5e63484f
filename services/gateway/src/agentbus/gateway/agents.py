"""The agent registry: which agent kinds runners serve right now, their config schemas, their record.

Discovery is a scatter-gather on `run.runners.info`: one request, every runner
answers with its kinds (the `info` endpoint of the runners' `nats.micro` service,
in a queue group of each runner's own, so none is left out). Creating a run
checks its kind against a short-lived cache first (no I/O on the hot path) and
asks the runners again only on a miss, so a kind that no runner serves is
refused with 409 instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException

from agentbus.contracts import Ping, RunnerInfo, encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.gateway.bus import Bus
from agentbus.gateway.errors import Conflict, ServiceUnavailable, documented
from agentbus.gateway.schemas import AgentKindOut, AgentPage, AgentRunner
from agentbus.gateway.store import GatewayStore

log = logging.getLogger(__name__)
_info = decoder(RunnerInfo)


class Discovery:
    """The runners that answered lately, by instance; refreshed by scatter-gather rounds."""

    def __init__(
        self, bus: Bus, window_s: float = 0.25, ttl_s: float = 5.0, miss_wait_s: float = 1.0
    ) -> None:
        self.bus = bus
        self.window_s = window_s  # how long a full round collects answers
        self.ttl_s = ttl_s  # how long an answer vouches for its runner on the hot path
        self.miss_wait_s = miss_wait_s  # how long a miss waits for a runner serving the kind
        self.seen: dict[str, tuple[RunnerInfo, float]] = {}  # instance -> (info, monotonic time)
        # One round per kind at a time: a burst of creates on a cold cache shares it.
        self._misses: dict[str, asyncio.Future[list[RunnerInfo]]] = {}

    def fresh(self, max_age: float | None = None) -> list[RunnerInfo]:
        now, age = time.monotonic(), self.ttl_s if max_age is None else max_age
        return [info for info, at in self.seen.values() if now - at <= age]

    async def round(self, want: str | None = None, wait: float | None = None) -> list[RunnerInfo]:
        """Ask every runner; return the answers of this round. With `want`, stop at its first server."""
        if not self.bus.nc.is_connected:
            raise ServiceUnavailable("message broker unavailable; retry later")
        answers: list[RunnerInfo] = []
        found = asyncio.Event()

        async def on_reply(msg: Any) -> None:
            try:
                info = _info.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("dropping an undecodable runner info: %s", exc)
                return
            self.seen[info.instance] = (info, time.monotonic())
            answers.append(info)
            if want is not None and any(a.kind == want for a in info.agents):
                found.set()

        inbox = self.bus.nc.new_inbox()
        sub = await self.bus.nc.subscribe(inbox, cb=on_reply)
        try:
            await self.bus.nc.publish(subjects.RUN_INFO, encode(Ping()), reply=inbox)
            try:
                await asyncio.wait_for(found.wait(), self.window_s if wait is None else wait)
            except TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        # Forget runners that stopped answering long ago (scaled down, restarted under a new id).
        horizon = time.monotonic() - max(60.0, 10 * self.ttl_s)
        self.seen = {k: v for k, v in self.seen.items() if v[1] >= horizon}
        return answers

    async def require(self, kind: str) -> None:
        """Return when some runner serves `kind` (cached or asked now); else 409 with the kinds served."""
        if any(a.kind == kind for info in self.fresh() for a in info.agents):
            return
        pending = self._misses.get(kind)
        if pending is None:
            pending = self._misses[kind] = asyncio.ensure_future(self.round(want=kind, wait=self.miss_wait_s))
            pending.add_done_callback(lambda _: self._misses.pop(kind, None))
        answers = await asyncio.shield(pending)
        if any(a.kind == kind for info in answers for a in info.agents):
            return
        served = sorted({a.kind for info in answers for a in info.agents})
        if not answers:
            raise Conflict(f"no runner serves agent kind {kind!r}: no runner is running")
        raise Conflict(
            f"no runner serves agent kind {kind!r}; kinds served now: {', '.join(served) or 'none'}"
        )


def _kinds(answers: list[RunnerInfo], counts: dict[str, tuple[int, int, int]]) -> list[AgentKindOut]:
    out: dict[str, AgentKindOut] = {}
    for info in sorted(answers, key=lambda i: i.instance):
        for agent in info.agents:
            item = out.get(agent.kind)
            if item is None:
                item = out[agent.kind] = AgentKindOut(
                    kind=agent.kind,
                    description=agent.description,
                    available=True,
                    runners=[],
                    config_schema=agent.config_schema,
                    supports_resume=agent.supports_resume,
                    total_runs=0,
                    finished_runs=0,
                    successful_runs=0,
                    success_rate=0.0,
                )
            item.runners.append(
                AgentRunner(
                    instance=info.instance,
                    version=info.version,
                    active_runs=agent.active_runs,
                    max_concurrency=agent.max_concurrency,
                    capacity=info.capacity,
                )
            )
    for kind in counts:  # kinds that ran before but no runner serves now
        out.setdefault(
            kind,
            AgentKindOut(
                kind=kind,
                description="",
                available=False,
                runners=[],
                config_schema=None,
                supports_resume=False,
                total_runs=0,
                finished_runs=0,
                successful_runs=0,
                success_rate=0.0,
            ),
        )
    for kind, item in out.items():
        total, finished, completed = counts.get(kind, (0, 0, 0))
        item.total_runs, item.finished_runs, item.successful_runs = total, finished, completed
        item.success_rate = round(completed / finished, 4) if finished else 0.0
    return [out[k] for k in sorted(out)]


class AgentController(Controller):
    path = "/api/agents"
    tags = ["agents"]

    @get(
        "/",
        summary="Agent kinds: the runners serving each right now, config schema, runs, success rate",
        responses=documented(503),
    )
    async def list_kinds(self, discovery: Discovery, store: GatewayStore) -> AgentPage:
        answers, counts = await asyncio.gather(discovery.round(), store.runs_by_agent())
        items = _kinds(answers, counts)
        return AgentPage(items=items, total=len(items))

    @get("/{kind:str}", summary="One agent kind", responses=documented(404, 503))
    async def retrieve(self, kind: str, discovery: Discovery, store: GatewayStore) -> AgentKindOut:
        answers, counts = await asyncio.gather(discovery.round(), store.runs_by_agent())
        for item in _kinds(answers, counts):
            if item.kind == kind:
                return item
        raise NotFoundException(f"agent kind {kind!r}: no runner serves it and no run used it")
