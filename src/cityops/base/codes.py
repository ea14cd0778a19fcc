"""Division, grid and component codes (DESIGN §8 "Codes"; REFERENCE Part A §2, §3, §7).

* Administrative areas (GB/T 2260 + GB/T 10114): district 6 digits, street 9 (district + 3),
  community 12 (street + 3). A 6-digit parent such as a city ``440300`` or a province
  ``440000`` is compared on its significant pairs (``4403``, ``44``).
* Unit grids (GB/T 30428.1, DB11/T 2157-2023): 15 digits = community code + 3-digit sequence.
* Components: 16 digits (GB/T 30428.2-2013: 6 division + 2 大类 + 2 小类 + 6 sequence) or
  17 digits (GB/T 47678.5-2026: 6 + 2 + 3 + 6).

A malformed code or a wrong parent prefix is an error; a well-formed code absent from a known
list is at most a warning (no national list ships with cityops).
"""

from __future__ import annotations

import pandas as pd

from cityops.core.errors import FieldError

AREA_CODE_LENGTHS = {"district": 6, "street": 9, "community": 12}
COMPONENT_CODE_LENGTHS = (16, 17)


def significant_prefix(parent: str) -> str:
    """``440300`` → ``4403``; ``440000`` → ``44``; a 9/12-digit code is its own prefix."""
    if len(parent) != 6:
        return parent
    p = parent
    while len(p) > 2 and p.endswith("00"):
        p = p[:-2]
    return p


def check_codes(
    layer: str, code: pd.Series, parent: pd.Series, kind: pd.Series, limit: int = 20
) -> list[FieldError]:
    """Field errors for malformed codes and wrong parent prefixes (vectorised)."""
    errors: list[FieldError] = []
    if layer not in ("areas", "grids", "components"):
        return errors

    def text(v: object) -> str | None:
        return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)

    codes = [text(v) for v in code.tolist()]
    parents = [text(v) for v in parent.tolist()]
    kinds = [text(v) for v in kind.tolist()]
    want = {
        "areas": "6 digits (district), 9 (street) or 12 (community), matching its kind",
        "grids": "15 digits (community code + 3-digit sequence)",
        "components": "16 digits (GB/T 30428.2-2013) or 17 (GB/T 47678.5-2026)",
    }[layer]
    bad = [False] * len(codes)
    for i, c in enumerate(codes):
        if c is None:
            continue
        if layer == "areas":
            expected = AREA_CODE_LENGTHS.get(kinds[i] or "", 6)
            ok = len(c) == expected
        elif layer == "grids":
            ok = len(c) == 15
        else:
            ok = len(c) in COMPONENT_CODE_LENGTHS
        if not (ok and c.isascii() and c.isdigit()):
            bad[i] = True
            if len(errors) < limit:
                errors.append(
                    FieldError(f"feature {i + 1}.code", f"{c!r} is malformed: a code has {want}")
                )
    if layer == "components":
        return errors
    for i, (c, p) in enumerate(zip(codes, parents, strict=True)):
        if c is None or p is None or bad[i]:
            continue
        if not c.startswith(significant_prefix(p)) or len(p) > len(c) or c == p:
            errors.append(
                FieldError(
                    f"feature {i + 1}.parent_code",
                    f"code {c} does not lie under parent {p}: a child's code starts with its "
                    "parent's code",
                )
            )
            if len(errors) >= limit:
                break
    return errors
