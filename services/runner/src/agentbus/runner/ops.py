"""The runner's `/metrics`, `/healthz` and `/readyz` (`RUNNER_METRICS_PORT`; 0, the default: off).

Everything is read from the runner at scrape time: the runs it holds by agent kind, and its lanes'
consumers' backlog (`consumer_info`, once per scrape). Ready: connected to NATS, every lane's pull
subscription bound, and not stopping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from agentbus.common.prom import ConsumerWatch, OpsServer, Scraped, new_registry
from agentbus.contracts import subjects
from agentbus.runner.service import Runner


class RunnerOps:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.registry = new_registry()
        self.consumers = ConsumerWatch(
            lambda: runner.js if self._connected() else None,
            lambda: [(subjects.RUN_COMMANDS_STREAM, lane.consumer) for lane in runner.puller.lanes],
        )
        self.registry.register(Scraped(self._live))
        s = runner.settings
        self.server = OpsServer(
            self.registry, s.metrics_host, s.metrics_port, self.ready, self.consumers.refresh
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def _connected(self) -> bool:
        nc = self.runner.nc
        return nc is not None and nc.is_connected

    async def ready(self) -> bool:
        r = self.runner
        lanes = r.puller.lanes
        return (
            self._connected()
            and bool(lanes)
            and all(lane.psub is not None for lane in lanes)
            and not r.puller.stopping.is_set()
        )

    def _live(self) -> Iterator[Metric]:
        r = self.runner
        runner_id = r.settings.runner_id
        by_kind = Counter(held.execution.start.agent for held in list(r.held.values()))
        in_flight = GaugeMetricFamily(
            "agentbus_runner_runs_in_flight",
            "runs this runner holds now, by agent kind",
            labels=["runner", "kind"],
        )
        for kind in sorted(set(r.registry.kinds()) | set(by_kind)):
            in_flight.add_metric([runner_id, kind], by_kind.get(kind, 0))
        yield in_flight
        capacity = GaugeMetricFamily(
            "agentbus_runner_capacity", "runs this runner may hold at once", labels=["runner"]
        )
        capacity.add_metric([runner_id], r.settings.max_concurrency)
        yield capacity
        yield from self.consumers.metrics()
