"""The runner's ping and info answers are a `nats.micro` service (`agentbus-runner`): discovery
lists each runner with its endpoints, the stats count their requests, and agent discovery still
reaches every runner (each has a queue group of its own for `info`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import msgspec
import nats
import pytest

from agentbus.contracts import Ping, Pong, RunnerInfo, encode, subjects
from agentbus.gateway.agents import Discovery
from agentbus.runner import Runner, Settings, running

pytestmark = pytest.mark.timeout(60)

SERVICE = subjects.RUNNER_SERVICE


def settings(nats_url: str) -> Settings:
    return Settings(
        nats_url=nats_url, runner_id=f"test-{uuid.uuid4().hex[:6]}", fetch_timeout_s=0.5, grace_s=2
    )


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def gather(nc: Any, subject: str, payload: bytes, until: Any, timeout: float = 5) -> list[Any]:
    """Publish one request and collect the JSON answers until `until(answers)` holds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, payload, reply=inbox)
        answers: list[Any] = []
        while not until(answers):
            answers.append(msgspec.json.decode((await sub.next_msg(timeout=timeout)).data))
        return answers
    finally:
        await sub.unsubscribe()


def mine(runner: Runner) -> Any:
    return lambda answers: any(
        a.get("metadata", {}).get("instance") == runner.settings.runner_id for a in answers
    )


async def test_the_runner_is_a_micro_service_that_counts_requests(nats_url: str, nc: Any) -> None:
    async with running(settings(nats_url)) as runner:
        # Other runners of the session may answer too: find this one.
        answers = await gather(nc, f"$SRV.INFO.{SERVICE}", b"", mine(runner))
        info = next(a for a in answers if a["metadata"]["instance"] == runner.settings.runner_id)
        assert info["name"] == SERVICE and "scripted" in info["metadata"]["agents"].split(",")
        endpoints = {e["name"]: e for e in info["endpoints"]}
        assert endpoints["ping"]["subject"] == subjects.RUN_PING
        assert endpoints["ping"]["queue_group"] == "runner"  # one runner answers a ping
        assert endpoints["info"]["subject"] == subjects.RUN_INFO
        assert endpoints["info"]["queue_group"] == f"runner-{info['id']}"  # its own: every runner answers
        pinged = await nc.request(f"$SRV.PING.{SERVICE}.{info['id']}", b"", timeout=5)
        assert msgspec.json.decode(pinged.data)["metadata"]["instance"] == runner.settings.runner_id

        async def counts() -> dict[str, tuple[int, int]]:
            stats = await nc.request(f"$SRV.STATS.{SERVICE}.{info['id']}", b"", timeout=5)
            return {
                e["name"]: (e["num_requests"], e["num_errors"])
                for e in msgspec.json.decode(stats.data)["endpoints"]
            }

        before = await counts()
        for _ in range(3):
            answers = await gather(
                nc,
                subjects.RUN_INFO,
                encode(Ping()),
                lambda a: any(x["instance"] == runner.settings.runner_id for x in a),
            )
            ours = next(a for a in answers if a["instance"] == runner.settings.runner_id)
            assert msgspec.convert(ours, RunnerInfo).capacity == runner.settings.max_concurrency
        ours_pinged = 0
        for _ in range(5):  # one runner answers each: other runners of the session may take some
            reply = await nc.request(subjects.RUN_PING, encode(Ping()), timeout=5)
            pong = msgspec.json.decode(reply.data, type=Pong)
            assert pong.service == "runner"
            ours_pinged += pong.instance == runner.settings.runner_id
        after = await counts()
        assert after["info"] == (before["info"][0] + 3, 0)
        assert after["ping"] == (before["ping"][0] + ours_pinged, 0)


async def test_agent_discovery_reaches_every_runner(nats_url: str, nc: Any) -> None:
    """The gateway's discovery round (one request on `run.runners.info`) hears from every runner,
    not from one of a queue group."""
    async with running(settings(nats_url)) as one, running(settings(nats_url)) as two:
        ids = {one.settings.runner_id, two.settings.runner_id}
        discovery = Discovery(SimpleNamespace(nc=nc), window_s=1.0)  # type: ignore[arg-type]
        for _ in range(3):
            answers = await discovery.round()
            assert ids <= {a.instance for a in answers}
        # The ping is answered by one of them (one queue group), as /ready needs.
        pong = msgspec.json.decode(
            (await nc.request(subjects.RUN_PING, encode(Ping()), timeout=5)).data, type=Pong
        )
        assert pong.service == "runner"
