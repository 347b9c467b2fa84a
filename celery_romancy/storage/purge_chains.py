"""Retention of chains of runs (``ctx.continue_as_new``): the first run's id is the
chain's address, so it goes only with the whole chain.

Each run of a top-level chain is a tree root of its own (``root_instance_id`` NULL), and
``wait``/``result``/``send_event``/``cancel`` on the first run's id follow the chain
forward through ``continued_from`` (``chains.last_run_id``). So:

- the first run (``continued``, ``continued_from`` NULL) and the last run (not
  ``continued``, ``continued_from`` set) go only together, with every run between: a
  purge reaches a chain through its last run, in that run's status's pass (the chain's
  status is its last run's, as a tree's is its root's), once every run present may go
  by the tree rule (ended purgeable, unparked, before the cutoff, its tree too);
- a middle run (``continued``, ``continued_from`` set) goes on its own once old, so an
  endless loop keeps bounded storage, its successor pointed at its predecessor in the
  same transaction (``bridge_over``).

A child workflow's runs keep its parent and root: they are no roots, and go with their
tree, whole, as any member does.

On PostgreSQL every run whose row a batch deletes or re-points is locked first with SKIP
LOCKED, and a chain or middle run with one held elsewhere waits for a later purge: two
purges never re-point around each other's runs (which could link a run to one deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..states import Status
from . import schema

Lock = Callable[[sa.Select[Any]], sa.Select[Any]]
# Ids per IN list: well below SQLite's bound-parameter limit.
CHUNK = 500


def walk_back(conn: Connection, ends: Sequence[str]) -> dict[str, list[tuple[str, str | None]]]:
    """For each chain's last run in ``ends``: its runs as (id, ``continued_from``), from
    the last back to the first, followed by the primary key in one recursive query."""
    found: dict[str, list[tuple[str, str | None]]] = {end: [] for end in ends}
    i = schema.instances
    earlier = i.alias("earlier")
    for n in range(0, len(ends), CHUNK):
        walk = (
            sa.select(
                i.c.instance_id.label("end_id"),
                i.c.instance_id.label("run_id"),
                i.c.continued_from.label("prev"),
                sa.literal(0).label("depth"),
            )
            .where(i.c.instance_id.in_(ends[n : n + CHUNK]))
            .cte("romancy_chain_back", recursive=True)
        )
        walk = walk.union_all(
            sa.select(
                walk.c.end_id, earlier.c.instance_id, earlier.c.continued_from, walk.c.depth + 1
            ).where(earlier.c.instance_id == walk.c.prev)
        )
        stmt = sa.select(walk.c.end_id, walk.c.run_id, walk.c.prev)
        for row in conn.execute(stmt.order_by(walk.c.end_id, walk.c.depth)):
            found[row.end_id].append((row.run_id, row.prev))
    return found


def whole_chains(
    conn: Connection, lock: Lock, ended: sa.ColumnElement[bool], ends: Sequence[str]
) -> dict[str, list[str]]:
    """The runs of each chain whose last run is in ``ends`` (locked by the caller), for
    the chains whose other runs are all locked here, ``ended`` (a condition on
    ``schema.instances``: finished for good before the cutoff) and still linked as
    walked. Their trees are checked after, as any root's."""
    i = schema.instances
    walked = walk_back(conn, ends)
    earlier = [run for runs in walked.values() for run, _ in runs[1:]]
    rows: dict[str, Any] = {}
    for n in range(0, len(earlier), CHUNK):
        stmt = sa.select(i.c.instance_id, i.c.continued_from, ended.label("ended"))
        stmt = stmt.where(i.c.instance_id.in_(earlier[n : n + CHUNK]))
        rows.update((row.instance_id, row) for row in conn.execute(lock(stmt)))

    def may_go(run: str, prev: str | None) -> bool:
        row = rows.get(run)  # absent: gone meanwhile, or held by another purge
        return row is not None and row.continued_from == prev and bool(row.ended)

    return {
        end: [run for run, _ in runs]
        for end, runs in walked.items()
        if all(may_go(run, prev) for run, prev in runs[1:])
    }


def free_middle_runs(conn: Connection, lock: Lock, middles: Sequence[str]) -> list[str]:
    """Those of ``middles`` (locked by the caller) whose next run this transaction could
    lock too, to re-point it: not one another purge or a worker's commit holds now."""
    i = schema.instances
    following: dict[str, str] = {}
    locked: set[str] = set()
    for n in range(0, len(middles), CHUNK):
        stmt = sa.select(i.c.instance_id, i.c.continued_from)
        stmt = stmt.where(i.c.continued_from.in_(middles[n : n + CHUNK]))
        following.update((row.continued_from, row.instance_id) for row in conn.execute(stmt))
        locked.update(conn.execute(lock(stmt)).scalars())
    # A middle run with no next run is left by an older purge that took a last run alone.
    return [m for m in middles if m not in following or following[m] in locked]


def bridge_over(conn: Connection, run_id: str) -> None:
    """Point the run after ``run_id`` at the run before it: ``run_id`` is about to go.
    One statement per run, so several middle runs of one chain going in one batch link
    up in any order (each statement sees the previous ones)."""
    i = schema.instances
    me = i.alias("me")
    before = sa.select(me.c.continued_from).where(me.c.instance_id == run_id).scalar_subquery()
    conn.execute(sa.update(i).where(i.c.continued_from == run_id).values(continued_from=before))


def taken_roots(may_go: sa.CTE, statuses: Collection[str]) -> sa.CompoundSelect[Any]:
    """In one statement, for counting: the roots a purge of ``statuses`` takes, given
    ``may_go``, every root whose own tree the tree rule lets go (any purgeable status).
    Those in ``statuses`` that end no chain (a chain's first run never on its own), and
    every run of each chain whose last run is in ``statuses`` and all of whose runs are
    in ``may_go`` (what ``whole_chains`` and the tree check decide for a batch)."""
    listed = may_go.c.status.in_(sorted(statuses))
    continued = may_go.c.status == Status.CONTINUED
    linked = may_go.c.continued_from.is_not(None)
    alone = sa.select(may_go.c.instance_id).where(
        listed, sa.or_(sa.and_(~continued, ~linked), sa.and_(continued, linked))
    )
    walk = (
        sa.select(
            may_go.c.instance_id.label("end_id"),
            may_go.c.instance_id.label("run_id"),
            may_go.c.continued_from.label("prev"),
        )
        .where(listed, ~continued, linked)
        .cte("romancy_chain_runs", recursive=True)
    )
    earlier = schema.instances.alias("earlier")
    walk = walk.union_all(
        sa.select(walk.c.end_id, earlier.c.instance_id, earlier.c.continued_from).where(
            earlier.c.instance_id == walk.c.prev
        )
    )
    held_back = sa.select(walk.c.end_id).where(
        walk.c.run_id.not_in(sa.select(may_go.c.instance_id))
    )
    whole = sa.select(walk.c.run_id).where(walk.c.end_id.not_in(held_back))
    return sa.union_all(alone, whole)
