"""HTTP tests: sign-in, permissions on every route, problem+json errors, audit."""

from __future__ import annotations

import datetime as dt

from fastapi.routing import APIRoute
from sqlalchemy import func, select

from cityops.app import create_app
from cityops.core import audit
from cityops.core.models import AuditEntry
from cityops.settings import Settings
from tests.conftest import make_user, token_for

PROBLEM = "application/problem+json"


def _permission_of(route: APIRoute) -> set[str]:
    found: set[str] = set()

    def walk(dependant) -> None:
        call = getattr(dependant, "call", None)
        if call is not None and hasattr(call, "permission"):
            found.add(call.permission)
        for d in dependant.dependencies:
            walk(d)

    walk(route.dependant)
    # a route that checks its own request names its permission in its OpenAPI extra
    named = (route.openapi_extra or {}).get("x-cityops-permission")
    if named is not None:
        from cityops.core.auth import PERMISSIONS

        assert named in PERMISSIONS
        found.add(named)
    return found


def test_every_api_route_declares_a_permission(db):
    app = create_app(Settings(database_url=db.url), db)
    routes = [
        r
        for router in app.state.routers
        for r in router.routes
        if isinstance(r, APIRoute) and r.path.startswith("/api/v1")
    ]
    # every /api/v1 operation in the OpenAPI description is among the routes checked
    ops = {
        (m.upper(), p)
        for p, item in app.openapi()["paths"].items()
        if p.startswith("/api/v1")
        for m in item
    }
    assert ops == {(m, r.path) for r in routes for m in r.methods}
    assert len(routes) >= 10
    missing = [f"{sorted(r.methods)} {r.path}" for r in routes if not _permission_of(r)]
    assert missing == []


def test_token_flow_and_me(client, db):
    make_user(db, "ana", ["analyst"], department="统计科")
    r = client.post("/api/v1/auth/token", data={"username": "ana", "password": "wrong-pass"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    headers = token_for(client, "ana")
    me = client.get("/api/v1/auth/me", headers=headers).json()
    assert me["username"] == "ana" and me["roles"] == ["analyst"]
    assert me["department"] == "统计科"


def test_unauthenticated_and_forbidden_are_problems(client, db):
    r = client.get("/api/v1/auth/me")
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    assert "sign in" in r.json()["detail"].lower()
    make_user(db, "cit", ["citizen"])
    r = client.get("/api/v1/users", headers=token_for(client, "cit"))
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    assert "admin" in r.json()["detail"]


def test_bad_token_rejected(client):
    r = client.get("/api/v1/auth/me", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


def test_validation_problem_names_the_field(client, db):
    make_user(db, "root", ["admin"])
    h = token_for(client, "root")
    r = client.post(
        "/api/v1/users", json={"username": "x y", "password": "short", "roles": []}, headers=h
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"username", "password", "roles"} <= fields


def test_create_user_audited_and_unknown_role(client, db):
    make_user(db, "root", ["admin"])
    h = token_for(client, "root")
    r = client.post(
        "/api/v1/users",
        json={"username": "w1", "password": "password-123", "roles": ["grid_worker"]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/users",
        json={"username": "w2", "password": "password-123", "roles": ["wizard"]},
        headers=h,
    )
    assert r.status_code == 422 and "wizard" in r.json()["detail"]
    r = client.post(
        "/api/v1/users",
        json={"username": "w1", "password": "password-123", "roles": ["citizen"]},
        headers=h,
    )
    assert r.status_code == 409
    with db.read() as s:
        actions = list(s.scalars(select(AuditEntry.action)))
    assert "user.create" in actions


def test_unknown_route_is_problem(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM


def test_health(client, db):
    r = client.get("/api/v1/health")
    assert r.json()["database"] == db.dialect


def test_audit_chain_detects_tampering(db):
    with db.write() as s:
        for i in range(3):
            audit.record(s, "a", "x", "thing", i, {"n": i})
    today = dt.datetime.now(dt.UTC).date()
    assert audit.seal(db, today).entries == 3
    assert audit.verify(db, today) == []
    with db.write() as s:
        e = s.scalar(select(AuditEntry).order_by(AuditEntry.id).limit(1))
        e.detail = {"n": 99}
    problems = audit.verify(db, today)
    assert any("changed" in p for p in problems)
    with db.write() as s:
        s.delete(s.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)))
    assert any("sealed chain" in p for p in audit.verify(db, today))
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 2


def test_disabled_account_is_refused_once_the_principal_cache_forgets(client, db):
    """Callers are cached for auth.PRINCIPAL_TTL seconds (no database read per request); a
    disabled account is refused as soon as the cache is dropped or the entry expires."""
    from cityops.core import auth
    from cityops.core.models import User

    make_user(db, "gone", ["analyst"])
    headers = token_for(client, "gone")
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    with db.write() as session:
        session.scalar(select(User).where(User.username == "gone")).is_active = False
    # still cached: within the TTL the token keeps working in this process
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    auth.forget_principals()
    r = client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert "disabled" in r.json()["detail"]


def test_principal_cache_expires(client, db, monkeypatch):
    from cityops.core import auth
    from cityops.core.models import User

    make_user(db, "brief", ["analyst"])
    headers = token_for(client, "brief")
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    with db.write() as session:
        session.scalar(select(User).where(User.username == "brief")).is_active = False
    later = auth._clock() + auth.PRINCIPAL_TTL + 1
    monkeypatch.setattr(auth, "_clock", lambda: later)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401


def test_cached_token_still_expires(client, db):
    """The principal cache never outlives the token's own ``exp``."""
    import time as _time

    import jwt

    from cityops.core import auth
    from cityops.core.models import User

    make_user(db, "short", ["analyst"])
    with db.read() as session:
        user = session.scalar(select(User).where(User.username == "short"))
        uid = user.id
    key = client.app.state.signing_key
    now = int(_time.time())
    token = jwt.encode(
        {"sub": "short", "uid": uid, "roles": ["analyst"], "iat": now, "exp": now + 2},
        key,
        algorithm=auth.ALGORITHM,
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    _time.sleep(max(0.0, now + 2.2 - _time.time()))
    r = client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_every_openapi_reference_resolves(db):
    """Routes that validate their own body point at component schemas the app adds."""
    import json as _json
    import re

    app = create_app(Settings(database_url=db.url), db)
    doc = app.openapi()
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', _json.dumps(doc)))
    assert "CaseCreate" in refs
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
