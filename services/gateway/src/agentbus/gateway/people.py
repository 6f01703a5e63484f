"""The people side of the API: API keys (`/api/keys`), who am I (`/api/me`), and the audit trail
(`/api/audit`).

`Audit` makes the entries every other service writes, each in the transaction of its change (the
store's write methods take `audit=`): who acted (`Identity.actor()`, never a credential), what,
on what. Details hold ids and field names, never a value that could be a secret.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import NotFoundException, ValidationException
from msgspec import Meta

from agentbus.gateway import params
from agentbus.gateway.access import needs
from agentbus.gateway.errors import BODY, WRITE, documented
from agentbus.gateway.identity import LOCAL, Authenticator, Identity, Role, new_key
from agentbus.gateway.params import (
    Cursor,
    Filter,
    Limit,
    Skip,
    checked_cursor,
    instant,
    page_input,
    whole_numbers,
)
from agentbus.gateway.schemas import accepts
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.people import AuditEntry

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def identity_of(request: Request) -> Identity:  # type: ignore[type-arg]
    """The dependency `user`: who sent the request (LOCAL with authentication off)."""
    return request.scope.get("user") or LOCAL


def audit(user: Identity, action: str, target_type: str, target_id: str, **detail: Any) -> AuditEntry:
    return AuditEntry(now(), user.actor(), action, target_type, target_id, detail or None)


async def audit_after(store: GatewayStore, entry: AuditEntry) -> None:
    """Write the entry of a change the gateway's database does not hold, once that change is stored
    and accepted: a run's cancel (stored in the broker's KV) and a metric posted by hand (stored by
    the metrics service, in its own database). No transaction spans the two stores, so the entry
    follows the change, never precedes it: a refused or failed change leaves no entry. Should the
    database fail at this point the change stands without its entry; that is logged (who, what, on
    what) and the request fails (503), so the caller hears that something did not complete."""
    try:
        await store.people.audit(entry)
    except Exception as exc:
        log.error(
            "%s on %s %s by %s stored, but its audit entry could not be written: %s",
            entry.action,
            entry.target_type,
            entry.target_id,
            entry.actor["id"],
            type(exc).__name__,
        )
        raise


# An RFC 3339 time with its offset (msgspec's schema of a datetime leaves the format out: it would
# accept one without an offset, which `KeyController.create` refuses).
Instant = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    role: Role
    expires_at: Instant | None = None  # none: the key never expires


class Key(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None
    created_by: dict[str, Any] | None = None


class NewKey(Key, kw_only=True):
    key: str  # shown here only; stored as a salted hash


class KeyPage(msgspec.Struct):
    items: list[Key]
    total: int
    skip: int
    limit: int
    next_cursor: str | None = None


class Me(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str


class AuditItem(msgspec.Struct, kw_only=True):
    id: str  # opaque, like every id of the API (the database numbers entries; that stays inside)
    at: datetime
    actor: dict[str, Any]
    action: str
    target_type: str | None
    target_id: str | None
    detail: dict[str, Any] | None


class AuditPage(msgspec.Struct):
    items: list[AuditItem]
    total: int
    skip: int
    limit: int
    next_cursor: str | None = None


def _key_out(row: Any) -> Key:
    return Key(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_by=row.created_by,
    )


class KeyController(Controller):
    path = "/api/keys"
    tags = ["identities"]
    opt = needs("admin")

    @post(
        "/",
        summary="Create an API key (the key is in this answer only)",
        responses=documented(*BODY),
        operation_class=accepts(KeyCreate),
    )
    async def create(self, data: KeyCreate, store: GatewayStore, request: Request) -> NewKey:  # type: ignore[type-arg]
        user = identity_of(request)
        if data.expires_at is not None:
            if data.expires_at.tzinfo is None:
                raise ValidationException("`expires_at` must carry a time zone (e.g. a trailing Z)")
            if data.expires_at <= now():
                raise ValidationException("`expires_at` is in the past")
        key_id = uuid.uuid4().hex
        key, salt, digest = new_key(key_id)
        values = {
            "id": key_id,
            "name": data.name,
            "role": data.role,
            "salt": salt,
            "hash": digest,
            "created_by": {"id": user.id, "name": user.name},
            "created_at": now(),
            "expires_at": data.expires_at,
        }
        entry = audit(user, "key.create", "key", key_id, name=data.name, role=data.role)
        row = await store.people.create_key(values, entry)
        return NewKey(**msgspec.structs.asdict(_key_out(row)), key=key)

    @get(
        "/",
        summary="List API keys (never the keys themselves)",
        responses=documented(503),
        before_request=whole_numbers,
    )
    async def list_page(
        self,
        store: GatewayStore,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
        revoked: bool = False,
    ) -> KeyPage:
        with page_input():
            page = await store.people.keys(skip, limit, checked_cursor(cursor, skip), revoked)
        return KeyPage([_key_out(r) for r in page.rows], page.total, skip, limit, page.next_cursor)

    @delete(
        "/{key_id:str}",
        status_code=204,
        summary="Revoke an API key (refused everywhere within a second)",
        responses=documented(404, *WRITE),
    )
    async def revoke(
        self, key_id: str, store: GatewayStore, request: Request, authenticator: Authenticator
    ) -> None:
        if not await store.people.revoke_key(
            key_id, now(), audit(identity_of(request), "key.revoke", "key", key_id)
        ):
            raise NotFoundException(f"key {key_id} not found (or already revoked)")
        authenticator.forget(key_id)


@get(
    "/api/me",
    tags=["identities"],
    summary="Who the credential proves",
    opt=needs(None),
    responses=documented(503),
)
async def me(request: Request) -> Me:  # type: ignore[type-arg]
    user = identity_of(request)
    return Me(id=user.id, name=user.name, role=user.role)


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]
    opt = needs("admin")

    @get(
        "/", summary="The audit trail, newest first", responses=documented(503), before_request=whole_numbers
    )
    async def list_page(
        self,
        store: GatewayStore,
        actor: Filter = None,
        action: Filter = None,
        target_id: Filter = None,
        since: params.Instant = None,
        until: params.Instant = None,
        skip: Skip = 0,
        limit: Limit = 10,
        cursor: Cursor = None,
    ) -> AuditPage:
        filters = {"actor": actor, "action": action, "target_id": target_id}
        with page_input():
            page = await store.people.audit_page(
                filters,
                instant("since", since),
                instant("until", until),
                skip,
                limit,
                checked_cursor(cursor, skip),
            )
        items = [
            AuditItem(
                id=str(r.id),
                at=r.at,
                actor={"id": r.actor_id, "name": r.actor_name, "role": r.actor_role},
                action=r.action,
                target_type=r.target_type,
                target_id=r.target_id,
                detail=r.detail,
            )
            for r in page.rows
        ]
        return AuditPage(items, page.total, skip, limit, page.next_cursor)
