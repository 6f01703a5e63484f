"""Sends webhook deliveries: a loop started in the app's lifespan, on every gateway copy.

Each round claims due deliveries for its free slots (`GatewayStore.webhooks.claim`: a copy holds
them for the request timeout plus a margin, so no other copy sends them meanwhile) and POSTs each
to its webhook in a task of its own (`WEBHOOK_TIMEOUT_S` each, at most `SLOTS` at once: a slow
receiver holds its own slots, not the others'), which then writes the attempt's outcome. A 2xx answer
is delivered; anything else (another status, a redirect, a timeout, a refused connection) is
tried again after `WEBHOOK_BACKOFF_S` * 2^(attempts - 1), at most `WEBHOOK_BACKOFF_MAX_S`, until
`WEBHOOK_MAX_ATTEMPTS` attempts have failed: then it is `failed`. The rows are the state, so a
restarted gateway (or another copy, once a dead copy's claim lapses) goes on where it stopped.
Settled deliveries are deleted `WEBHOOK_KEEP_DAYS` after they were made.

The body is the event's stored JSON (what the WebSocket sends) with `webhook_id` and
`delivery_id` added, signed with the webhook's secret. What is kept of a failure is its status
code, or the error's type: never the answer's body, the URL or the secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.webhooks import Claimed

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Agentbus-Signature"
SLOTS = 32  # deliveries being sent at once at most, by one gateway copy
PRUNE_EVERY_S = 600.0  # how often settled deliveries older than WEBHOOK_KEEP_DAYS are deleted


def signature(secret: str, body: bytes) -> str:
    """The `X-Agentbus-Signature` of a body: `sha256=<hex HMAC-SHA256 with the secret>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(delivery: Claimed) -> bytes:
    """The event as stored (and sent on the WebSocket), with `webhook_id` and `delivery_id`."""
    event = msgspec.json.decode(delivery.payload)
    if not isinstance(event, dict):  # stored events are objects; never send something else
        event = {"event": event}
    event["webhook_id"] = delivery.webhook_id
    event["delivery_id"] = delivery.id
    return msgspec.json.encode(event)


def backoff(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds before attempt `attempts + 1`, after `attempts` failed ones."""
    return min(base_s * 2 ** max(attempts - 1, 0), max_s)


class Deliveries:
    def __init__(
        self,
        store: GatewayStore,
        timeout_s: float,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
        poll_s: float,
        keep_days: float = 7.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.poll_s = poll_s
        self.keep = timedelta(days=keep_days)
        self.pruned_at: datetime | None = None
        self.clock = clock
        self.wake = asyncio.Event()
        self.http: httpx.AsyncClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.sending: dict[str, asyncio.Task[None]] = {}  # delivery id -> its attempt under way
        self.backlog = False  # the last claim filled every free slot: more may be due
        # read by the Prometheus exposition: attempts by outcome
        self.counts = {"delivered": 0, "retried": 0, "failed": 0}

    def nudge(self) -> None:
        """The ingest's `on_deliveries`: a batch just made deliveries; send them now, not at the next poll."""
        self.wake.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        unsent = list(self.sending)
        for task in list(self.sending.values()):
            task.cancel()
        await asyncio.gather(*self.sending.values(), return_exceptions=True)
        if unsent:  # stopped mid-attempt: the claims go back now, not when they lapse
            with contextlib.suppress(Exception):
                await self.store.webhooks.release(unsent)
        if self.http is not None:
            await self.http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._prune()
                await self.round()
            except Exception as exc:  # the database is away: next round
                log.warning("webhook deliveries: a round failed (%s)", type(exc).__name__)
            # Woken by new deliveries, or by a slot freed while more may be due; else at the poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)
            self.wake.clear()

    async def _prune(self) -> None:
        """Settled deliveries older than WEBHOOK_KEEP_DAYS go (every copy may: a delete is idempotent)."""
        now = self.clock()
        if self.pruned_at is not None and (now - self.pruned_at).total_seconds() < PRUNE_EVERY_S:
            return
        self.pruned_at = now
        if n := await self.store.webhooks.prune(now - self.keep):
            log.info("webhook deliveries: %d settled ones older than %s deleted", n, self.keep)

    async def round(self) -> list[asyncio.Task[None]]:
        """Claim due deliveries for the free slots and start an attempt at each (its own task, so a
        slow receiver holds its slot only, not the others'); the attempts started."""
        free = SLOTS - len(self.sending)
        if free <= 0:
            return []
        claimed = await self.store.webhooks.claim(self.clock(), self.timeout_s + 10.0, free)
        self.backlog = len(claimed) == free
        started = []
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery), name=f"webhook-delivery-{delivery.id}")
            self.sending[delivery.id] = task
            task.add_done_callback(lambda _, key=delivery.id: self._done(key))
            started.append(task)
        return started

    def _done(self, delivery_id: str) -> None:
        self.sending.pop(delivery_id, None)
        if self.backlog:  # a slot is free and more were due
            self.wake.set()

    async def _attempt(self, delivery: Claimed) -> None:
        code, error = await self._send(delivery)
        try:
            await self.store.webhooks.settle([self._outcome(delivery, code, error)])
        except Exception as exc:  # the claim lapses and the delivery is tried again
            log.warning(
                "webhook delivery %s: its outcome was not stored (%s)", delivery.id, type(exc).__name__
            )

    def _client(self) -> httpx.AsyncClient:
        if self.http is None:
            # Imported with the first delivery, not by every gateway: httpx is about 9 MB resident.
            import httpx

            # Redirects are not followed: a 3xx is an answer that is not a 2xx (retried, then failed).
            self.http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
        return self.http

    async def _send(self, delivery: Claimed) -> tuple[int | None, str | None]:
        """(status code, None) of an answer; (None, why) when there was none."""
        http = self._client()
        import httpx  # loaded by _client(): its exception types

        body = body_of(delivery)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(delivery.secret, body),
            "X-Agentbus-Delivery": delivery.id,
            "X-Agentbus-Event": delivery.event_type,
            "User-Agent": "agentbus-webhooks",
        }
        try:
            r = await http.post(delivery.url, content=body, headers=headers)
            return r.status_code, None
        except httpx.TimeoutException:
            return None, "timed out"
        except Exception as exc:  # refused, reset, bad name...: its type only (no URL, no text)
            return None, type(exc).__name__

    def _outcome(self, d: Claimed, code: int | None, error: str | None) -> dict[str, Any]:
        attempts = d.attempts + 1
        now = self.clock()
        out: dict[str, Any] = {
            "b_id": d.id,
            "b_attempts": attempts,
            "b_code": code,
            "b_next": None,
            "b_delivered": None,
        }
        if code is not None and 200 <= code < 300:
            self.counts["delivered"] += 1
            return {**out, "b_status": "delivered", "b_error": None, "b_delivered": now}
        why = error or f"HTTP {code}"
        if attempts >= self.max_attempts:
            self.counts["failed"] += 1
            log.warning(
                "webhook %s: delivery %s failed for good after %d attempts (%s)",
                d.webhook_id,
                d.id,
                attempts,
                why,
            )
            return {**out, "b_status": "failed", "b_error": why}
        self.counts["retried"] += 1
        delay = backoff(attempts, self.backoff_s, self.backoff_max_s)
        log.info(
            "webhook %s: delivery %s attempt %d: %s; again in %.1fs", d.webhook_id, d.id, attempts, why, delay
        )
        return {**out, "b_status": "pending", "b_error": why, "b_next": now + timedelta(seconds=delay)}
