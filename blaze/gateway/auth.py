"""Who is calling: API keys (stored hashed in Redis) and optional JWT bearer tokens.

A key looks like ``bz_<key id>_<secret>``. Only the SHA-256 of the secret is stored, beside
the key's name, tenant, scopes, limits and expiry, in ``{ns}:gw:key:<key id>``. The secret is
256 random bits, so a fast hash is enough (a slow password hash protects guessable secrets;
nothing here is guessable) and lets every request be checked without a measurable cost.
A replica trusts a key it looked up for ``gateway.key_cache_s`` seconds: a revocation takes
effect on every replica within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import redis
from cachetools import TTLCache

from pipelines.errors import ConfigError
from pipelines.settings import BlazeSettings, GatewaySettings

SCOPES = ("submit", "read", "admin", "dashboard")  # dashboard: read-only operator view
KEY_PREFIX = "bz_"
_KEY_RE = re.compile(r"^bz_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: which tenant it acts for, what it may do, its limits."""

    key_id: str
    name: str
    tenant: str
    scopes: frozenset[str]
    requests_per_s: float
    jobs_per_min: int
    max_open_jobs: int

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def owns(self, owner: str | None) -> bool:
        """Whether this caller may see a thing owned by ``owner`` (admins see everything)."""
        return "admin" in self.scopes or (owner is not None and owner == self.tenant)

    def audit(self) -> dict[str, str]:
        return {"key_id": self.key_id, "name": self.name, "tenant": self.tenant}


@dataclass(frozen=True)
class KeyRecord:
    """What is stored of a key (never its secret)."""

    key_id: str
    name: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    requests_per_s: float | None = None
    jobs_per_min: int | None = None
    max_open_jobs: int | None = None
    digest: str = field(default="", repr=False)

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "digest"}
        out["scopes"] = list(self.scopes)
        return out


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """``submit,read`` as a tuple of known scopes; ``ConfigError`` naming an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)}; got {text!r}")
    return scopes


def text_of(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """API keys of one namespace in Redis."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis) -> None:
        self.gw = settings.gateway
        self.client = client
        self.prefix = f"{settings.namespace}:gw:key:"
        self.index = f"{settings.namespace}:gw:keys"
        self._cache: TTLCache[str, KeyRecord | None] = TTLCache(
            maxsize=10_000, ttl=max(self.gw.key_cache_s, 0.001)
        )

    def create(
        self,
        name: str,
        scopes: str | Iterable[str],
        *,
        tenant: str | None = None,
        expires_s: float | None = None,
        requests_per_s: float | None = None,
        jobs_per_min: int | None = None,
        max_open_jobs: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the key itself (shown once, never stored)."""
        for what, value in (("name", name), ("tenant", tenant or name)):
            if not NAME_RE.match(value):
                raise ConfigError(
                    f"key {what} {value!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
        for what, number in (
            ("rate", requests_per_s),
            ("jobs per minute", jobs_per_min),
            ("max open jobs", max_open_jobs),
        ):
            if number is not None and not number > 0:
                raise ConfigError(f"{what} must be > 0, got {number}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        record = KeyRecord(
            key_id=key_id,
            name=name,
            tenant=tenant or name,
            scopes=parse_scopes(scopes),
            created_at=now,
            expires_at=now + expires_s if expires_s else None,
            requests_per_s=requests_per_s,
            jobs_per_min=jobs_per_min,
            max_open_jobs=max_open_jobs,
            digest=_digest(secret),
        )
        body: dict[str | bytes, str | bytes] = {
            k: json.dumps(v) for k, v in record.__dict__.items()
        }
        pipe = self.client.pipeline()
        pipe.hset(self.prefix + key_id, mapping=body)  # type: ignore[arg-type]
        pipe.sadd(self.index, key_id)
        pipe.execute()
        return record, f"{KEY_PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        raw = self.client.hgetall(self.prefix + key_id)
        if not raw:
            return None
        data = {text_of(k): json.loads(v) for k, v in raw.items()}
        data["scopes"] = tuple(data["scopes"])
        return KeyRecord(**data)

    def records(self) -> list[KeyRecord]:
        ids = sorted(text_of(m) for m in self.client.smembers(self.index))
        found = [self.get(i) for i in ids]
        return sorted((r for r in found if r), key=lambda r: r.created_at)

    def revoke(self, ref: str) -> list[str]:
        """Delete the key with this id, or every key with this name; returns the ids."""
        ids = [r.key_id for r in self.records() if ref in (r.key_id, r.name)]
        if ids:
            pipe = self.client.pipeline()
            pipe.delete(*[self.prefix + i for i in ids])
            pipe.srem(self.index, *ids)
            pipe.execute()
        for i in ids:
            self._cache.pop(i, None)
        return ids

    def verify(self, token: str) -> Principal | None:
        """The principal of a presented key, or None if it is unknown, revoked or expired."""
        match = _KEY_RE.match(token)
        if not match:
            return None
        key_id, secret = match.groups()
        if key_id in self._cache:
            record = self._cache[key_id]
        else:
            record = self._cache[key_id] = self.get(key_id)
        if record is None or not hmac.compare_digest(record.digest, _digest(secret)):
            return None
        if record.expires_at is not None and time.time() >= record.expires_at:
            return None
        return Principal(
            key_id=record.key_id,
            name=record.name,
            tenant=record.tenant,
            scopes=frozenset(record.scopes),
            requests_per_s=record.requests_per_s or self.gw.requests_per_s,
            jobs_per_min=record.jobs_per_min or self.gw.jobs_per_min,
            max_open_jobs=record.max_open_jobs or self.gw.max_open_jobs,
        )


class TokenVerifier:
    """JWT bearer tokens: HS256 with a shared secret, or RS256 with a PEM key or JWKS file."""

    def __init__(self, gw: GatewaySettings) -> None:
        self.gw = gw
        self._jwks: jwt.PyJWKSet | None = None
        self._key: Any = None
        self.algorithm = ""
        if gw.jwt_public_key_file is not None:
            self.algorithm = "RS256"
            self._load_public(gw.jwt_public_key_file)
        elif gw.jwt_secret is not None:
            self.algorithm = "HS256"
            self._key = gw.jwt_secret.get_secret_value()

    def _load_public(self, path: Path) -> None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"BLAZE_GATEWAY__JWT_PUBLIC_KEY_FILE {path}: {exc.strerror}"
            ) from None
        try:
            if text.lstrip().startswith("{"):
                self._jwks = jwt.PyJWKSet.from_json(text)
            else:
                self._key = text  # PEM, parsed by PyJWT when it decodes
        except (jwt.PyJWTError, ValueError) as exc:
            raise ConfigError(f"BLAZE_GATEWAY__JWT_PUBLIC_KEY_FILE {path}: {exc}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.algorithm)

    def verify(self, token: str) -> Principal:
        """The principal a token names; ``jwt.PyJWTError`` (a safe message) if it is invalid."""
        key = self._key
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            matches = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if not matches:
                raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS file")
            key = matches[0].key
        claims = jwt.decode(
            token,
            key,
            algorithms=[self.algorithm],
            audience=self.gw.jwt_audience,
            issuer=self.gw.jwt_issuer,
            options={"require": ["exp", self.gw.jwt_tenant_claim]},
        )
        raw = claims.get(self.gw.jwt_scopes_claim, "")
        names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        scopes = frozenset(s for s in names if s in SCOPES)
        tenant = str(claims[self.gw.jwt_tenant_claim])
        if not NAME_RE.match(tenant):
            raise jwt.InvalidTokenError(f"claim {self.gw.jwt_tenant_claim!r} is not a tenant name")
        return Principal(
            key_id=f"jwt:{tenant}",
            name=tenant,
            tenant=tenant,
            scopes=scopes,
            requests_per_s=self.gw.requests_per_s,
            jobs_per_min=self.gw.jobs_per_min,
            max_open_jobs=self.gw.max_open_jobs,
        )


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")
