"""Nothing lost: faults injected into real processes at a random moment, then every invariant checked.

Each test runs its own system (its own nats-server, databases and services).
Short timers make faults play out in seconds: redelivery after 3 s
(RUNNER_ACK_WAIT_S), runners announce held runs every second, the reaper ends
runs nobody held for 8 s. `make reliability` runs this module and writes
docs/reliability.md; `make soak` runs it with 1,000 runs per fault.
"""

from __future__ import annotations

import asyncio
import re
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from websockets.exceptions import ConnectionClosed

from agentbus.contracts import subjects
from tests.support.client import TERMINAL, Api, next_event
from tests.support.faults import SOAK, Workload, check_invariants, seeded
from tests.support.netns import NetnsCluster
from tests.support.servers import LocalPostgres, NatsCluster, create_database
from tests.support.system import System, start_system
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

N = 1000 if SOAK else 12
TERMINAL_STATUSES = ("completed", "failed", "rejected", "cancelled", "timeout")
FAULT_ENV = {
    "RUNNER_ACK_WAIT_S": "3",
    "RUNNER_HEARTBEAT_S": "1",
    "RUNNER_GRACE_S": "1",
    "RUNNER_FETCH_TIMEOUT_S": "1",
    "REAPER_AFTER_S": "8",
    "REAPER_INTERVAL_S": "1",
    "WS_HEARTBEAT_S": "1",
}


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[tuple[System, list[Api]]]:
    env = {**FAULT_ENV, **kwargs.pop("env", {})}
    system = await asyncio.to_thread(start_system, **kwargs, **env)
    apis = [Api(*system.url_of(i)) for i in range(len(system.gateways))]
    try:
        yield system, apis
    except BaseException:
        print(system.logs())
        raise
    finally:
        for api in apis:
            await api.close()
        await asyncio.to_thread(system.stop)


async def some_progress(api: Api, work: Workload, rng) -> None:  # type: ignore[no-untyped-def]
    """Wait until the batch is under way, then a random moment more."""

    async def started() -> bool:
        page = (await api.http.get("/api/runs", params={"status": "running", "limit": 1})).json()
        return page["total"] > 0

    await eventually(started, what="runs executing")
    await asyncio.sleep(rng.uniform(0.1, 1.5))


async def test_runner_killed_mid_batch() -> None:
    rng = seeded()
    async with running(runners=2) as (system, apis):
        work = Workload(apis)
        await work.start(N)
        await some_progress(apis[0], work, rng)
        system.runners[0].kill()
        system.add_runner()  # what a supervisor (k8s, compose) does
        await check_invariants("runner SIGKILL mid-batch", apis[0], work)
        await work.stop()


async def test_runner_killed_while_awaiting_approval_decisions_stored() -> None:
    async with running(runners=1) as (system, apis):
        api = apis[0]
        work = Workload(apis, approve=False)
        await work.start(N)
        waiting = [r["id"] for r in work.runs if r["require_approval"]]

        async def all_waiting() -> bool:
            page = (
                await api.http.get("/api/runs", params={"status": "awaiting_approval", "limit": 100})
            ).json()
            return page["total"] == len(waiting)

        await eventually(all_waiting, timeout=60, what="every approval run waiting")
        system.runners[0].kill()
        # No runner holds these runs now: the decisions are stored and applied when one takes them.
        for rid in waiting:
            r = await api.http.post(f"/api/runs/{rid}/approve", json={"approved": True, "feedback": "stored"})
            assert r.status_code == 200, r.text
            again = await api.http.post(f"/api/runs/{rid}/approve", json={"approved": True})
            assert again.status_code == 409  # twice has the effect of once
        system.add_runner()
        await check_invariants("runner SIGKILL while awaiting approval; decisions sent meanwhile", api, work)
        for rid in waiting[:3]:
            assert [e["event_type"] for e in await api.logs(rid)].count("approved") == 1


async def test_reaper_ends_runs_no_runner_holds() -> None:
    async with running(runners=1) as (system, apis):
        api = apis[0]
        work = Workload(apis, approve=False)
        await work.start(2, steps=200, delay_ms=100, approval_timeout_s=3)
        await api.wait_status(work.runs[0]["id"], "awaiting_approval")
        await api.wait_status(work.runs[1]["id"], "running")
        system.runners[0].kill()
        # No runner comes back: both runs must still end within the documented bound: the running
        # one, failed, once nobody announced it for REAPER_AFTER_S; the parked one (no runner holds
        # it by design) once its approval deadline is REAPER_AFTER_S past twice (a wake, then the
        # end), as its policy says (the default: `timeout`).
        await check_invariants(
            "runner gone for good (reaper)", api, work, timeout=40, expect={"failed", "timeout"}
        )
        parked, running_run = [await api.get_run(r["id"]) for r in work.runs]
        assert (parked["status"], parked["error_message"]) == (
            "timeout",
            "timed out while waiting for approval",
        )
        assert running_run["status"] == "failed" and "runner lost" in running_run["error_message"]


async def test_gateway_killed_clients_reconnect_with_since() -> None:
    rng = seeded()
    async with running(runners=2) as (system, apis):
        api = apis[0]
        work = Workload(apis)
        await work.start(N)
        watched = [r["id"] for r in work.runs[:6]]
        seen: dict[str, list[int]] = {rid: [] for rid in watched}

        async def follow(rid: str) -> None:
            while True:
                since = seen[rid][-1] if seen[rid] else 0
                try:
                    async with api.ws(f"/ws/runs/{rid}?since={since}") as ws:
                        while True:
                            e = await next_event(ws, timeout=60)
                            seen[rid].append(e["seq"])
                            if e["event_type"] in TERMINAL:
                                return
                except (ConnectionClosed, OSError, TimeoutError):
                    await asyncio.sleep(0.2)  # the gateway is down: reconnect with since

        followers = [asyncio.create_task(follow(rid)) for rid in watched]
        await some_progress(api, work, rng)
        system.gateways[0][0].kill()
        await asyncio.to_thread(system.restart_gateway, 0)
        await asyncio.wait_for(asyncio.gather(*followers), 120)
        await check_invariants("gateway SIGKILL and restart; WS clients reconnect", api, work)
        await work.stop()
    for rid, seqs in seen.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"{rid}: {seqs}"


async def test_nats_restart_services_reconnect() -> None:
    rng = seeded()
    async with running(runners=2) as (system, apis):
        work = Workload(apis)
        await work.start(N)
        await some_progress(apis[0], work, rng)
        await asyncio.to_thread(system.nats.stop)
        await asyncio.sleep(1)  # the outage itself
        await asyncio.to_thread(system.nats.start)
        await check_invariants("nats-server restart (file storage)", apis[0], work)
        await work.stop()


@pytest.fixture(scope="module")
def controllable_postgres() -> Iterator[LocalPostgres]:
    if not LocalPostgres.available():
        pytest.skip("needs a local initdb/pg_ctl to stop and start PostgreSQL")
    pg = LocalPostgres().init()
    try:
        yield pg
    finally:
        pg.destroy()


async def test_database_outage(controllable_postgres: LocalPostgres) -> None:
    pg = controllable_postgres
    url = await asyncio.to_thread(create_database, pg.url, "outage")
    async with running(runners=2, database_url=url) as (_system, apis):
        api = apis[0]
        work = Workload(apis)
        await work.start(N)
        await some_progress(api, work, seeded())
        await asyncio.to_thread(pg.stop)
        ready = await api.http.get("/ready")
        assert ready.status_code == 503 and "database" in ready.json()["detail"]
        write = await api.http.post("/api/tasks", json={"name": "during outage"})
        assert write.status_code == 503 and "database" in write.json()["detail"]
        assert "postgres" not in write.text.lower()  # no connection details leak
        await asyncio.sleep(2)  # events keep arriving in JetStream meanwhile
        await asyncio.to_thread(pg.start)
        await check_invariants("PostgreSQL stopped and restarted mid-batch", api, work)
        await work.stop()


async def test_graceful_shutdown() -> None:
    async with running(runners=2, gateways=2, env={"RUNNER_GRACE_S": "0.5"}) as (system, apis):
        async with apis[1].ws("/ws/stream") as ws:
            # A heartbeat proves the server has registered this client (the handshake alone does not).
            assert (await next_event(ws, timeout=10, heartbeats=True))["event_type"] == "heartbeat"
            system.gateways[1][0].stop(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await next_event(ws, timeout=10, heartbeats=True)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        # A runner stopping with runs in flight hands them back; the other runner resumes them.
        work = Workload(apis[:1])
        await work.start(N, steps=10, delay_ms=200)
        await some_progress(apis[0], work, seeded())
        await asyncio.to_thread(system.runners[0].stop, signal.SIGTERM)
        assert system.runners[0].proc.returncode == 0
        await check_invariants("SIGTERM: gateway closes WS 1001, runner hands runs back", apis[0], work)
        await work.stop()


async def test_scaled_out_two_gateways_three_runners() -> None:
    async with running(runners=3, gateways=2) as (system, apis):
        streams: list[list[dict]] = [[], []]
        work = Workload(apis)

        async def watch(i: int, ready: asyncio.Event) -> None:
            async with apis[i].ws("/ws/stream") as ws:
                ready.set()
                ended: set[str] = set()
                while len(work.runs) < N or not {r["id"] for r in work.runs} <= ended:
                    e = await next_event(ws, timeout=60)
                    streams[i].append(e)
                    if e["event_type"] in TERMINAL:
                        ended.add(e["run_id"])

        ready = [asyncio.Event(), asyncio.Event()]
        watchers = [asyncio.create_task(watch(i, ready[i])) for i in range(2)]
        await asyncio.gather(*(r.wait() for r in ready))
        await work.start(N)
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
        await check_invariants("scaled out: 2 gateways, 3 runners, 1 metrics", apis[1], work)
        await work.stop()
        full = "\n".join(r.log_path.read_text() for r in system.runners)
    for i, events in enumerate(streams):
        for r in work.runs:
            seqs = [e["seq"] for e in events if e["run_id"] == r["id"]]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs, f"gateway {i}, run {r['id']}: {seqs}"
    for r in work.runs:
        takes = re.findall(rf"run {r['id']} taken \(delivery (\d+)\)", full)
        assert takes == ["1"], f"run {r['id']} executed by {takes}"


async def test_nats_cluster_node_killed() -> None:
    rng = seeded()
    cluster = NatsCluster(tempfile.mkdtemp(prefix="agentbus-cluster-")).start()
    async with running(runners=2, nats=cluster, env={"NATS_REPLICAS": "3"}) as (_system, apis):
        work = Workload(apis)
        await work.start(N)
        await some_progress(apis[0], work, rng)
        victim = rng.randrange(3)
        cluster.nodes[victim].stop(kill=True)
        await check_invariants(f"3-node NATS cluster (R3), node {victim} SIGKILL", apis[0], work)
        await work.stop()


async def _js_answers(js: Any) -> bool:
    """A write through this client is stored: it needs a quorum of the cluster (the test's own R3
    stream, so no data of the services is touched)."""
    try:
        await js.publish("probe.write", b"x")
        return True
    except Exception:
        return False


@pytest.mark.skipif(
    not NetnsCluster.available(), reason="partitioning a node needs root and iproute2 (ip netns)"
)
async def test_nats_cluster_node_partitioned() -> None:
    """A node cut off from the other two under load (its route link down, in a network namespace
    of its own): nothing is lost; a client of the minority side sees errors, and recovers once
    the partition heals."""
    rng = seeded()
    cluster = NetnsCluster(tempfile.mkdtemp(prefix="agentbus-netns-")).start()
    try:
        async with running(runners=2, nats=cluster, env={"NATS_REPLICAS": "3"}) as (_system, apis):
            minority = await nats.connect(cluster.nodes[2].url, max_reconnect_attempts=-1)
            majority = await nats.connect(cluster.nodes[0].url, max_reconnect_attempts=-1)
            js, js_majority = minority.jetstream(timeout=1), majority.jetstream(timeout=2)
            try:
                await js_majority.add_stream(name="PROBE", subjects=["probe.>"], num_replicas=3, max_msgs=10)
                assert await eventually(lambda: _js_answers(js), what="a write from node 2")
                work = Workload(apis)
                await work.start(N)
                await some_progress(apis[0], work, rng)
                cluster.partition(2)
                await eventually(
                    lambda: _not(_js_answers(js)), timeout=30, what="errors on the minority side"
                )
                # The majority goes on without it: every stream has a leader on its side.
                await eventually(
                    lambda: _led_without(js_majority, "n2"), timeout=60, what="leaders on n0, n1"
                )
                cluster.heal(2)
                await eventually(lambda: _js_answers(js), timeout=60, what="the minority side recovered")
                await check_invariants(
                    "3-node NATS cluster (R3), node 2 partitioned, then healed", apis[0], work
                )
                await work.stop()
            finally:
                await minority.close()
                await majority.close()
    finally:
        cluster.stop()


async def _not(check: Any) -> bool:
    return not await check


async def _led_without(js: Any, node: str) -> bool:
    streams = (subjects.EVENTS_STREAM, subjects.RUN_COMMANDS_STREAM, f"KV_{subjects.RUN_STATE_BUCKET}")
    try:
        leaders = [(await js.stream_info(name)).cluster.leader for name in streams]
    except Exception:  # an election under way
        return False
    return all(leader and leader != node for leader in leaders)


@pytest.mark.parametrize("key", ["start", "state", "decision", "cancel"])
async def test_whatever_a_key_holds_every_run_ends_and_says_why(key: str) -> None:
    """Garbage written into one of a run's keys, while it executes and while it is parked: every run
    still ends in a terminal state within the reaper's bound, and GET /api/runs/{id} says why."""
    async with running(runners=1) as (system, apis):
        api = apis[0]
        busy = await api.task(require_approval=False, agent_config={"steps": 40, "step_delay_ms": 150})
        waiting = await api.task(approval_timeout_s=4, agent_config={"steps": 1, "step_delay_ms": 0})
        runs = [await api.run(busy["id"]), await api.run(waiting["id"])]
        await api.wait_status(runs[0]["id"], "running")
        await api.wait_status(runs[1]["id"], "awaiting_approval")
        # As the gateway, the one service the broker lets write every key of a run.
        nc = await nats.connect(system.nats.url, **system.nats.login("gateway"))
        try:
            kv = await nc.jetstream().key_value(subjects.RUN_STATE_BUCKET)
            for run in runs:
                await kv.put(f"{run['id']}.{key}", b"\x00{not json")
        finally:
            await nc.close()
        for run in runs:
            final = await api.wait_status(run["id"], *TERMINAL_STATUSES, timeout=40)
            if final["status"] != "completed":
                assert final["error_message"], final
            logs = await api.logs(run["id"])
            assert [e["seq"] for e in logs] == list(range(1, len(logs) + 1))
            assert logs[-1]["event_type"] in TERMINAL
            if key == "state":  # nothing can go on from a checkpoint that does not decode
                assert final["status"] == "failed" and "does not decode" in final["error_message"]
