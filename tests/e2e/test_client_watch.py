"""The client's watches across a gateway killed mid-run and started again: every event of the run
delivered once, in order, exactly as `GET /logs` has them (nothing lost, nothing repeated)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentbus.client import AsyncClient, RunEvent, event_type
from tests.support.system import System
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_watches_resume_across_a_gateway_restart(system: System) -> None:
    api = AsyncClient(system.base_url)
    try:
        task = await api.create_task(
            "watched through a restart",
            require_approval=False,
            agent_config={"steps": 12, "step_delay_ms": 250},
        )
        got: dict[str, list[RunEvent]] = {"run": [], "task": [], "all": []}
        killed = asyncio.Event()
        after_kill: dict[str, int] = {}

        run = await api.start_run(task.id)

        async def collect(name: str, events: AsyncIterator[RunEvent]) -> None:
            async for event in events:
                if event.run_id != run.id:
                    continue
                got[name].append(event)
                if killed.is_set():
                    after_kill[name] = after_kill.get(name, 0) + 1
                if event_type(event) == "completion":
                    return

        watch_run = asyncio.create_task(collect("run", api.watch(run.id)))
        watch_task = asyncio.create_task(collect("task", api.watch_task(task.id, since=0)))
        # Live from when it connects: it sees the run from some event on, then every later one.
        watch_all = asyncio.create_task(collect("all", api.watch_all()))

        await eventually(lambda: any(event_type(e) == "progress" for e in got["run"]), 30, "first progress")
        system.gateways[0][0].kill()
        killed.set()
        await asyncio.to_thread(system.restart_gateway, 0)
        try:
            await asyncio.wait_for(asyncio.gather(watch_run, watch_task, watch_all), 60)
        except TimeoutError:
            # Say what was stuck: the run itself, or a watch that missed its end.
            status = (await api.get_run(run.id)).status
            seen = {name: [e.seq for e in events][-5:] for name, events in got.items()}
            pytest.fail(f"the watches did not all see the run end (run {status}; last seqs seen {seen})")

        stored = await api.all_logs(run.id)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert event_type(stored[-1]) == "completion"
        for name, events in got.items():
            expected = stored if name != "all" else stored[events[0].seq - 1 :]
            assert [(e.run_id, e.seq) for e in events] == [(e.run_id, e.seq) for e in expected], name
            assert [e.id for e in events] == [e.id for e in expected], name
            # The part after the kill came through a new connection (replayed or live).
            assert after_kill.get(name, 0) > 0, name
    finally:
        await api.close()
        await asyncio.to_thread(system.wait_ready)
