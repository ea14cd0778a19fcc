"""Statements compiled once for one dialect and run on the DB-API connection itself.

The hot write paths (case creation) run a handful of fixed statements thousands of times a
second. SQLAlchemy's execution layer — execution context, parameter construction, result
proxies, the session's bookkeeping — costs ≈ 0.1 ms of Python per statement, more than the
database spends on it. A :class:`Compiled` keeps what SQLAlchemy decides once per statement
(the SQL text for the dialect, its parameter order, the column types' bind and result
processors: ``UTCDateTime``, JSON/JSONB …) and hands the DB-API cursor plain parameters, so
the values written are exactly those a Core ``execute`` would write (a test compares rows).

Used with ``sqlite3`` connections (qmark parameters, a tuple) and asyncpg connections (``$n``
parameters, a tuple: compile for SQLAlchemy's asyncpg dialect), or psycopg 3 (named
``%(name)s`` parameters, a dict).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]


class Compiled:
    """One statement compiled for ``dialect``; :meth:`params` turns a mapping of values into
    what the DB-API ``execute`` takes, :meth:`row` turns a fetched row into Python values."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        # literal values of the statement (LIMIT 200 …) and None for the bound names
        self._defaults: dict[str, Any] = dict(compiled.construct_params(_check=False) or {})
        self._names: tuple[str, ...] = tuple(
            (compiled.positiontup or ()) if self.positional else self._defaults
        )
        procs: list[tuple[str, Processor]] = []
        for name, bind in compiled.binds.items():
            key = compiled.bind_names.get(bind, name)
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None and key in self._defaults:
                procs.append((key, proc))
        self._procs = tuple(procs)
        # a SELECT's columns or an INSERT's RETURNING
        columns = getattr(stmt, "selected_columns", None) or getattr(stmt, "_returning", None) or ()
        self._results = tuple(_result_processor(col.type, dialect) for col in columns)

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DB-API parameters of one execution (missing names are NULL)."""
        p = dict(self._defaults)
        p.update(values)
        for key, proc in self._procs:
            p[key] = proc(p[key])
        if self.positional:
            return tuple(p[name] for name in self._names)
        return p

    def many(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        return [self.params(r) for r in rows]

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """A fetched row with the columns' result processors applied (SQLite's datetime
        text → an aware ``datetime`` …)."""
        return tuple(v if p is None else p(v) for p, v in zip(self._results, raw, strict=True))


def _result_processor(type_: Any, dialect: Dialect) -> Processor | None:
    try:
        proc: Processor | None = type_.dialect_impl(dialect).result_processor(dialect, None)
    except TypeError:
        # psycopg's numeric processors want the column's type OID; its floats and integers
        # arrive as Python numbers already
        return None
    return proc


def compiled_insert(
    table: Table, dialect: Dialect, *, skip: Iterable[str] = (), returning: str | None = None
) -> Compiled:
    """``INSERT INTO table (every column but ``skip``) VALUES (…) [RETURNING col]``."""
    skipped = set(skip)
    stmt = insert(table).values(
        {c.key: bindparam(c.key, type_=c.type) for c in table.columns if c.key not in skipped}
    )
    # inline(): no implicit RETURNING of the primary key unless asked for
    stmt = stmt.returning(table.c[returning]) if returning is not None else stmt.inline()
    return Compiled(stmt, dialect)
