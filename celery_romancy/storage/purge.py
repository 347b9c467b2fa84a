"""Retention: the SQL that deletes finished workflow trees, a short transaction at a time.

The unit is a tree: a workflow started on its own (a root) with every child workflow
below it (``root_instance_id``). A tree goes only whole, and only once its root and
every member have finished in a purgeable status (``PURGEABLE``) before the cutoff and
none has an outbox row still to relay. So a finished child whose parent still runs is
kept (the parent's rollback may yet undo it: its ``kind="child"`` compensation names
the child), and so is everything of a tree holding a ``compensation_failed`` or live
member. The runs of a top-level chain (``continue_as_new``) are roots each, but its
first and last runs go only together, with the whole chain; a middle run goes alone
(``purge_chains``).

Each batch takes up to ``limit`` roots by the (status, updated_at) index, locked with
SKIP LOCKED on PostgreSQL so that two purges share the work, reads their trees and
unrelayed outbox rows by index, and deletes in one short transaction, table by table
by the ``instance_id``-first index every owned table has, the instances last. One
set-based DELETE per table, rather than ON DELETE CASCADE (which SQLite enforces here
too, ``PRAGMA foreign_keys=ON``), gives the counts, and the cascade's checks then find
nothing. Consumed events and relayed outbox rows are found by columns no index leads
with (``consumed_by``, the outbox's ``instance_id``): deleting them per batch would
scan those tables once per batch, so one pass over each, in id order, takes the rows
whose instance is gone (``purge_orphans``) after the batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..states import PARKED_ERRORS, Status
from . import purge_chains, schema
from .base import StoreBase

# Statuses an instance ends in for good. Never ``compensation_failed`` (it waits for an
# operator), never a live one, and never a ``failed`` one that is ``parked``.
PURGEABLE = frozenset(
    {
        Status.COMPLETED,
        Status.FAILED,
        Status.CANCELLED,
        Status.COMPENSATED,
        Status.CONTINUED,
    }
)
CHUNK = purge_chains.CHUNK


@dataclass
class PurgeCounts:
    """Instances by status and rows by table, deleted (or, in a dry run, to delete)."""

    statuses: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class RootKey:
    """Where a batch stopped in a status's roots, ordered by (updated_at, instance_id)."""

    updated_at: datetime
    instance_id: str


def owned_tables() -> list[sa.Table]:
    """Every table whose rows belong to an instance (a foreign key to it), in the order
    their rows are deleted; read from the schema so a new owned table is not missed."""
    owner = schema.instances.c.instance_id
    return [
        table
        for table in reversed(schema.metadata.sorted_tables)
        if any(fk.column is owner for fk in table.foreign_keys)
    ]


def purgeable_roots(cutoff: datetime, statuses: Collection[str]) -> sa.Select[Any]:
    """Roots of trees that may go: the root in one of ``statuses`` and every member in a
    purgeable status, all ended before ``cutoff``, no outbox row left to relay. In one
    statement, for counting them all (a batch checks the same in ``_purgeable_trees``);
    which of them a purge takes, chains considered, is ``purge_chains.taken_roots``."""
    r = schema.instances.alias("r")
    m = schema.instances.alias("m")
    o = schema.outbox
    # Members of r's tree (r itself excepted) that keep the tree: live, parked,
    # or ended too recently.
    kept_member = sa.exists().where(
        m.c.root_instance_id == r.c.instance_id,
        sa.or_(m.c.status.not_in(sorted(PURGEABLE)), m.c.updated_at >= cutoff, parked(m)),
    )
    tree = sa.select(m.c.instance_id).where(m.c.root_instance_id == r.c.instance_id)
    # Found through the (status, available_at) index: rows still to relay are few.
    unrelayed = sa.exists().where(
        o.c.status.in_(["pending", "in_progress"]),
        sa.or_(o.c.instance_id == r.c.instance_id, o.c.instance_id.in_(tree.scalar_subquery())),
    )
    return sa.select(r.c.instance_id, r.c.status, r.c.updated_at, r.c.continued_from).where(
        r.c.status.in_(sorted(statuses)),
        r.c.updated_at < cutoff,
        r.c.parent_instance_id.is_(None),
        ~parked(r),
        ~kept_member,
        ~unrelayed,
    )


def parked(t: sa.FromClause) -> sa.ColumnElement[bool]:
    """A ``failed`` instance parked for an operator (``PARKED_ERRORS``: history and code
    disagree, or a poison step): not rolled back, it waits for ``resume`` once the code
    is fixed, as ``compensation_failed`` waits for ``retry_compensation``."""
    error_type = sa.func.coalesce(t.c.error["type"].as_string(), "")
    return sa.and_(t.c.status == Status.FAILED, error_type.in_(PARKED_ERRORS))


def ended_for_good(cutoff: datetime) -> sa.ColumnElement[bool]:
    """A root (of ``schema.instances``) that ended purgeable and unparked before ``cutoff``."""
    i = schema.instances
    return sa.and_(
        i.c.status.in_(sorted(PURGEABLE)),
        i.c.updated_at < cutoff,
        i.c.parent_instance_id.is_(None),
        ~parked(i),
    )


def ended_roots(cutoff: datetime, status: str, limit: int, after: RootKey | None) -> sa.Select[Any]:
    """The next ``limit`` roots that ended in ``status`` before ``cutoff``, after
    ``after``: a range of the (status, updated_at) index. Of ``continued`` ones, the
    middle runs of chains only: a chain's first run goes with its last run."""
    i = schema.instances
    stmt = sa.select(i.c.instance_id, i.c.updated_at, i.c.continued_from).where(
        i.c.status == status,
        i.c.updated_at < cutoff,
        i.c.parent_instance_id.is_(None),
        ~parked(i),
    )
    if status == Status.CONTINUED:
        stmt = stmt.where(i.c.continued_from.is_not(None))
    if after is not None:
        stmt = stmt.where(
            i.c.updated_at >= after.updated_at,
            sa.or_(i.c.updated_at > after.updated_at, i.c.instance_id > after.instance_id),
        )
    return stmt.order_by(i.c.updated_at, i.c.instance_id).limit(limit)


class PurgeQueries(StoreBase):
    def purge_batch(
        self, cutoff: datetime, status: str, limit: int, after: RootKey | None
    ) -> tuple[PurgeCounts, RootKey | None, int]:
        """Delete the purgeable trees among the next ``limit`` roots with ``status`` that
        ended before ``cutoff``, after ``after`` in (updated_at, instance_id) order, in
        one transaction. Returns what it deleted, where to go on from, and how many roots
        it looked at (fewer than ``limit``: the status is done). Roots another purge
        holds are skipped (SKIP LOCKED). A root that is the last run of a chain goes with
        every run of its chain or not at all; a middle run goes alone, bridged over
        (``purge_chains``).

        The same rule as ``purgeable_roots``, in three indexed reads rather than one
        statement: PostgreSQL plans that one's anti-joins for a batch as a nested loop
        over every live or recent instance, repeated for each root."""
        i = schema.instances
        counts = PurgeCounts()
        with self.transaction() as conn:
            stmt = self.lock_for_update(ended_roots(cutoff, status, limit, after))
            roots = conn.execute(stmt).all()
            if not roots:
                return counts, after, 0
            units = _units(conn, self.lock_for_update, cutoff, status, roots)
            trees = _purgeable_trees(conn, cutoff, [run for runs in units for run in runs])
            units = [runs for runs in units if all(run in trees for run in runs)]
            ids = [member for runs in units for run in runs for member in trees[run]]
            if status == Status.CONTINUED:
                for (middle,) in units:
                    purge_chains.bridge_over(conn, middle)
            for table in owned_tables():
                for chunk in _chunks(ids):
                    deleted = conn.execute(sa.delete(table).where(table.c.instance_id.in_(chunk)))
                    counts.rows[table.name] += deleted.rowcount
            for chunk in _chunks(ids):
                # Counted from what this transaction deleted: on SQLite, whose SELECT
                # locks nothing, a racing purge may have taken a tree first.
                gone = conn.execute(
                    sa.delete(i).where(i.c.instance_id.in_(chunk)).returning(i.c.status)
                )
                counts.statuses.update(gone.scalars())
            counts.rows[i.name] = counts.statuses.total()
        last = roots[-1]
        return counts, RootKey(last.updated_at, last.instance_id), len(roots)

    def purge_orphans(self, table_name: str, limit: int, after_id: int) -> tuple[int, int]:
        """Delete up to ``limit`` consumed events or relayed outbox rows whose instance is
        gone, with ids above ``after_id``; returns (deleted, last id looked at, or 0
        when the table is done)."""
        table, owner, condition = _orphan_columns(table_name)
        i = schema.instances
        gone = ~sa.exists().where(i.c.instance_id == owner)
        stmt = (
            sa.select(table.c.id)
            .where(table.c.id > after_id, condition, gone)
            .order_by(table.c.id)
            .limit(limit)
        )
        with self.transaction() as conn:
            ids = list(conn.execute(stmt).scalars())
            if not ids:
                return 0, 0
            deleted = conn.execute(sa.delete(table).where(table.c.id.in_(ids), gone))
            return int(deleted.rowcount), ids[-1] if len(ids) == limit else 0

    def count_purgeable(self, cutoff: datetime, statuses: Collection[str]) -> PurgeCounts:
        """What a purge with these arguments would delete now, counted, nothing written."""
        may_go = purgeable_roots(cutoff, PURGEABLE).cte("may_go")
        roots = purge_chains.taken_roots(may_go, statuses).cte("roots")
        m = schema.instances.alias("members_of")
        members = sa.union_all(
            sa.select(roots.c.instance_id),
            sa.select(m.c.instance_id).join(roots, m.c.root_instance_id == roots.c.instance_id),
        ).cte("members")
        member_ids = sa.select(members.c.instance_id)
        i = schema.instances
        counts = PurgeCounts()
        by_status = (
            sa.select(i.c.status, sa.func.count())
            .where(i.c.instance_id.in_(member_ids))
            .group_by(i.c.status)
        )
        tables = {
            t.name: sa.select(sa.func.count()).where(t.c.instance_id.in_(member_ids))
            for t in [*owned_tables(), i]
        }
        for name in ("romancy_events", "romancy_outbox"):
            _, owner, condition = _orphan_columns(name)
            tables[name] = sa.select(sa.func.count()).where(condition, owner.in_(member_ids))
        with self.engine.connect() as conn:
            for status, n in conn.execute(by_status):
                counts.statuses[status] = n
            for name, stmt in tables.items():
                counts.rows[name] = int(conn.execute(stmt).scalar_one())
        return counts


def _units(
    conn: Connection, lock: purge_chains.Lock, cutoff: datetime, status: str, roots: Sequence[Any]
) -> list[list[str]]:
    """What goes together, of these locked roots: each standalone root or middle run
    alone, each chain's last run with every other run of its chain (those whose runs are
    all locked here and ended for good; a root's tree is checked after)."""
    if status == Status.CONTINUED:
        middles = [row.instance_id for row in roots]
        return [[middle] for middle in purge_chains.free_middle_runs(conn, lock, middles)]
    alone = [[row.instance_id] for row in roots if row.continued_from is None]
    ends = [row.instance_id for row in roots if row.continued_from is not None]
    chains = purge_chains.whole_chains(conn, lock, ended_for_good(cutoff), ends)
    return alone + list(chains.values())


def _purgeable_trees(
    conn: Connection, cutoff: datetime, root_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The instance ids of the trees of these (finished, old) roots that may go, by
    root: no member live, parked or ended after ``cutoff``, no outbox row still to
    relay."""
    i, o = schema.instances, schema.outbox
    root_of = {root: root for root in root_ids}
    kept: set[str] = set()
    for chunk in _chunks(root_ids):
        members = sa.select(
            i.c.instance_id,
            i.c.root_instance_id,
            i.c.status,
            i.c.updated_at,
            parked(i).label("parked"),
        )
        for m in conn.execute(members.where(i.c.root_instance_id.in_(chunk))):
            root_of[m.instance_id] = m.root_instance_id
            if m.status not in PURGEABLE or m.updated_at >= cutoff or m.parked:
                kept.add(m.root_instance_id)
    ids = list(root_of)
    for chunk in _chunks(ids):
        unrelayed = sa.select(o.c.instance_id).where(
            o.c.status.in_(["pending", "in_progress"]), o.c.instance_id.in_(chunk)
        )
        kept.update(root_of[instance_id] for instance_id in conn.execute(unrelayed).scalars())
    trees: dict[str, list[str]] = {}
    for instance_id, root in root_of.items():
        if root not in kept:
            trees.setdefault(root, []).append(instance_id)
    return trees


def _orphan_columns(table_name: str) -> tuple[sa.Table, sa.ColumnElement[Any], Any]:
    """The table, the column naming its instance, and which of its rows a purge takes."""
    if table_name == "romancy_events":
        e = schema.events
        return e, e.c.consumed_by, e.c.consumed_by.is_not(None)
    o = schema.outbox
    return o, o.c.instance_id, o.c.status == "published"


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[n : n + CHUNK] for n in range(0, len(ids), CHUNK)]
