"""Kernel routes under ``/api/v1``: sign-in (OAuth2 password flow), the caller, users, health
and the audit log. Each route declares its permission with :func:`cityops.core.auth.require`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from cityops import __version__
from cityops.core import audit
from cityops.core.auth import (
    ROLES,
    Principal,
    authenticate,
    create_user,
    issue_token,
    require,
)
from cityops.core.deps import DbDep, ReadSession
from cityops.core.models import AuditEntry, User

router = APIRouter(prefix="/api/v1")


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class MeOut(BaseModel):
    username: str
    display_name: str
    roles: list[str]
    department: str | None
    scope: str = Field(description="division-code prefix of the data this user sees; '' = all")


class UserIn(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.\-]{2,64}$")
    password: str = Field(min_length=8)
    roles: list[str] = Field(min_length=1, description=f"any of {', '.join(ROLES)}")
    display_name: str = ""
    department: str | None = None
    scope: str = Field("", pattern=r"^\d{0,15}$")


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    roles: list[str]
    department: str | None
    scope: str
    is_active: bool


class Health(BaseModel):
    status: str
    database: str
    version: str


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    """RFC 6749 §5.2 error body (the token endpoint speaks OAuth2, not problem+json)."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.post(
    "/auth/token",
    response_model=TokenOut,
    tags=["auth"],
    summary="Sign in (OAuth2 password flow) and get a bearer token",
    dependencies=[Depends(require("public"))],
    responses={400: {"description": "RFC 6749 §5.2 error: invalid_grant, …"}},
)
def token(
    request: Request,
    db: DbDep,
    grant_type: Annotated[str | None, Form()] = None,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Any:
    if grant_type not in (None, "", "password"):
        return _oauth_error("unsupported_grant_type", "Only grant_type=password is supported here.")
    if not username or not password:
        return _oauth_error("invalid_request", "Give both username and password.")
    settings = request.app.state.settings
    with db.write() as session:
        user = authenticate(session, username, password)
        if user is None:
            return _oauth_error("invalid_grant", "Wrong username or password.")
        audit.record(session, user.username, "auth.sign_in", "user", user.id)
        tok = issue_token(user, request.app.state.signing_key, settings.token_minutes)
    return JSONResponse(
        TokenOut(access_token=tok, expires_in=settings.token_minutes * 60).model_dump(),
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/auth/me", response_model=MeOut, tags=["auth"], summary="The signed-in caller")
def me(principal: Annotated[Principal, Depends(require("signed_in"))]) -> MeOut:
    return MeOut(
        username=principal.username,
        display_name=principal.display_name,
        roles=sorted(principal.roles),
        department=principal.department,
        scope=principal.scope,
    )


@router.get(
    "/health",
    response_model=Health,
    tags=["system"],
    dependencies=[Depends(require("public"))],
    summary="Is the service up, and on which database",
)
def health(session: ReadSession, db: DbDep) -> Health:
    session.execute(select(1))
    return Health(status="ok", database=db.dialect, version=__version__)


def _user_out(u: User) -> UserOut:
    return UserOut(
        id=u.id,
        username=u.username,
        display_name=u.display_name,
        roles=u.role_names,
        department=u.department,
        scope=u.scope,
        is_active=u.is_active,
    )


@router.get("/users", tags=["users"], summary="List users")
def list_users(
    session: ReadSession,
    principal: Annotated[Principal, Depends(require("users:read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    where = []
    if principal.scope:
        # data scope: a scoped account sees the users inside its own scope
        where.append(User.scope.startswith(principal.scope))
    total = session.scalar(select(func.count()).select_from(User).where(*where)) or 0
    users = session.scalars(
        select(User).where(*where).order_by(User.id).limit(limit).offset(offset)
    )
    return {
        "items": [_user_out(u).model_dump() for u in users],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.post(
    "/users", status_code=201, response_model=UserOut, tags=["users"], summary="Create a user"
)
def post_user(
    body: UserIn,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("users:manage"))],
) -> UserOut:
    with db.write() as session:
        user = create_user(
            session,
            body.username,
            body.password,
            body.roles,
            display_name=body.display_name,
            department=body.department,
            scope=body.scope,
        )
        audit.record(
            session,
            principal.username,
            "user.create",
            "user",
            user.id,
            {"username": user.username, "roles": body.roles},
        )
        return _user_out(user)


@router.get("/audit", tags=["audit"], summary="Recent audit entries")
def audit_entries(
    session: ReadSession,
    _: Annotated[Principal, Depends(require("audit:read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    entity: str | None = None,
) -> dict[str, Any]:
    where = [AuditEntry.entity == entity] if entity else []
    rows = session.scalars(
        select(AuditEntry).where(*where).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    )
    return {
        "items": [
            {
                "id": r.id,
                "at": r.at.isoformat(),
                "actor": r.actor,
                "action": r.action,
                "entity": r.entity,
                "entity_id": r.entity_id,
                "detail": r.detail,
            }
            for r in rows
        ],
        "limit": limit,
        "offset": offset,
    }


@router.get("/audit/verify", tags=["audit"], summary="Check a day's audit chain")
def audit_verify(
    db: DbDep,
    _: Annotated[Principal, Depends(require("audit:read"))],
    day: Annotated[dt.date, Query(description="UTC day, YYYY-MM-DD")],
) -> dict[str, Any]:
    problems = audit.verify(db, day)
    return {"day": day.isoformat(), "intact": not problems, "problems": problems}
