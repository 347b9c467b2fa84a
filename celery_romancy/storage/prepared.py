"""Server-side prepared statements for PostgreSQL's hot path, with either driver.

Unprepared, PostgreSQL parses and plans the claim and the commit of every step afresh: a
third of its work for a step (measured: 2.1 ms of server CPU per three-step workflow
unprepared, 1.4 ms prepared). Each hot statement is rendered once per driver from its
SQLAlchemy construct (the SQL stays written once) and run on the driver's own cursor:

- psycopg2 (``postgresql://``, ``postgresql+psycopg2://``) sends statements as text, so
  each one is ``PREPARE``d once per connection by hand, then ``EXECUTE``d;
- psycopg 3 (``postgresql+psycopg://``) prepares a statement itself, at the protocol
  level, the first time a connection runs it (``prepare_threshold=0``, see
  ``postgres.py``).

Off with ``romancy_prepared_statements = False`` behind a pooler that moves a session's
statements between server connections (PgBouncer in transaction mode).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection

_PSYCOPG2 = psycopg2.dialect()  # type: ignore[no-untyped-call]
# A connection forgets its statements past this many (a workflow whose steps record
# ever more rows has a statement shape per row count).
MAX_PER_CONNECTION = 200
_INFO_KEY = "romancy_prepared"
# "cached plan must not change result type": a prepared statement's tables changed.
_PLAN_CHANGED = "0A000"

Processor = Callable[[Any], Any]
Statement = sa.Select[Any] | sa.Insert | sa.Update


class _Rendered:
    """A statement rendered for one dialect: its SQL, its parameters in order, and how
    values go in and rows come out."""

    def __init__(self, statement: Statement, dialect: Dialect) -> None:
        # $1, $2 ...: PREPARE's placeholders, and the ones psycopg 3 passes on unparsed.
        dollar = type(dialect)(paramstyle="numeric_dollar")  # type: ignore[call-arg]
        compiled = statement.compile(dialect=dollar)
        self.sql = compiled.string
        names = list(compiled.positiontup or ())
        binds = [compiled.binds[name] for name in names]
        self.names = names
        self.types = [dialect.type_compiler_instance.process(b.type) for b in binds]
        # Values the construct carries itself (literals such as ``status = 'pending'``).
        self.constants = {n: b.value for n, b in zip(names, binds, strict=True) if not b.required}
        self.bind_processors = [_processor(b.type, dialect, bind=True) for b in binds]
        self.result_processors = [
            _processor(c.type, dialect, bind=False) for c in statement.exported_columns
        ]

    def values(self, values: Mapping[str, Any]) -> list[Any]:
        bound = []
        for name, process in zip(self.names, self.bind_processors, strict=True):
            value = values[name] if name in values else self.constants[name]
            bound.append(value if process is None else process(value))
        return bound

    def rows(self, rows: list[Any]) -> list[list[Any]]:
        processors = self.result_processors
        return [
            [value if p is None else p(value) for p, value in zip(processors, row, strict=True)]
            for row in rows
        ]


class PreparedStatement:
    """One statement, its parameters by name, run prepared on the engine's driver."""

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self.columns = [str(c.key) for c in statement.exported_columns]
        # psycopg2: the PREPARE and EXECUTE texts, built now (the default driver).
        self._hand = _Rendered(statement, _PSYCOPG2)
        self.name = "romancy_" + hashlib.sha1(self._hand.sql.encode()).hexdigest()[:20]
        self.prepare_sql = (
            f"PREPARE {self.name} ({', '.join(self._hand.types)}) AS {self._hand.sql}"
        )
        self.execute_sql = f"EXECUTE {self.name} ({', '.join(['%s'] * len(self._hand.names))})"
        # psycopg 3: rendered by the engine's own dialect on first use.
        self._auto: _Rendered | None = None

    def execute(self, engine: Engine, values: Mapping[str, Any]) -> list[list[Any]]:
        """Run it on a pooled connection of ``engine``; the processed rows.

        On the driver's own cursor: SQLAlchemy's execution machinery would cost twice
        what the statement does. Its errors are raised as SQLAlchemy's, as they would be
        by ``Connection.execute``, and a dead connection is dropped with its pool.
        """
        if engine.dialect.driver != "psycopg":
            params = tuple(self._hand.values(values))
            return self._hand.rows(self._on_connection(engine, self._run_by_hand, params))
        if self._auto is None:
            self._auto = _Rendered(self.statement, engine.dialect)

        auto = self._auto
        bound = auto.values(values)
        try:
            rows = self._on_connection(engine, self._run_auto, bound, stale_retried=False)
        except _StalePlanError:
            # The pool's connections had it prepared before the migration: they went.
            rows = self._on_connection(engine, self._run_auto, bound, stale_retried=True)
        return auto.rows(rows)

    def _on_connection(
        self, engine: Engine, run: Runner, params: Any, stale_retried: bool = True
    ) -> list[Any]:
        dbapi_error = engine.dialect.loaded_dbapi.Error
        cursor: Any
        try:
            connection = engine.raw_connection()
        except dbapi_error as error:  # the server is down or refuses us
            raise _wrapped(engine, None, None, error, self, params) from error
        try:
            if engine.dialect.driver == "psycopg":
                # A raw cursor: the statement goes as written ($1 ...), not parsed for
                # %s first (psycopg keeps no parse of a statement past 4 kB, as a
                # commit's can be).
                cursor = engine.dialect.loaded_dbapi.RawCursor(connection.dbapi_connection)
            else:
                cursor = connection.cursor()
            try:
                rows = run(connection, cursor, params)
            except _StalePlanError as stale:
                connection.invalidate(stale.error)
                engine.pool.dispose()  # the others prepared it before the change too
                if stale_retried:
                    refused = stale.error
                    raise _wrapped(engine, connection, cursor, refused, self, params) from refused
                raise
            except dbapi_error as error:
                raise _wrapped(engine, connection, cursor, error, self, params) from error
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool (or gone, if invalidated)
        return rows

    def _run_by_hand(
        self, connection: PoolProxiedConnection, cursor: Any, params: tuple[Any, ...]
    ) -> list[Any]:
        """psycopg2: PREPARE once per connection, then EXECUTE."""
        prepared: set[str] = connection.info.setdefault(_INFO_KEY, set())
        if self.name not in prepared:
            if len(prepared) >= MAX_PER_CONNECTION:
                cursor.execute("DEALLOCATE ALL")
                prepared.clear()
            cursor.execute(self.prepare_sql)
            prepared.add(self.name)
        try:
            cursor.execute(self.execute_sql, params)
        except Exception as error:
            if _sqlstate(error) != _PLAN_CHANGED:
                raise
            # A migration changed a table under the statement since it was prepared
            # here (a rolling deploy): nothing ran; prepare it anew.
            cursor.execute(f"DEALLOCATE {self.name}")
            cursor.execute(self.prepare_sql)
            cursor.execute(self.execute_sql, params)
        return _fetched(cursor)

    def _run_auto(
        self, connection: PoolProxiedConnection, cursor: Any, params: list[Any]
    ) -> list[Any]:
        """psycopg 3: the connection prepares it on first use (its ``prepare_threshold``)."""
        assert self._auto is not None
        try:
            cursor.execute(self._auto.sql, params)
        except Exception as error:
            if _sqlstate(error) != _PLAN_CHANGED:
                raise
            # As above; but psycopg 3 offers no way to forget one statement it prepared,
            # so the connection goes, and the statement runs again on another.
            raise _StalePlanError(error) from error
        # Every hot statement returns rows; psycopg 3 builds ``description`` anew on
        # each read (an object per column: a fifth of its time here).
        return list(cursor.fetchall())


Runner = Callable[[PoolProxiedConnection, Any, Any], list[Any]]


class _StalePlanError(Exception):
    """psycopg 3 ran a statement prepared before a migration (nothing ran)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _fetched(cursor: Any) -> list[Any]:
    return list(cursor.fetchall()) if cursor.description is not None else []


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)  # 3, 2
    return str(code) if code else None


def _wrapped(
    engine: Engine,
    connection: PoolProxiedConnection | None,
    cursor: Any,
    error: Any,
    statement: PreparedStatement,
    params: Any,
) -> sa.exc.StatementError:
    """What ``Connection.execute`` would raise; a lost server also empties the pool."""
    dialect = engine.dialect
    if connection is None:
        disconnected = True  # never connected: nothing to drop but the pool's others
    else:
        disconnected = dialect.is_disconnect(error, connection.dbapi_connection, cursor)
        if disconnected:
            connection.invalidate(error)
    if disconnected:
        engine.pool.dispose()  # its other connections went with the server
    auto = statement._auto if dialect.driver == "psycopg" else None
    wrapped: sa.exc.StatementError = sa.exc.DBAPIError.instance(
        statement.execute_sql if auto is None else auto.sql,
        params,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnected,
        dialect=dialect,
    )
    return wrapped


def _processor(type_: sa.types.TypeEngine[Any], dialect: Dialect, bind: bool) -> Processor | None:
    impl = type_.dialect_impl(dialect)
    if bind:
        return impl.bind_processor(dialect)
    return impl.result_processor(dialect, None)
