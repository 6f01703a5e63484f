"""Webhook deliveries on both databases: made in the event batch's transaction (once, however often
the batch is stored), claimed by one sender at a time, retried and settled; and the delivery loop
against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from agentbus.contracts import encode
from agentbus.contracts import events as ev
from agentbus.gateway.deliveries import Deliveries
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.people import AuditEntry
from tests.support.gateway_db import engine_with_a_run
from tests.support.receiver import Receiver
from tests.support.waiting import eventually

SECRET = "integration-secret-0123456789"
ACTOR = {"id": "admin", "name": "admin", "role": "admin"}


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[GatewayStore]:
    engine = await engine_with_a_run(database_url, datetime.now(UTC))
    await engine.dispose()
    s = GatewayStore(database_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def webhook(store: GatewayStore, url: str, events: list[str]) -> str:
    webhook_id = uuid.uuid4().hex
    values = {
        "id": webhook_id,
        "url": url,
        "events": events,
        "secret": SECRET,
        "created_at": datetime.now(UTC),
    }
    await store.webhooks.create(
        values, AuditEntry(datetime.now(UTC), ACTOR, "webhook.create", "webhook", webhook_id)
    )
    return webhook_id


def event(cls: type[ev.Event], seq: int, **fields: Any) -> tuple[ev.Event, bytes]:
    e = cls(id=uuid.uuid4().hex, seq=seq, timestamp=datetime.now(UTC), task_id="t", run_id="r", **fields)
    return e, encode(e)


def approval(seq: int) -> tuple[ev.Event, bytes]:
    return event(ev.ApprovalRequired, seq, data=ev.ApprovalRequiredData(plan={"steps": ["a"]}, timeout_s=60))


async def rows(store: GatewayStore, webhook_id: str) -> list[Any]:
    return (await store.webhooks.deliveries(webhook_id, None, 0, 100, None)).rows


async def test_deliveries_are_made_with_their_events_once(store: GatewayStore) -> None:
    wants_approvals = await webhook(store, "http://127.0.0.1:9/a", ["approval_required"])
    wants_all = await webhook(store, "http://127.0.0.1:9/b", ["*"])
    batch = [event(ev.AnalysisStart, 1), approval(2)]
    stored = await store.store_events(batch)
    assert stored.deliveries == 3  # approval_required to both, analysis_start to `*`
    [one] = await rows(store, wants_approvals)
    assert (one.event_type, one.run_id, one.task_id, one.seq, one.status, one.attempts) == (
        "approval_required",
        "r",
        "t",
        2,
        "pending",
        0,
    )
    assert {r.event_type for r in await rows(store, wants_all)} == {"analysis_start", "approval_required"}
    again = await store.store_events(batch)  # redelivered: stored already, no new delivery
    assert again.deliveries == 0
    assert len(await rows(store, wants_all)) == 2


async def test_a_claim_is_one_senders_and_failures_come_back_later(store: GatewayStore) -> None:
    hook = await webhook(store, "http://127.0.0.1:9/a", ["approval_required"])
    await store.store_events([approval(1)])
    now = datetime.now(UTC)
    first, second = await asyncio.gather(store.webhooks.claim(now, 30, 10), store.webhooks.claim(now, 30, 10))
    assert len(first) + len(second) == 1  # two senders at once: one gets it
    [claimed] = first or second
    assert (claimed.url, claimed.secret, claimed.attempts) == ("http://127.0.0.1:9/a", SECRET, 0)
    assert await store.webhooks.claim(now + timedelta(seconds=5), 30, 10) == []  # still claimed
    later = now + timedelta(seconds=1)
    await store.webhooks.settle(
        [
            {
                "b_id": claimed.id,
                "b_status": "pending",
                "b_attempts": 1,
                "b_code": 500,
                "b_error": "HTTP 500",
                "b_next": later,
                "b_delivered": None,
            }
        ]
    )
    [row] = await rows(store, hook)
    assert (row.status, row.attempts, row.last_status_code, row.next_attempt_at) == ("pending", 1, 500, later)
    assert await store.webhooks.claim(now, 30, 10) == []  # not due yet
    [again] = await store.webhooks.claim(later, 30, 10)
    assert again.id == claimed.id and again.attempts == 1
    await store.webhooks.release([again.id])  # a sender stopping mid-round gives it back
    assert [c.id for c in await store.webhooks.claim(later, 30, 10)] == [claimed.id]


async def test_the_loop_signs_retries_and_settles(store: GatewayStore) -> None:
    with Receiver(fail_first=1) as receiver:
        hook = await webhook(store, receiver.url, ["approval_required"])
        await store.store_events([approval(1)])
        clock = [datetime.now(UTC)]
        loop = Deliveries(store, 2.0, 3, 1.0, 5.0, 0.1, 7.0, clock=lambda: clock[0])
        loop.http = httpx.AsyncClient(timeout=2.0)  # no loop task: the rounds are driven here
        try:
            await asyncio.gather(*await loop.round())
            [row] = await rows(store, hook)
            assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 500)
            assert row.next_attempt_at == clock[0] + timedelta(seconds=1)
            assert await loop.round() == [] and len(receiver.requests) == 1  # not due yet
            clock[0] += timedelta(seconds=1)
            await asyncio.gather(*await loop.round())
        finally:
            await loop.http.aclose()
        [row] = await rows(store, hook)
        assert (row.status, row.attempts, row.last_status_code, row.delivered_at) == (
            "delivered",
            2,
            204,
            clock[0],
        )
        assert loop.counts == {"delivered": 1, "retried": 1, "failed": 0}
        request = receiver.requests[-1]
        signature = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-agentbus-signature"] == signature
        body = json.loads(request.body)
        assert (body["webhook_id"], body["delivery_id"], body["event_type"]) == (
            hook,
            row.id,
            "approval_required",
        )


async def test_deleting_a_webhook_deletes_its_deliveries(store: GatewayStore) -> None:
    hook = await webhook(store, "http://127.0.0.1:9/a", ["*"])
    await store.store_events([approval(1)])
    entry = AuditEntry(datetime.now(UTC), ACTOR, "webhook.delete", "webhook", hook)
    assert await store.webhooks.delete(hook, entry)
    assert await rows(store, hook) == []
    assert await store.webhooks.claim(datetime.now(UTC), 30, 10) == []
    assert not await store.webhooks.delete(hook, entry)


async def test_settled_deliveries_are_pruned_after_their_keep(store: GatewayStore) -> None:
    hook = await webhook(store, "http://127.0.0.1:9/a", ["*"])
    await store.store_events([event(ev.AnalysisStart, 1), approval(2)])
    now = datetime.now(UTC)
    [first, _] = await store.webhooks.claim(now, 30, 10)
    outcome = {"b_attempts": 1, "b_code": 204, "b_error": None, "b_next": None, "b_delivered": now}
    await store.webhooks.settle([{**outcome, "b_id": first.id, "b_status": "delivered"}])
    assert await store.webhooks.prune(now - timedelta(days=1)) == 0  # not old enough
    assert await store.webhooks.prune(now + timedelta(seconds=1), batch=1) == 1  # the pending one stays
    assert [r.status for r in await rows(store, hook)] == ["pending"]


async def test_a_slow_receiver_holds_only_its_own_delivery(store: GatewayStore) -> None:
    with Receiver(delay_s=1.5) as slow, Receiver() as fast:
        slow_hook = await webhook(store, slow.url, ["approval_required"])
        fast_hook = await webhook(store, fast.url, ["approval_required"])
        await store.store_events([approval(1)])
        loop = Deliveries(store, 3.0, 3, 1.0, 5.0, 0.1, 7.0)
        loop.http = httpx.AsyncClient(timeout=3.0)
        try:
            attempts = await loop.round()
            assert len(attempts) == 2

            async def fast_delivered() -> bool:
                return [r.status for r in await rows(store, fast_hook)] == ["delivered"]

            await eventually(fast_delivered, timeout=1.0, what="the fast receiver's delivery")
            assert [r.status for r in await rows(store, slow_hook)] == ["pending"]  # still in flight
            await asyncio.gather(*attempts)
        finally:
            await loop.http.aclose()
        assert [r.status for r in await rows(store, slow_hook)] == ["delivered"]


def progress_data(percent: float) -> ev.ProgressData:
    return ev.ProgressData(step=1, total_steps=2, progress_percent=percent, current_phase="executing")


async def test_a_batch_stores_each_new_event_of_a_known_run_once(store: GatewayStore) -> None:
    """The batch's corner cases on both databases: a redelivery inside the batch, an event of a run
    that is gone, an event stored before, a conflicting duplicate, and a replacement."""
    start, progress = (
        event(ev.AnalysisStart, 1),
        event(ev.Progress, 2, data=progress_data(40)),
    )
    ghost = ev.AnalysisStart(
        id=uuid.uuid4().hex, seq=1, timestamp=datetime.now(UTC), task_id="t", run_id="gone"
    )
    stored = await store.store_events([start, progress, start, (ghost, encode(ghost))])
    assert [(e.run_id, e.seq) for e, _ in stored.events] == [("r", 1), ("r", 2)]
    assert stored.conflicts == []
    run = await store.run("r")
    assert (run.last_seq, run.progress) == (2, 40.0)

    other = event(ev.Progress, 2, data=progress_data(70))  # seq 2 again, new content
    again = await store.store_events([other, progress, event(ev.Progress, 3, data=progress_data(50))])
    assert [(e.run_id, e.seq) for e, _ in again.events] == [("r", 3)]  # only the new one
    assert [c.event for c in again.conflicts] == [other[0]]
    assert (await store.run("r")).progress == 50.0

    replaced = await store.replace_event(*other)
    assert [(e.run_id, e.seq) for e, _ in replaced.events] == [("r", 2)]
    logs, total = await store.logs("r", 0, 10)
    assert total == 3 and json.loads(logs[1])["id"] == other[0].id
