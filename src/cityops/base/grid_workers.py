"""Grid workers (网格员 / 监督员) assigned to unit grids."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select

from cityops.base.models import Feature, GridAssignment
from cityops.core import audit
from cityops.core.db import Database
from cityops.core.errors import FieldError, NotFound, ValidationFailed
from cityops.core.models import User


def assign(
    db: Database,
    username: str,
    grid_codes: Iterable[str],
    *,
    actor: str = "cli",
    replace: bool = False,
) -> int:
    """Assign ``username`` (a ``grid_worker``) to the given grids; returns how many they cover."""
    codes = list(dict.fromkeys(grid_codes))
    bad = [c for c in codes if not (len(c) == 15 and c.isdigit())]
    if bad:
        raise ValidationFailed(
            "Grid codes have 15 digits (6 district + 3 street + 3 community + 3 sequence).",
            [FieldError("grid_codes", f"{c!r} is malformed") for c in bad[:20]],
        )
    with db.write() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"No user {username!r}: create it with `cityops users create`.")
        if "grid_worker" not in user.role_names:
            raise ValidationFailed(f"{username} is not a grid_worker: give them that role first.")
        known = set(
            session.scalars(
                select(Feature.code).where(Feature.layer == "grids", Feature.code.in_(codes))
            )
        )
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise ValidationFailed(
                f"{len(unknown)} grid code(s) are not in the grids layer; build or import "
                "grids first (cityops grid build).",
                [FieldError("grid_codes", f"{c} unknown") for c in unknown[:20]],
            )
        if replace:
            session.execute(delete(GridAssignment).where(GridAssignment.user_id == user.id))
        have = set(
            session.scalars(
                select(GridAssignment.grid_code).where(GridAssignment.user_id == user.id)
            )
        )
        for c in codes:
            if c not in have:
                session.add(GridAssignment(grid_code=c, user_id=user.id))
        audit.record(session, actor, "grid.assign", "user", user.id, {"grids": codes})
        session.flush()
        return len(have | set(codes))


def grids_of(db: Database, username: str) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(
                select(GridAssignment.grid_code)
                .join(User, User.id == GridAssignment.user_id)
                .where(User.username == username)
                .order_by(GridAssignment.grid_code)
            )
        )
