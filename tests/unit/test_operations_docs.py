"""docs/operations.md names every Prometheus metric the services export, and the Grafana dashboard
asks only for metrics they export. The names come from each service's real registry, rendered."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentbus.common.prom import render
from agentbus.gateway.app import Gateway
from agentbus.gateway.settings import Settings as GatewaySettings
from agentbus.metrics.ops import MetricsOps
from agentbus.metrics.service import MetricsService
from agentbus.metrics.settings import Settings as MetricsSettings
from agentbus.runner.ops import RunnerOps
from agentbus.runner.service import Runner
from agentbus.runner.settings import Settings as RunnerSettings

ROOT = Path(__file__).resolve().parents[2]
TYPE = re.compile(r"^# TYPE (\S+) (\w+)$", re.M)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """service -> {family name as exposed: its type}."""
    root = tmp_path_factory.mktemp("ops")
    gateway = Gateway(GatewaySettings(database_url=f"sqlite+aiosqlite:///{root / 'g.db'}"))
    runner = RunnerOps(Runner(RunnerSettings(), plugins=False))
    metrics = MetricsOps(MetricsService(MetricsSettings(database_url=f"sqlite+aiosqlite:///{root / 'm.db'}")))
    out = {}
    for name, registry in (
        ("gateway", gateway.exposition.registry),
        ("runner", runner.registry),
        ("metrics", metrics.registry),
    ):
        out[name] = dict(TYPE.findall(render(registry).decode()))
    return out


def test_every_exported_metric_is_documented(exported: dict[str, dict[str, str]]) -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    names = {name for families in exported.values() for name in families}
    assert len(names) >= 15, names
    missing = sorted(name for name in names if f"`{name}`" not in doc)
    assert not missing, f"docs/operations.md does not name: {missing}"


def test_every_service_exports_the_consumers_backlog(exported: dict[str, dict[str, str]]) -> None:
    for families in exported.values():
        assert families["agentbus_consumer_pending_messages"] == "gauge"
        assert families["agentbus_consumer_ack_pending_messages"] == "gauge"
    assert exported["gateway"]["agentbus_gateway_http_request_duration_seconds"] == "histogram"
    assert exported["runner"]["agentbus_runner_runs_in_flight"] == "gauge"


def test_grafana_dashboard_asks_only_for_exported_metrics(exported: dict[str, dict[str, str]]) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agentbus.json").read_text())
    families = {name: kind for fams in exported.values() for name, kind in fams.items()}
    samples = set(families)
    for name, kind in families.items():
        if kind == "histogram":
            samples |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    asked = {name for expr in exprs for name in re.findall(r"\bagentbus_[a-z0-9_]+", expr)}
    assert asked and asked <= samples, asked - samples
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("runs per second", "outcomes", "p95 run duration", "cost per hour", "backlog", "ingest"):
        assert topic in titles
