"""The broker lets no stranger in, and each service only what it needs (agentbus.common.broker).

Against the running system's secured nats-server: every forgery of the hardening review is tried
with the credentials that would be at hand (a runner's, the metrics service's, the gateway's), and
each must be refused by the broker itself, with nothing changed.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from agentbus.common import broker
from agentbus.contracts import RunControl, encode, subjects
from tests.support.client import Api
from tests.support.system import System
from tests.support.waiting import eventually

# What a request the broker dropped looks like to its sender: no answer.
DROPPED = (NatsTimeoutError, NoRespondersError, asyncio.TimeoutError)


class Session:
    """A connection as one user, collecting the errors the broker sends it."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, subject: str) -> None:
        """Wait until the broker has said it refused `subject` to this connection."""

        def said() -> bool:
            # nats-py lowercases the broker's message.
            return any(
                "permissions violation" in e.lower() and f'"{subject.lower()}"' in e.lower()
                for e in self.errors
            )

        await eventually(said, timeout=10, what=f"the broker refusing {subject}")


@asynccontextmanager
async def session(system: System, user: str) -> AsyncIterator[Session]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(system.nats.url, error_cb=on_error, **system.nats.login(user))
    try:
        yield Session(nc, errors)
    finally:
        await nc.close()


async def test_a_connection_without_credentials_is_refused(system: System) -> None:
    with pytest.raises((nats.errors.Error, NoServersError)) as caught:
        await nats.connect(
            system.nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3
        )
    assert "authorization violation" in str(caught.value).lower() or isinstance(caught.value, NoServersError)
    login = system.nats.login("runner")
    with pytest.raises((nats.errors.Error, NoServersError)):
        await nats.connect(
            system.nats.url,
            user="runner",
            password=login["password"] + "x",
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
        )


async def _waiting_run(api: Api) -> dict[str, Any]:
    task = await api.task(require_approval=True, approval_timeout_s=600)
    run = await api.run(task["id"])
    return await api.wait_status(run["id"], "awaiting_approval")


async def test_a_runner_cannot_decide_start_or_cancel_a_run(api: Api, system: System) -> None:
    run = await _waiting_run(api)
    decision = encode(RunControl(kind="approve", run_id=run["id"]))
    async with session(system, "runner") as runner:
        js = runner.nc.jetstream()
        key = subjects.decision_key(run["id"])
        # A forged decision in the bucket, and on the control subject.
        with pytest.raises(DROPPED):  # no acknowledgement comes: the broker dropped it
            await js.publish(f"$KV.{subjects.RUN_STATE_BUCKET}.{key}", decision, timeout=1)
        await runner.refused(f"$KV.{subjects.RUN_STATE_BUCKET}.{key}")
        await runner.nc.publish(subjects.run_control(run["id"]), decision)
        await runner.refused(subjects.run_control(run["id"]))
        await runner.nc.publish(subjects.run_start("scripted"), b"{}")
        await runner.refused(subjects.run_start("scripted"))
        # A forged task.deleted would wipe the task's metrics.
        await runner.nc.publish(subjects.TASK_DELETED, b"{}")
        await runner.refused(subjects.TASK_DELETED)
    async with session(system, "gateway") as gateway:
        kv = await gateway.nc.jetstream().key_value(subjects.RUN_STATE_BUCKET)
        with pytest.raises(NotFoundError):
            await kv.get(subjects.decision_key(run["id"]))
    assert (await api.get_run(run["id"]))["status"] == "awaiting_approval"
    r = await api.http.post(f"/api/runs/{run['id']}/cancel")  # the gateway still may
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("runner", subjects.METRICS_QUERY),  # answering the gateway in place of the metrics service
        ("gateway", subjects.METRICS_QUERY),
        ("metrics", subjects.RUN_INFO),  # advertising agent kinds no runner serves
        ("gateway", subjects.RUN_INFO),
        ("metrics", subjects.RUN_CONTROL_ALL),
        ("runner", "_INBOX_gateway.>"),  # reading the gateway's replies
        ("operator", subjects.RUN_INFO),
        ("runner", "$SRV.INFO.agentbus-metrics"),  # answering for the metrics service in discovery
    ],
)
async def test_who_may_listen(system: System, user: str, subject: str) -> None:
    async with session(system, user) as who:
        await who.nc.subscribe(subject)
        await who.refused(subject)


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("metrics", subjects.run_event("t", "r", "completion")),  # a forged completion
        ("operator", subjects.run_event("t", "r", "completion")),
        ("metrics", subjects.run_wake("scripted")),
        ("operator", subjects.TASK_DELETED),
        ("runner", subjects.EVENTS_LIVE_PREFIX + ".t.r"),  # what stream clients see
    ],
)
async def test_who_may_speak(system: System, user: str, subject: str) -> None:
    async with session(system, user) as who:
        await who.nc.publish(subject, b"{}")
        await who.refused(subject)


STREAM_CHANGES: list[tuple[str, Callable[[Any], Any], str]] = [
    ("delete the events stream", lambda js: js.delete_stream(subjects.EVENTS_STREAM), "STREAM.DELETE"),
    (
        "delete the gateway's consumer",
        lambda js: js.delete_consumer(subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER),
        "CONSUMER.DELETE",
    ),
    ("purge the work queue", lambda js: js.purge_stream(subjects.RUN_COMMANDS_STREAM), "STREAM.PURGE"),
]


@pytest.mark.parametrize("user", ["gateway", "runner", "metrics", "operator"])
@pytest.mark.parametrize(("what", "change", "api_call"), STREAM_CHANGES, ids=[c[0] for c in STREAM_CHANGES])
async def test_no_service_may_delete_streams_or_consumers(
    system: System, user: str, what: str, change: Callable[[Any], Any], api_call: str
) -> None:
    async with session(system, user) as who:
        with pytest.raises(DROPPED):  # no answer: the broker dropped the request
            await asyncio.wait_for(change(who.nc.jetstream(timeout=1)), 3)
        await eventually(
            lambda: any(api_call.lower() in e.lower() for e in who.errors),
            timeout=10,
            what=f"the broker refusing {what}",
        )
    async with session(system, "operator") as operator:
        js = operator.nc.jetstream()
        assert (await js.stream_info(subjects.EVENTS_STREAM)).config.name == subjects.EVENTS_STREAM
        await js.consumer_info(subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER)


async def test_a_runner_cannot_change_a_stream(system: System) -> None:
    async with session(system, "runner") as runner:
        js = runner.nc.jetstream(timeout=1)
        info = await js.stream_info(subjects.EVENTS_STREAM)
        config = info.config
        config.max_msgs = 1  # would throw every stored event away
        with pytest.raises(DROPPED):
            await js.update_stream(config)
        await runner.refused(f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}")
        assert (await js.stream_info(subjects.EVENTS_STREAM)).config.max_msgs in (None, -1)


@pytest.mark.parametrize("user", ["metrics", "runner", "operator"])
async def test_no_service_may_redirect_the_gateways_consumer(system: System, user: str) -> None:
    """Changing `gateway-events` (its deliver subject, its filter) would take the events from the
    gateway: only the gateway may create or change its own consumer."""
    async with session(system, "operator") as operator:
        before = await operator.nc.jetstream().consumer_info(
            subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER
        )
    async with session(system, user) as who:
        config = copy.copy(before.config)
        config.deliver_subject = f"{broker.inbox_prefix(user)}.stolen"
        with pytest.raises(DROPPED):
            await who.nc.jetstream(timeout=1).add_consumer(subjects.EVENTS_STREAM, config)
        await eventually(
            lambda: any(
                "consumer.create" in e.lower() or "consumer.durable.create" in e.lower() for e in who.errors
            ),
            timeout=10,
            what="the broker refusing the change",
        )
    async with session(system, "operator") as operator:
        after = await operator.nc.jetstream().consumer_info(
            subjects.EVENTS_STREAM, subjects.GATEWAY_EVENTS_CONSUMER
        )
    assert after.config.deliver_subject == before.config.deliver_subject


async def test_an_operator_sees_the_runners_in_micro_discovery(system: System) -> None:
    """The runner answers nats.micro discovery on the secured broker (`nats micro info agentbus-runner`
    as the operator): its endpoints, and their request counts."""
    async with session(system, "operator") as operator:
        reply = await operator.nc.request(f"$SRV.INFO.{subjects.RUNNER_SERVICE}", b"", timeout=5)
        info = json.loads(reply.data)
        assert {e["name"]: e["subject"] for e in info["endpoints"]} == {
            "ping": subjects.RUN_PING,
            "info": subjects.RUN_INFO,
        }
        reply = await operator.nc.request(
            f"$SRV.STATS.{subjects.RUNNER_SERVICE}.{info['id']}", b"", timeout=5
        )
        stats = {e["name"]: e for e in json.loads(reply.data)["endpoints"]}
        assert stats["info"]["num_errors"] == 0 and stats["ping"]["num_errors"] == 0
        assert not operator.errors
