"""PostgreSQL's hot-path statements, each built once per shape and prepared per connection.

A step costs two round trips: the claim (``claim_with_snapshot``: the lease, and the
instance's row, steps and history as one row) and the commit (``commit_statement``: the
version check, the fencing check, the claimed step's end and every row the step writes,
as one ``WITH ... INSERT ... SELECT ... FROM fenced``). A start is ``create_statement``.
The fencing clauses come from ``steps.py``: the generic path and these share them.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..states import StepKind
from . import schema
from .instances import HISTORY_COLUMNS
from .prepared import PreparedStatement
from .records import HistoryEvent, StepWrite
from .rows import REF_COLUMNS, SEARCH_CONFLICT, SEARCH_UPDATED, write_rows
from .steps import StepProtocol, claim_clauses, version_clauses

RowShapes = tuple[tuple[str, tuple[str, ...]], ...]


def flat_rows(
    instance_id: str, worker_id: str | None, write: StepWrite, now: datetime, version: int
) -> list[tuple[str, dict[str, Any]]]:
    return [
        (table.name, row)
        for table, rows in write_rows(instance_id, worker_id, write, now, version)
        for row in rows
    ]


def row_shapes(table_rows: list[tuple[str, dict[str, Any]]]) -> RowShapes:
    return tuple((name, tuple(row)) for name, row in table_rows)


def bind_rows(params: dict[str, Any], table_rows: list[tuple[str, dict[str, Any]]]) -> None:
    for i, (_, row) in enumerate(table_rows):
        params.update((f"r{i}_{k}", v) for k, v in row.items())


def _inserts_from(source: sa.CTE, shapes: RowShapes) -> list[sa.CTE]:
    """One INSERT ... SELECT ... FROM ``source`` per row: if ``source`` is empty (a
    fenced-out commit, an id that exists), nothing is inserted."""
    writes = []
    for i, (name, columns) in enumerate(shapes):
        table = schema.metadata.tables[name]
        values = [sa.bindparam(f"r{i}_{k}", type_=table.c[k].type) for k in columns]
        rows = sa.select(*values).select_from(source)
        if table is schema.search:
            # A business key set again: the new value replaces the old one.
            upsert = pg_insert(table).from_select(list(columns), rows)
            insert: sa.Insert = upsert.on_conflict_do_update(
                index_elements=list(SEARCH_CONFLICT),
                set_={c: upsert.excluded[c] for c in SEARCH_UPDATED},
            )
        else:
            insert = sa.insert(table).from_select(list(columns), rows)
        writes.append(insert.returning(table.primary_key.columns[0]).cte(f"w{i}"))
    return writes


class CommitShape(NamedTuple):
    """What a commit statement depends on besides its values: built once per shape."""

    changes: tuple[str, ...]  # the instance columns it sets
    rows: RowShapes  # (table, columns) per inserted row
    compensation: tuple[str, ...] | None  # the compensation columns it sets


@functools.lru_cache(maxsize=256)
def commit_statement(shape: CommitShape) -> PreparedStatement:
    """A transition's commit as one statement, its values bound by name (see ``commit``):
    ``WITH fenced AS (UPDATE instance ... WHERE version ... AND the claim holds),
    DELETE the claimed step, INSERT ... SELECT ... FROM fenced``.

    Cached: building and hashing a fresh statement costs more than running it.
    """
    t, s = schema.instances, schema.steps
    claim_holds = sa.exists(
        sa.select(s.c.token).where(
            *claim_clauses(
                sa.bindparam("f_instance_id"),
                sa.bindparam("f_token"),
                sa.bindparam("f_epoch"),
                sa.bindparam("f_owner"),
            )
        )
    )
    values = {k: sa.bindparam(f"f_{k}", type_=t.c[k].type) for k in shape.changes}
    fenced = (
        sa.update(t)
        .where(
            *version_clauses(sa.bindparam("f_instance_id"), sa.bindparam("f_version")),
            claim_holds,
        )
        .values(version=t.c.version + 1, **values)
        .returning(t.c.instance_id)
        .cte("fenced")
    )
    ended = (
        sa.delete(s)
        .where(
            s.c.instance_id == sa.bindparam("f_instance_id"),
            s.c.token == sa.bindparam("f_token"),
            sa.exists(sa.select(fenced.c.instance_id)),
        )
        .returning(s.c.token)
        .cte("ended")
    )
    writes = [ended, *_inserts_from(fenced, shape.rows)]
    if shape.compensation is not None:
        c = schema.compensations
        writes.append(
            sa.update(c)
            .where(
                c.c.instance_id == sa.bindparam("f_instance_id"),
                c.c.step_id == sa.bindparam("c_step_id"),
                sa.exists(sa.select(fenced.c.instance_id)),
            )
            .values({k: sa.bindparam(f"c_{k}", type_=c.c[k].type) for k in shape.compensation})
            .returning(c.c.id)
            .cte("compensated")
        )
    stmt = sa.select(
        sa.select(sa.func.count()).select_from(fenced).scalar_subquery().label("fenced"),
        claim_holds.label("held"),
    ).add_cte(*writes)
    return PreparedStatement(stmt)


def _in_flight(instance_id: Any) -> sa.ScalarSelect[Any]:
    """The instance's steps as one JSON array (decoded once, whatever their number)."""
    s = schema.steps
    row = sa.func.json_build_array(*(s.c[name] for name in REF_COLUMNS))
    return sa.select(sa.func.json_agg(row)).where(s.c.instance_id == instance_id).scalar_subquery()


def _history(instance_id: Any) -> sa.ScalarSelect[Any]:
    """The instance's history as one JSON array in seq order (see ``history_events``)."""
    h = schema.history
    row = sa.func.json_build_array(*(h.c[name] for name in HISTORY_COLUMNS))
    return (
        sa.select(sa.func.json_agg(aggregate_order_by(row, h.c.seq)))
        .where(h.c.instance_id == instance_id)
        .scalar_subquery()
    )


def history_events(rows: list[list[Any]] | None) -> list[HistoryEvent]:
    events = []
    for row in rows or []:
        values = dict(zip(HISTORY_COLUMNS, row, strict=True))
        for name in ("created_at", "started_at"):
            if values[name] is not None:
                values[name] = datetime.fromisoformat(values[name]).replace(tzinfo=UTC)
        events.append(HistoryEvent(**values))
    return events


@functools.cache
def claim_with_snapshot() -> PreparedStatement:
    """The claim, and the instance's row, steps and history, as one row of one statement."""
    s, t = schema.steps, schema.instances
    claimed = StepProtocol.claim_statement().returning(*s.columns).cte("claimed")
    started = (
        StepProtocol.start_statement()
        .where(sa.exists(sa.select(claimed.c.token)))
        .returning(t.c.instance_id)
        .cte("started")
    )
    instance_id: sa.BindParameter[str] = sa.bindparam("claim_instance_id")
    # A branch of a gather that sent every branch at once, with siblings in flight, will
    # not replay when it is recorded (transition.replayed): its claim need not read the
    # history, which grows with the fan-out. Should it replay after all, it reads again.
    other = s.alias("sibling")
    siblings_run = sa.exists(
        sa.select(other.c.token).where(
            other.c.instance_id == instance_id,
            other.c.token != claimed.c.token,
            other.c.kind == str(StepKind.ACTIVITY),
        )
    )

    def field(name: str) -> sa.ColumnElement[str]:
        key: sa.ColumnElement[str] = sa.literal_column(f"'{name}'")
        return sa.func.json_extract_path_text(claimed.c.command, key)

    history_read = sa.not_(
        sa.and_(field("group_id").is_not(None), field("group_limit").is_(None), siblings_run)
    )
    return PreparedStatement(
        sa.select(
            *(claimed.c[c.name].label(f"s_{c.name}") for c in s.columns),
            *t.columns,
            _in_flight(instance_id).label("in_flight"),
            sa.case((history_read, _history(instance_id)), else_=sa.null()).label("history"),
            history_read.label("history_read"),
        )
        .select_from(claimed.join(t, t.c.instance_id == claimed.c.instance_id))
        .add_cte(started)
    )


@functools.cache
def snapshot_statement() -> PreparedStatement:
    t = schema.instances
    instance_id: sa.BindParameter[str] = sa.bindparam("snapshot_instance_id")
    return PreparedStatement(
        sa.select(
            *t.columns,
            _in_flight(instance_id).label("in_flight"),
            _history(instance_id).label("history"),
        ).where(t.c.instance_id == instance_id)
    )


@functools.lru_cache(maxsize=64)
def create_statement(columns: tuple[str, ...], rows: RowShapes) -> PreparedStatement:
    """A start: the instance (none if the id exists) and what it dispatched and
    recorded, in one statement, per shape."""
    t = schema.instances
    created = (
        pg_insert(t)
        .values({k: sa.bindparam(k, type_=t.c[k].type) for k in columns})
        .on_conflict_do_nothing()
        .returning(*t.columns)
        .cte("created")
    )
    stmt = sa.select(created)
    if rows:
        stmt = stmt.add_cte(*_inserts_from(created, rows))
    return PreparedStatement(stmt)
