"""Bearer tokens, who they belong to, a short-lived lookup cache and per-token rate limits.

A token is ``zs_<token id>_<secret>``; the secret is ``secrets.token_urlsafe(32)`` (256 random bits) and only
its SHA-256 is stored. A fast hash is the right tool here: a password hash (bcrypt, scrypt, argon2) slows down
guessing a *low-entropy* secret, but nobody can enumerate 2**256 secrets however fast the hash is, and a fast
hash keeps authentication off the hot path's budget. Comparison is constant-time (``hmac.compare_digest``).

    >>> token_id, secret, token = new_token()
    >>> parse_token(token) == (token_id, secret)
    True
    >>> parse_token("zs_abc"), parse_token("Bearer x")
    (None, None)
    >>> bucket = RateLimiter(rate_per_s=1, burst=2)
    >>> [bucket.wait_s("t", now=0.0) for _ in range(3)]
    [0.0, 0.0, 1.0]

Lookups are cached per process for a few seconds (the load target cannot afford a database read per request).
Revoking a token (or disabling a user) drops every process's cache within a fraction of a second: the change
feed says so (a trigger writes a ``token``/``user`` change; :class:`api.store.Follower` calls
:meth:`Authenticator.invalidate`); the TTL only bounds how stale a cache can be while the database is away.
``last_used_at`` is written at most once a minute per token.

Rate limits are token buckets per token: in process memory (:class:`RateLimiter`) when one API process runs,
in Redis (:class:`RedisRateLimiter`, the same bucket for every process) when several do.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlmodel import Session

from api.db import write_session
from api.enums import Role
from api.tables import API_TOKENS, USERS

log = logging.getLogger("zhisuan.api")
PREFIX = "zs_"
LAST_USED_RESOLUTION_S = 60.0
_MAX_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token and the user (or node) it speaks for."""

    token_id: str
    role: Role
    tenant: str | None
    user_id: str | None
    node_id: str | None = None
    expires_at: float | None = None

    @property
    def is_center_admin(self) -> bool:
        return self.role is Role.CENTER_ADMIN

    @property
    def is_tenant_admin(self) -> bool:
        return self.role is Role.TENANT_ADMIN

    @property
    def is_node(self) -> bool:
        return self.role is Role.NODE_AGENT


class AuthError(Exception):
    """The token is missing, malformed, unknown, expired or revoked (the message says which, for the caller)."""


def new_token() -> tuple[str, str, str]:
    """``(token id, secret, token)``; the id has no ``_`` so the token splits unambiguously."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"{PREFIX}{token_id}_{secret}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX):
        return None
    token_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not token_id or not secret or len(token) > 200:
        return None
    return token_id, secret


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Authenticator:
    """Token lookups against the database, cached per process for ``ttl_s`` seconds (negatives too)."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        # sha256(token) -> (principal or error message, cached until); keyed by a digest so a cache hit means
        # the whole token matched, and the dict never holds a usable token.
        self._cache: dict[bytes, tuple[Principal | str, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str, now: float) -> Principal | None:
        """The cached principal for ``token``; raises :class:`AuthError` for a cached refusal; None on a miss."""
        entry = self._cache.get(hashlib.sha256(token.encode()).digest())
        if entry is None or entry[1] < now:
            return None
        found = entry[0]
        if isinstance(found, str):
            raise AuthError(found)
        if found.expires_at is not None and found.expires_at <= now:
            raise AuthError("the token has expired; create a new one (zhisuan admin token create)")
        return found

    def lookup(self, token: str, now: float | None = None) -> Principal:
        """Authenticate against the database (blocking) and cache the answer."""
        now = time.time() if now is None else now
        key = hashlib.sha256(token.encode()).digest()
        try:
            principal = self._lookup(token, now)
        except AuthError as err:
            self._put(key, str(err), now)
            raise
        self._put(key, principal, now)
        return principal

    def authenticate(self, token: str, now: float | None = None) -> Principal:
        now = time.time() if now is None else now
        return self.cached(token, now) or self.lookup(token, now)

    def invalidate(self) -> None:
        """Forget every cached lookup (after a revocation or a user being disabled in this process)."""
        with self._lock:
            self._cache.clear()

    def _put(self, key: bytes, value: Principal | str, now: float) -> None:
        with self._lock:
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[key] = (value, now + self.ttl_s)

    def _lookup(self, token: str, now: float) -> Principal:
        parsed = parse_token(token)
        if parsed is None:
            raise AuthError("the token is malformed; tokens look like zs_<id>_<secret>")
        token_id, secret = parsed
        statement = (
            select(API_TOKENS, USERS.c.disabled.label("user_disabled"))
            .select_from(API_TOKENS.outerjoin(USERS, USERS.c.id == API_TOKENS.c.user_id))
            .where(API_TOKENS.c.id == token_id)
        )
        with self.engine.connect() as conn:
            row: Any = conn.execute(statement).first()
        # Compare even when the id is unknown, so timing does not tell known ids from unknown ones.
        stored = row.secret_hash if row is not None else "0" * 64
        if not hmac.compare_digest(hash_secret(secret), stored) or row is None:
            raise AuthError("the token is not valid; check it, or log in again")
        if row.revoked_at is not None:
            raise AuthError("the token was revoked; create a new one")
        if row.expires_at is not None and row.expires_at <= now:
            raise AuthError("the token has expired; create a new one (zhisuan admin token create)")
        if row.user_disabled:
            raise AuthError("the user of this token is disabled")
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION_S:
            self._touch(token_id, now)
        return Principal(
            token_id=row.id,
            role=Role(row.role),
            tenant=row.tenant,
            user_id=row.user_id,
            node_id=row.node_id,
            expires_at=row.expires_at,
        )

    def _touch(self, token_id: str, now: float) -> None:
        # Best effort: a busy database must not turn a valid request into an error.
        try:
            with write_session(self.engine) as session:
                session.execute(update(API_TOKENS).where(API_TOKENS.c.id == token_id).values(last_used_at=now))
        except Exception:
            pass


class RateLimiter:
    """Token buckets per key (``rate_per_s`` refill, ``burst`` capacity), in process memory."""

    shared = False

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait_s(self, key: str, now: float | None = None) -> float:
        """0 if a request may go now (and take a token), else how long until one is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > _MAX_CACHE:
            self._buckets.clear()
        return (1.0 - tokens) / self.rate

    async def check(self, key: str) -> float:
        """:meth:`wait_s`, with the signature of the shared limiter."""
        return self.wait_s(key)


#: GCRA (the token bucket as one "theoretical arrival time" per key), on the Redis server's clock so that API
#: processes on several machines agree. A number comes back as a string: Redis truncates Lua numbers to integers.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - now - burst * interval
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(burst * interval * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """The same token buckets as :class:`RateLimiter`, kept in Redis so that every API process draws from one
    bucket per token (one round trip per request). If Redis does not answer, requests are let through and a
    warning is logged (at most every 10 s): a limiter outage must not become an API outage."""

    shared = True

    def __init__(self, url: str, rate_per_s: float, burst: float, prefix: str = "zhisuan:rate:") -> None:
        import redis.asyncio

        self.url = url
        self.rate = rate_per_s
        self.burst = burst
        self.prefix = prefix
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(_GCRA)
        self._warned = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def check(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        try:
            wait = await self._script(keys=[self.prefix + key], args=[1.0 / self.rate, self.burst])
        except Exception as err:  # redis.RedisError, OSError: fail open
            now = time.monotonic()
            if now - self._warned > 10:
                self._warned = now
                log.warning("rate limits not enforced: Redis at %s does not answer (%s)", self.url, err)
            return 0.0
        return float(wait)

    async def close(self) -> None:
        await self._client.aclose()


def issue_token(
    session: Session | Connection,
    *,
    role: Role,
    tenant: str | None,
    user_id: str | None,
    node_id: str | None = None,
    name: str = "",
    expires_in_s: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Insert a new token (in the caller's transaction); the answer carries the secret, once."""
    now = time.time() if now is None else now
    token_id, secret, token = new_token()
    expires_at = now + expires_in_s if expires_in_s is not None else None
    session.execute(
        insert(API_TOKENS).values(
            id=token_id,
            secret_hash=hash_secret(secret),
            user_id=user_id,
            node_id=node_id,
            role=role.value,
            tenant=tenant,
            name=name,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return {
        "id": token_id,
        "token": token,
        "user": user_id,
        "tenant": tenant,
        "role": role.value,
        "node_id": node_id,
        "name": name,
        "expires_at": expires_at,
    }
