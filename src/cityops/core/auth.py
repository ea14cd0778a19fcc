"""Users, roles, bearer tokens, permissions and data scopes.

Roles (issue "Foundation" §7, DESIGN §8 "Roles"): ``citizen``, ``grid_worker`` (监督员/网格员:
reports and on-site checks), ``handler`` (承办部门), ``dispatcher`` (指挥中心), ``supervisor``
(监督中心: 受理, 立案, 核查结案), ``analyst``, ``admin``, and ``monitor`` (lifeline monitoring
centre operator).

Every ``/api/v1`` route declares one permission through :func:`require`; the table
:data:`PERMISSIONS` says which roles hold it, so one screen answers "who may do what".
Passwords are argon2id hashes; tokens are HS256 JWTs signed with the database's key.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from cityops.core.db import Database
from cityops.core.errors import Forbidden, Unauthorized, ValidationFailed
from cityops.core.models import User, UserRole, kept_value

ROLES: tuple[str, ...] = (
    "citizen",
    "grid_worker",
    "handler",
    "dispatcher",
    "supervisor",
    "analyst",
    "admin",
    "monitor",
)
STAFF = frozenset(r for r in ROLES if r != "citizen")

#: permission → roles that hold it. ``public`` needs no sign-in; ``signed_in`` any role.
PERMISSIONS: dict[str, frozenset[str]] = {
    "public": frozenset(),
    "signed_in": frozenset(ROLES),
    "base:read": frozenset(ROLES),
    "base:write": frozenset({"admin"}),
    "base:import": frozenset({"admin"}),
    "grids:manage": frozenset({"admin"}),
    "geocode": STAFF,
    "users:read": frozenset({"admin", "supervisor", "dispatcher"}),
    "users:manage": frozenset({"admin"}),
    "audit:read": frozenset({"admin", "supervisor"}),
}


def register_permissions(table: dict[str, Iterable[str]]) -> None:
    """Let a domain declare its permissions (each domain keeps its table in
    ``<domain>/permissions.py``); a name may be declared once, with known roles only."""
    for name, roles in table.items():
        roles = frozenset(roles)
        unknown = roles - set(ROLES)
        if unknown:
            raise ValueError(f"permission {name}: unknown roles {sorted(unknown)}")
        if name in PERMISSIONS and PERMISSIONS[name] != roles:
            raise ValueError(f"permission {name} is declared twice with different roles")
        PERMISSIONS[name] = roles


_hasher = PasswordHasher()
ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValidationFailed(
            "Password too short: use at least 8 characters.",
        )
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Principal:
    """The caller of a request: who, which roles, which department, which data scope."""

    username: str
    roles: frozenset[str]
    department: str | None = None
    scope: str = ""
    user_id: int | None = None
    display_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def has(self, permission: str) -> bool:
        allowed = PERMISSIONS[permission]
        return permission == "public" or bool(self.roles & allowed)

    def in_scope(self, code: str | None) -> bool:
        """Data scope (数据权限): a division-code prefix; empty scope sees the whole city."""
        return not self.scope or (code or "").startswith(self.scope)


ANONYMOUS = Principal(username="anonymous", roles=frozenset())


def signing_key(db: Database, configured: str | None) -> str:
    """The configured key, else the one kept in the database (generated on first use)."""
    if configured:
        return configured
    with db.write() as session:
        return kept_value(session, "secret_key", lambda: secrets.token_urlsafe(48))


def issue_token(user: User, key: str, minutes: int) -> str:
    now = dt.datetime.now(dt.UTC)
    payload = {
        "sub": user.username,
        "uid": user.id,
        "roles": user.role_names,
        "iat": int(now.timestamp()),
        "exp": int((now + dt.timedelta(minutes=minutes)).timestamp()),
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.is_active:
        # hash anyway so that timing does not tell which usernames exist
        _hasher.hash(password or "x")
        return None
    if not verify_password(user.password_hash, password):
        return None
    return user


def principal_of(user: User) -> Principal:
    return Principal(
        username=user.username,
        roles=frozenset(user.role_names),
        department=user.department,
        scope=user.scope,
        user_id=user.id,
        display_name=user.display_name,
    )


def create_user(
    session: Session,
    username: str,
    password: str,
    roles: Iterable[str],
    *,
    display_name: str = "",
    department: str | None = None,
    scope: str = "",
) -> User:
    roles = list(dict.fromkeys(roles))
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValidationFailed(
            f"Unknown role(s) {', '.join(unknown)}: choose from {', '.join(ROLES)}."
        )
    if not roles:
        raise ValidationFailed(f"Give at least one role: {', '.join(ROLES)}.")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        from cityops.core.errors import Conflict

        raise Conflict(f"User {username!r} exists already: choose another username.")
    user = User(
        username=username,
        password_hash=hash_password(password),
        display_name=display_name or username,
        department=department,
        scope=scope,
    )
    user.roles = [UserRole(role=r) for r in roles]
    session.add(user)
    session.flush()
    return user


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


#: how long a signed-in caller's roles, department and scope are reused without a database
#: read (seconds). A disabled account or a changed role takes effect within this time on
#: tokens already issued; :func:`forget_principals` applies it at once in this process.
PRINCIPAL_TTL = 30.0
_principals: dict[tuple[int, str, str], tuple[float, Principal]] = {}
_principals_lock = threading.Lock()
_clock = time.monotonic  # tests move it


def forget_principals() -> None:
    """Drop the cached callers (after a user's roles, scope or state change)."""
    with _principals_lock:
        _principals.clear()


def _load_principal(db: Database, uid: Any, sub: Any) -> Principal:
    with db.read() as session:
        user = session.get(User, uid)
        if user is None or not user.is_active or user.username != sub:
            raise Unauthorized("This account no longer exists or is disabled.")
        return principal_of(user)


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """The caller from the bearer token, or :data:`ANONYMOUS`.

    Asynchronous on purpose: on a hit of the principal cache it needs no thread-pool hop and
    no database read (both were ≈ 40 % of a case creation's server time); a miss reads the
    user in a worker thread.
    """
    if not token:
        return ANONYMOUS
    db: Database = request.app.state.db
    key: str = request.app.state.signing_key
    # a token seen before (same signing key, same database) skips the signature check too:
    # the entry lives until the TTL or the token's own expiry, whichever comes first
    cache_key = (id(db), key, token)
    now = _clock()
    hit = _principals.get(cache_key)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM])
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("Your sign-in has expired: sign in again.") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The bearer token is not valid: sign in again.") from exc
    principal = await anyio.to_thread.run_sync(
        _load_principal, db, claims.get("uid"), claims.get("sub")
    )
    left = float(claims.get("exp", 0)) - time.time()  # absent exp: not cached
    with _principals_lock:
        if len(_principals) > 10_000:  # tokens of long-gone sessions
            _principals.clear()
        _principals[cache_key] = (now + min(PRINCIPAL_TTL, left), principal)
    return principal


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency that lets only holders of ``permission`` through.

    The returned function carries ``.permission`` so tests can prove that every route declares
    one.
    """
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")

    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        return allowed(principal, permission)

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def allowed(principal: Principal, permission: str) -> Principal:
    """``principal`` if they hold ``permission``; else 401 (anonymous) or 403."""
    if permission == "public":
        return principal
    if principal is ANONYMOUS:
        raise Unauthorized()
    if not principal.has(permission):
        holders = ", ".join(sorted(PERMISSIONS[permission]))
        raise Forbidden(
            f"{principal.username} may not do this ({permission}); it needs one of the "
            f"roles: {holders}."
        )
    return principal


def permission_checked(permission: str) -> Callable[[Request], Awaitable[Principal]]:
    """:func:`require` for a route that reads its own request instead of declaring
    dependencies — the busiest write path, where FastAPI's dependency solving cost ≈ 8 % of
    the request. Same token handling (principal cache), same 401/403; the function carries
    ``.permission`` like :func:`require`'s and is named in the route's ``openapi_extra``
    (``x-cityops-permission``) for the permission test."""
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")

    async def check(request: Request) -> Principal:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        bearer = token if scheme.lower() == "bearer" and token else None
        return allowed(await current_principal(request, bearer), permission)

    check.permission = permission  # type: ignore[attr-defined]
    return check
