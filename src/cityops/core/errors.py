"""Errors that know their HTTP face (RFC 9457 problem+json).

Every error a person can cause carries a ``detail`` that says what went wrong *and what to do*,
and, for validation, ``errors: [{field, message}]``. Handlers in :mod:`cityops.app` render them;
a stack trace never reaches a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldError:
    """One invalid input field: ``field`` names it (a JSON pointer-ish path, a column, a row)."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class CityopsError(Exception):
    """Base class: a problem with a stable ``type`` slug, an HTTP status and a helpful detail."""

    detail: str
    status: int = 400
    title: str = "Bad request"
    type: str = "about:blank"
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.detail)

    def __str__(self) -> str:
        return self.detail

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return body


def _problem_type(slug: str) -> str:
    return f"https://cityops.org/problems/{slug}"


class ValidationFailed(CityopsError):
    """422: the input is well-formed but a field is wrong."""

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(
            detail=detail,
            status=422,
            title="Invalid input",
            type=_problem_type("validation"),
            errors=errors or [],
        )


class NotFound(CityopsError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            detail=detail, status=404, title="Not found", type=_problem_type("not-found")
        )


class Conflict(CityopsError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            detail=detail, status=409, title="Conflict", type=_problem_type("conflict")
        )


class Unauthorized(CityopsError):
    def __init__(self, detail: str = "Sign in first: POST /api/v1/auth/token.") -> None:
        super().__init__(
            detail=detail,
            status=401,
            title="Not signed in",
            type=_problem_type("unauthorized"),
            headers={"WWW-Authenticate": "Bearer"},
        )


class Forbidden(CityopsError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            detail=detail, status=403, title="Forbidden", type=_problem_type("forbidden")
        )


class ImportFailed(CityopsError):
    """An import was refused; nothing was written.

    ``file`` is the source path, ``location`` the row/feature/layer (``"feature 12"``,
    ``"row 7"``, ``"layer buildings"``) or ``None`` when the whole file is at fault.
    """

    def __init__(
        self,
        file: str,
        reason: str,
        location: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        where = f"{file}, {location}" if location else file
        super().__init__(
            detail=f"{where}: {reason}",
            status=422,
            title="Import refused; nothing was imported",
            type=_problem_type("import"),
            errors=errors or [],
        )
        self.file = file
        self.location = location
        self.reason = reason
