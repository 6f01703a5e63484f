"""`/api/webhooks` (admin): where run events are POSTed, and what became of each delivery.

A webhook names a URL, the event types it wants (the contract's, or `*` for all) and a secret that
signs each delivery (`X-Agentbus-Signature: sha256=<HMAC-SHA256 of the body>`). The secret is taken
here and stored for signing; no answer, log, error, event or audit entry carries it. The deliveries
themselves are made by the store with the events (`store/webhooks.py`) and sent by
`deliveries.py`.

URLs: `http` or `https` with a host, no user or password in them (they would be shown in every
answer), no fragment. Any host is allowed, loopback and private addresses too: only admins make
webhooks, and what the gateway may reach is the network's policy (`docs/security.md`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import NotFoundException, ValidationException
from msgspec import Meta

from agentbus.contracts.events import EVENT_TYPES
from agentbus.gateway.access import needs
from agentbus.gateway.errors import BODY, WRITE, documented
from agentbus.gateway.params import Cursor, Limit, Skip, checked_cursor, page_input, whole_numbers
from agentbus.gateway.people import audit, identity_of, now
from agentbus.gateway.schemas import accepts
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.webhooks import ALL

EventType = Literal[(*EVENT_TYPES, ALL)]  # type: ignore[valid-type]
DeliveryStatus = Literal["pending", "delivered", "failed"]
SECRET_PATTERN = r"^[!-~]+$"  # visible ASCII, no spaces


# http(s), a host name or IPv4 address, a port 1..65535, then a path and query of visible ASCII; no
# user or password, no fragment. IPv6 literals are left out (name the host): the schema says exactly
# what is accepted, so a URL it allows is never refused.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+(:{_PORT})?([/?][!\"$-~]*)?$"


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str,
        Meta(
            min_length=8,
            max_length=2048,
            pattern=URL_PATTERN,
            description="http(s)://host[:port][/path][?query]: where deliveries are POSTed",
        ),
    ]
    events: Annotated[
        list[EventType],
        Meta(
            min_length=1,
            max_length=len(EVENT_TYPES) + 1,
            description="the run event types to deliver; `*`: all of them",
        ),
    ]
    secret: Annotated[
        str,
        Meta(
            min_length=16,
            max_length=256,
            pattern=SECRET_PATTERN,
            description="signs each delivery (HMAC-SHA256); never shown again",
        ),
    ]


class Webhook(msgspec.Struct, kw_only=True):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    created_by: dict[str, Any] | None = None


class WebhookPage(msgspec.Struct):
    items: list[Webhook]
    total: int
    skip: int
    limit: int
    next_cursor: str | None = None


class Delivery(msgspec.Struct, kw_only=True):
    id: str
    webhook_id: str
    event_type: str
    run_id: str
    task_id: str
    seq: int
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryPage(msgspec.Struct):
    items: list[Delivery]
    total: int
    skip: int
    limit: int
    next_cursor: str | None = None


def checked_url(url: str) -> str:
    """The URL, if deliveries can go to it; else a 400 saying why (never echoing its query). The
    schema's pattern already holds it to this; these checks stand on their own all the same."""
    if url.endswith("\n"):  # what a pattern's `$` lets through (it matches before a final newline)
        url = url[:-1]
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValidationException("`url` must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not one
    except ValueError:
        raise ValidationException("`url` is not a URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationException("`url` must be http:// or https://")
    if not parts.hostname:
        raise ValidationException("`url` must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationException("`url` must not carry a user or password (use the secret)")
    if parts.fragment or url.endswith("#"):
        raise ValidationException("`url` must not have a fragment")
    if port == 0:
        raise ValidationException("`url` must not name port 0")
    return url


def _events(given: list[str]) -> list[str]:
    return [ALL] if ALL in given else sorted(set(given))


def _webhook_out(row: Any) -> Webhook:
    return Webhook(
        id=row.id, url=row.url, events=list(row.events), created_at=row.created_at, created_by=row.created_by
    )


def _delivery_out(row: Any) -> Delivery:
    return Delivery(**{f: getattr(row, f) for f in Delivery.__struct_fields__})


class WebhookController(Controller):
    path = "/api/webhooks"
    tags = ["webhooks"]
    opt = needs("admin")

    @post(
        "/",
        summary="Create a webhook (the secret is never shown again)",
        responses=documented(*BODY),
        operation_class=accepts(WebhookCreate),
    )
    async def create(self, data: WebhookCreate, store: GatewayStore, request: Request) -> Webhook:  # type: ignore[type-arg]
        user = identity_of(request)
        webhook_id = uuid.uuid4().hex
        events = _events(data.events)
        values = {
            "id": webhook_id,
            "url": checked_url(data.url),
            "events": events,
            "secret": data.secret,
            "created_by": {"id": user.id, "name": user.name},
            "created_at": now(),
        }
        # Field names and event types only: not the URL (its query may hold a token), not the secret.
        entry = audit(
            user, "webhook.create", "webhook", webhook_id, fields=["url", "events", "secret"], events=events
        )
        return _webhook_out(await store.webhooks.create(values, entry))

    @get("/", summary="List webhooks, newest first", responses=documented(503), before_request=whole_numbers)
    async def list_page(
        self, store: GatewayStore, skip: Skip = 0, limit: Limit = 10, cursor: Cursor = None
    ) -> WebhookPage:
        with page_input():
            page = await store.webhooks.page(skip, limit, checked_cursor(cursor, skip))
        return WebhookPage([_webhook_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor)

    @get("/{webhook_id:str}", summary="A webhook (never its secret)", responses=documented(404, 503))
    async def get_one(self, webhook_id: str, store: GatewayStore) -> Webhook:
        row = await store.webhooks.get(webhook_id)
        if row is None:
            raise NotFoundException(f"webhook {webhook_id} not found")
        return _webhook_out(row)

    @delete(
        "/{webhook_id:str}",
        status_code=204,
        summary="Delete a webhook and its deliveries (pending ones are not sent)",
        responses=documented(404, *WRITE),
    )
    async def remove(self, webhook_id: str, store: GatewayStore, request: Request) -> None:  # type: ignore[type-arg]
        entry = audit(identity_of(request), "webhook.delete", "webhook", webhook_id)
        if not await store.webhooks.delete(webhook_id, entry):
            raise NotFoundException(f"webhook {webhook_id} not found")

    @get(
        "/{webhook_id:str}/deliveries",
        summary="A webhook's deliveries, newest first",
        responses=documented(404, 503),
        before_request=whole_numbers,
    )
    async def deliveries(
        self,
        webhook_id: str,
        store: GatewayStore,
        status: DeliveryStatus | None = None,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
    ) -> DeliveryPage:
        if await store.webhooks.get(webhook_id) is None:
            raise NotFoundException(f"webhook {webhook_id} not found")
        with page_input():
            page = await store.webhooks.deliveries(
                webhook_id, status, skip, limit, checked_cursor(cursor, skip)
            )
        return DeliveryPage([_delivery_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor)
