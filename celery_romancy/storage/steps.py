"""The step protocol: claim a step's lease, keep it, and commit a transition fenced twice.

A commit applies only if (1) the instance's ``version`` is still the one the transition
was planned from, and (2) each step it ends is still the caller's: the claimed one with
the claim's epoch and owner, any other one unleased. (1) serialises the transitions of
one instance, so the last of several branches recorded at once advances it exactly
once; (2) is fencing, so a worker that lost its lease cannot record over the new owner.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..states import Status
from . import schema
from .chains import hand_over
from .instances import InstanceQueries
from .records import ChildIdTakenError, Claim, CommitResult, Snapshot, StepWrite
from .rows import step_of


class StepProtocol(InstanceQueries):
    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        """Take the lease of the step dispatched as ``token``; None for a stale or
        duplicate message, or while another worker's lease is live.

        One conditional UPDATE decides, so two workers given the same message cannot
        both win, on any dialect.
        """
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        stmt = self.claim_statement().returning(*schema.steps.columns)
        with self.transaction() as conn:
            row = conn.execute(stmt, params).first()
            if row is None:
                return None
            step = step_of(row._mapping)
            conn.execute(self.start_statement(), params)
            snapshot = self._snapshot(conn, instance_id)
        assert snapshot is not None
        return Claim(step=step, snapshot=snapshot, worker_id=worker_id, epoch=step.epoch)

    @staticmethod
    @functools.cache
    def claim_statement() -> sa.Update:
        """The claim's UPDATE, with bind parameters named as in ``claim_parameters``.

        Built once: it runs on every step, and building it costs more than running it.
        """
        s = schema.steps
        now = sa.bindparam("claim_now", type_=schema.UTCDateTime())
        return (
            sa.update(s)
            .where(
                s.c.token == sa.bindparam("claim_token"),
                s.c.instance_id == sa.bindparam("claim_instance_id"),
                sa.or_(s.c.lease_owner.is_(None), s.c.lease_expires_at < now),
            )
            .values(
                lease_owner=sa.bindparam("claim_worker_id"),
                lease_expires_at=sa.bindparam("claim_expires", type_=schema.UTCDateTime()),
                epoch=s.c.epoch + 1,
                # An expired lease still set means the last holder died or stalled.
                takeovers=sa.case(
                    (s.c.lease_owner.is_not(None), s.c.takeovers + 1), else_=s.c.takeovers
                ),
            )
        )

    @staticmethod
    @functools.cache
    def start_statement() -> sa.Update:
        """A claimed first step marks its instance running (no version change: it
        changes nothing a transition plans from)."""
        t = schema.instances
        return (
            sa.update(t)
            .where(
                t.c.instance_id == sa.bindparam("claim_instance_id"),
                t.c.status == str(Status.PENDING),
            )
            .values(status=str(Status.RUNNING))
        )

    def lease_held_for(self, instance_id: str, token: str) -> float | None:
        """Seconds left on a live lease over step ``token``; None if there is none.

        Tells a redelivery that must wait (its step is in flight, or its worker died
        holding the lease) from a duplicate of a step already recorded.
        """
        s = schema.steps
        with self.engine.connect() as conn:
            expires: datetime | None = conn.execute(
                sa.select(s.c.lease_expires_at).where(
                    s.c.token == token, s.c.instance_id == instance_id, s.c.lease_owner.is_not(None)
                )
            ).scalar()
        if expires is None:
            return None
        return max((expires - schema.utcnow()).total_seconds(), 0.0)

    def instance_exists(self, instance_id: str) -> bool:
        t = schema.instances
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(t.c.instance_id).where(t.c.instance_id == instance_id))
            return found.first() is not None

    def commit(
        self,
        snapshot: Snapshot,
        write: StepWrite,
        claim: Claim | None = None,
        conn: Connection | None = None,
    ) -> CommitResult:
        """Commit a transition planned from ``snapshot``; see the module docstring.

        ``claim``: the caller's claimed step, which this commit ends. ``conn``: the
        activity's own open transaction (``current_activity().session``), whose writes
        then commit with the step, or die with it if the step is fenced out. On
        ``MOVED`` that transaction is left open for the next try.
        """
        if conn is None:
            with self.engine.connect() as own:
                return self._commit(own, snapshot, write, claim, keep_open=False)
        return self._commit(conn, snapshot, write, claim, keep_open=True)

    def _commit(
        self,
        conn: Connection,
        snapshot: Snapshot,
        write: StepWrite,
        claim: Claim | None,
        keep_open: bool,
    ) -> CommitResult:
        now = schema.utcnow()
        instance_id = snapshot.instance.instance_id
        txn = conn.get_transaction() or conn.begin()
        try:
            # The version check first: it also row-locks the instance until commit, so
            # the transitions of one instance take turns.
            moved = conn.execute(version_statement(snapshot, write, now)).rowcount != 1
            if moved:
                if not keep_open:
                    txn.rollback()
                return CommitResult.MOVED
            if claim is not None and conn.execute(claimed_statement(claim)).rowcount != 1:
                txn.rollback()
                return CommitResult.FENCED
            others = [t for t in write.remove_steps if claim is None or t != claim.step.token]
            if others and conn.execute(
                unleased_statement(instance_id, others, now)
            ).rowcount != len(others):
                txn.rollback()  # a worker took one of them meanwhile: plan again
                return CommitResult.MOVED
            if write.consume_event is not None:
                e = schema.events
                consumed = conn.execute(
                    sa.update(e)
                    .where(e.c.id == write.consume_event, e.c.consumed_by.is_(None))
                    .values(consumed_by=instance_id, consumed_at=now)
                )
                if consumed.rowcount != 1:
                    txn.rollback()  # another wait took the event first
                    return CommitResult.FENCED
            worker_id = claim.worker_id if claim is not None else None
            version = snapshot.instance.version + 1
            self.insert_rows(conn, instance_id, worker_id, write, now, version)
            if write.continued_as is not None:
                hand_over(conn, snapshot.instance, write.continued_as)
            if write.compensation_update is not None:
                step_id, changes = write.compensation_update
                c = schema.compensations
                conn.execute(
                    sa.update(c)
                    .where(c.c.instance_id == instance_id, c.c.step_id == step_id)
                    .values(**changes)
                )
            txn.commit()
        except ChildIdTakenError:
            txn.rollback()  # plan again: the start of that child fails in the parent
            return CommitResult.MOVED
        except sa.exc.IntegrityError:
            # The step is already recorded: a duplicate that slipped past the claim.
            txn.rollback()
            return CommitResult.FENCED
        except BaseException:
            txn.rollback()
            raise
        return CommitResult.COMMITTED

    def renew_lease(self, claim: Claim, lease_seconds: float) -> bool:
        """Extend a held lease (heartbeat for long activities); False if it was lost."""
        s = schema.steps
        expires = schema.utcnow() + timedelta(seconds=lease_seconds)
        with self.transaction() as conn:
            result = conn.execute(
                sa.update(s).where(*held_by(claim)).values(lease_expires_at=expires)
            )
            return result.rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give a lease back without recording anything (the step will be redelivered)."""
        s = schema.steps
        with self.transaction() as conn:
            conn.execute(
                sa.update(s).where(*held_by(claim)).values(lease_owner=None, lease_expires_at=None)
            )


def claim_parameters(
    instance_id: str, token: str, worker_id: str, lease_seconds: float
) -> dict[str, Any]:
    now = schema.utcnow()
    return {
        "claim_instance_id": instance_id,
        "claim_token": token,
        "claim_worker_id": worker_id,
        "claim_now": now,
        "claim_expires": now + timedelta(seconds=lease_seconds),
    }


# -- the fencing SQL, written once for every dialect and for PostgreSQL's one statement ---


def version_clauses(instance_id: Any, version: Any) -> list[sa.ColumnElement[bool]]:
    """The instance is still at the version a transition was planned from."""
    t = schema.instances
    return [t.c.instance_id == instance_id, t.c.version == version]


def claim_clauses(
    instance_id: Any, token: Any, epoch: Any, owner: Any
) -> list[sa.ColumnElement[bool]]:
    """The step is still held by the claim that ran it."""
    s = schema.steps
    return [
        s.c.instance_id == instance_id,
        s.c.token == token,
        s.c.epoch == epoch,
        s.c.lease_owner == owner,
    ]


def held_by(claim: Claim) -> list[sa.ColumnElement[bool]]:
    return claim_clauses(claim.step.instance_id, claim.step.token, claim.epoch, claim.worker_id)


def transition_values(write: StepWrite, now: datetime) -> dict[str, Any]:
    """What every transition sets on its instance."""
    t = schema.instances
    return {"version": t.c.version + 1, "updated_at": now, **write.instance_changes.columns()}


def version_statement(snapshot: Snapshot, write: StepWrite, now: datetime) -> sa.Update:
    instance = snapshot.instance
    return (
        sa.update(schema.instances)
        .where(*version_clauses(instance.instance_id, instance.version))
        .values(**transition_values(write, now))
    )


def claimed_statement(claim: Claim) -> sa.Delete:
    return sa.delete(schema.steps).where(*held_by(claim))


def unleased_statement(instance_id: str, tokens: list[str], now: datetime) -> sa.Delete:
    s = schema.steps
    return sa.delete(s).where(
        s.c.instance_id == instance_id,
        s.c.token.in_(tokens),
        sa.or_(s.c.lease_owner.is_(None), s.c.lease_expires_at < now),
    )
