"""Permissions of the case loop (registered into :data:`cityops.core.auth.PERMISSIONS`).

Route permissions say who may call an endpoint at all; which transition a caller may take on
which case is decided by the machine table (:mod:`cityops.cases.machine`) from their roles
and their relation to the case (data scope, department, reporter), and which cases they see
by the SQL visibility clause in :mod:`cityops.cases.service`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cityops.core.auth import ROLES, STAFF, register_permissions

CASE_PERMISSIONS: dict[str, Iterable[str]] = {
    # everyone signed in may read; what they see is filtered by scope/department/reporter
    "cases:read": frozenset(ROLES),
    "cases:create": frozenset(
        {"citizen", "grid_worker", "supervisor", "dispatcher", "monitor", "handler"}
    ),
    "cases:act": frozenset({"citizen", "grid_worker", "handler", "dispatcher", "supervisor"}),
    "cases:attach": frozenset({"citizen", "grid_worker", "handler", "dispatcher", "supervisor"}),
    # unmasked reporter contact data: the supervision centre calls people back (回访)
    "cases:contact": frozenset({"supervisor"}),
    "cases:metrics": frozenset({"analyst", "supervisor", "dispatcher", "admin"}),
    "cases:stream": STAFF,
    "calendar:read": frozenset(ROLES),
    "calendar:manage": frozenset({"admin"}),
}

register_permissions(CASE_PERMISSIONS)
