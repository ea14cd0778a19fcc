"""Permissions of lifeline monitoring (registered into :data:`cityops.core.auth.PERMISSIONS`).

The monitoring centre (监测中心, role ``monitor``, DESIGN §8 "Roles") acknowledges alarms and
verifies incidents (研判); administrators keep the sensor registry; both may switch a sensor's
maintenance state and push samples over HTTP (gateways sign in as a service account with one of
these roles).
"""

from __future__ import annotations

from collections.abc import Iterable

from cityops.core.auth import STAFF, register_permissions

LIFELINE_PERMISSIONS: dict[str, Iterable[str]] = {
    # sensors, series, alarms, incidents, the live map: every staff member may look
    "lifeline:read": STAFF,
    # register and edit sensors (监测点台账)
    "lifeline:manage": frozenset({"admin"}),
    # maintenance on/off (维护)
    "lifeline:maintain": frozenset({"admin", "monitor"}),
    # HTTP batch ingest
    "lifeline:ingest": frozenset({"admin", "monitor"}),
    # acknowledge alarms, acknowledge / verify / dismiss incidents (研判)
    "lifeline:verify": frozenset({"monitor"}),
    # rejected payloads with their reasons
    "lifeline:dead_letters": frozenset({"admin", "monitor"}),
}

register_permissions(LIFELINE_PERMISSIONS)
