"""Who is asking: identities, roles, and the credentials that prove them.

Three kinds of credential, all sent as `Authorization: Bearer <credential>` (or `?token=` on
streams):
- the admin token (`AGENTBUS_ADMIN_TOKEN`, formerly `AGENTBUS_API_TOKEN`): the first admin;
- API keys made by an admin: `ab_<key id>_<secret>`, stored only as HMAC-SHA256(salt, secret);
  a key read from the database is trusted for at most `KEY_CACHE_S`, so a revocation reaches every
  gateway copy within a second without a message between them;
- JWTs signed by an identity provider: verified against `JWT_KEY` or the keys at `JWT_JWKS_URL`
  (signature, `exp`, `iss`, `aud`), the role read from `JWT_ROLE_CLAIM`.
With none of them configured, authentication is off and every request is `LOCAL` (an admin): the
gateway then listens on loopback only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from agentbus.gateway.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "approver", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "approver", "admin")
KEY_CACHE_S = 0.5
_KEY = re.compile(r"ab_([0-9a-f]{32})_([A-Za-z0-9_\-]{20,100})")
_CACHE_MAX = 10_000


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: Role

    def actor(self) -> dict[str, str]:
        """What the audit trail and a decision record about who acted (never a credential)."""
        return {"id": self.id, "name": self.name, "role": self.role}


LOCAL = Identity(id="local", name="local user (authentication off)", role="admin")
ADMIN = Identity(id="admin", name="admin (AGENTBUS_ADMIN_TOKEN)", role="admin")


class Denied(Exception):
    """The credential is not one the gateway accepts; the message says why without quoting it."""


def new_key(key_id: str) -> tuple[str, str, str]:
    """(the key to hand out once, its salt, its hash)."""
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return f"ab_{key_id}_{secret}", salt, key_hash(salt, secret)


def key_hash(salt: str, secret: str) -> str:
    # The secret is 256 random bits: a keyed hash is as strong as a slow KDF here, and costs a
    # microsecond instead of tens of milliseconds.
    return hmac.digest(bytes.fromhex(salt), secret.encode(), "sha256").hex()


# Reads an API key's row by id: (name, role, salt, hash, expires_at, revoked_at) or None.
KeyLookup = Callable[[str], Awaitable[Any]]


class Authenticator:
    def __init__(self, settings: Settings, lookup: KeyLookup) -> None:
        self.on = settings.auth_on
        admin = settings.admin_credential
        self._admin = admin.encode() if admin else None
        self._lookup = lookup
        self._keys: dict[str, tuple[float, Any]] = {}  # key id -> (read at, row or None)
        self._reading: dict[str, asyncio.Future[Any]] = {}  # key id -> its row's read under way
        # Keys proven lately: credential -> (its row's read at, expires at as a Unix time or None,
        # the identity). A hit skips the parse and the hash while the row is fresh (`KEY_CACHE_S`),
        # so a revocation still reaches this copy within a second.
        self._proven: dict[str, tuple[float, float | None, Identity]] = {}
        self._jwt = _JwtVerifier(settings) if (settings.jwt_key or settings.jwt_jwks_url) else None

    async def identify(self, credential: str | None) -> Identity:
        """The identity a credential proves; raises Denied. With authentication off: LOCAL."""
        if not self.on:
            return LOCAL
        if not credential:
            raise Denied("credentials required: send `Authorization: Bearer <key or token>`")
        if self._admin is not None and hmac.compare_digest(credential.encode(), self._admin):
            return ADMIN
        if credential.startswith("ab_"):
            return await self._api_key(credential)
        if self._jwt is not None and credential.count(".") == 2:
            return await self._jwt.verify(credential)
        raise Denied("unknown credential")

    async def _api_key(self, credential: str) -> Identity:
        proven = self._proven.get(credential)
        if proven is not None:
            read_at, expires, identity = proven
            if time.monotonic() - read_at < KEY_CACHE_S and (expires is None or time.time() < expires):
                return identity
            del self._proven[credential]
        match = _KEY.fullmatch(credential)
        if match is None:
            raise Denied("unknown credential")
        key_id, secret = match.groups()
        row = await self._row(key_id)
        if row is None or not hmac.compare_digest(key_hash(row.salt, secret), row.hash):
            raise Denied("unknown credential")
        if row.revoked_at is not None:
            raise Denied("this key was revoked")
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise Denied("this key has expired")
        identity = Identity(id=key_id, name=row.name, role=row.role)
        if len(self._proven) >= _CACHE_MAX:
            self._proven.clear()
        expires = row.expires_at.timestamp() if row.expires_at is not None else None
        # The row's read time (0, at once stale, if a flood of other keys emptied the cache meanwhile).
        self._proven[credential] = (self._keys.get(key_id, (0.0, None))[0], expires, identity)
        return identity

    async def _row(self, key_id: str) -> Any:
        cached = self._keys.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_S:
            return cached[1]
        # One read per key at a time: when a busy key's row goes stale, every request using it
        # waits on the same read (a read each stalled the requests behind them by tens of ms).
        reading = self._reading.get(key_id)
        if reading is None:
            reading = self._reading[key_id] = asyncio.ensure_future(self._read(key_id))
            reading.add_done_callback(lambda _: self._reading.pop(key_id, None))
        return await asyncio.shield(reading)

    async def _read(self, key_id: str) -> Any:
        at = time.monotonic()  # trusted from before the read: never longer than KEY_CACHE_S
        row = await self._lookup(key_id)
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        self._keys[key_id] = (at, row)
        return row

    def forget(self, key_id: str) -> None:
        """This copy revoked the key: stop trusting its cached row at once."""
        self._keys.pop(key_id, None)
        self._proven = {c: p for c, p in self._proven.items() if p[2].id != key_id}


class _JwtVerifier:
    def __init__(self, s: Settings) -> None:
        # Imported only with JWTs configured: PyJWT loads `cryptography` (about 11 MB resident).
        import jwt

        self.jwt = jwt
        self.algorithms = list(s.jwt_algorithms)
        self.issuer = s.jwt_issuer
        self.audience = s.jwt_audience
        self.role_claim = s.jwt_role_claim
        self.name_claim = s.jwt_name_claim
        self.key = s.jwt_key
        self.jwks = jwt.PyJWKClient(s.jwt_jwks_url, cache_keys=True, lifespan=300) if s.jwt_jwks_url else None

    async def verify(self, token: str) -> Identity:
        jwt = self.jwt
        try:
            if self.jwks is not None:
                # The JWKS client fetches over blocking HTTP (cached afterwards): off the loop.
                key: Any = (await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)).key
            else:
                key = self.key
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Denied("the token has expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # The reason names the check that failed (issuer, audience, signature), never the token.
            raise Denied(f"the token was refused: {type(exc).__name__}") from None
        role = _role_of(claims.get(self.role_claim))
        if role is None:
            raise Denied(f"the token names no known role in its `{self.role_claim}` claim")
        sub = str(claims["sub"])[:150]
        name = claims.get(self.name_claim)
        return Identity(id=f"jwt:{sub}", name=str(name)[:200] if name else sub, role=role)


def _role_of(value: Any) -> Role | None:
    for item in value if isinstance(value, list) else [value]:
        if item in ROLES:
            return item  # type: ignore[no-any-return]
    return None
