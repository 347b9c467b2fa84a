"""Retention: ``romancy.purge``, its beat job and ``celery -A proj romancy purge``.

Real workflows end in every status on a real worker; then some are aged by moving their
``updated_at`` back (what time would do to the stored rows), and the purge must take
exactly the finished, old, whole trees with every row that belongs to them, and leave
every other row as it was.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_romancy import ConfigurationError, InvalidArgumentsError, Romancy
from celery_romancy import retention as retention_module
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.maintenance import beat_schedule
from celery_romancy.retention import PURGE_TASK, PurgeReport
from celery_romancy.storage import schema
from celery_romancy.storage.purge import owned_tables

from .conftest import empty_database
from .harness import Harness
from .ledger import wait_for
from .loop_flows import Tally
from .processes import ROOT, celery
from .purge_flows import register_purge_flows

OLD = timedelta(days=40)
RETENTION = timedelta(days=30)
WAITING = "waiting_for_event"


# -- the scene: one instance per case -------------------------------------------------------


def run_scene(h: Harness) -> dict[str, str]:
    """Start one workflow per case, bring each to its status, age all but the recent."""
    register_purge_flows(h.romancy, h.folder)
    r = h.romancy
    with h.worker():
        ids = {
            "completed": r.start_workflow("p_done", "a"),
            "failed": r.start_workflow("p_fails", "b"),
            "cancelled": r.start_workflow("p_waits", "c"),
            "event_consumed": r.start_workflow("p_waits", "d"),
            "undone_parent": r.start_workflow("p_parent", "e", "fail"),
            "done_parent": r.start_workflow("p_parent", "f", "done"),
            "live_parent": r.start_workflow("p_parent", "g", "wait"),
            "compensation_failed": r.start_workflow("p_fails", "fragile-h"),
            "live": r.start_workflow("p_waits", "i"),
            "recent": r.start_workflow("p_done", "j"),
            "unrelayed": r.start_workflow("p_done", "k"),
        }
        waiting = ("cancelled", "event_consumed", "live", "live_parent")
        for case in waiting:
            wait_for(lambda c=case: status(r, ids[c]) == WAITING, 60, f"{case} to wait")
        r.cancel(ids["cancelled"], "no longer wanted")
        r.send_event("p_go", {"ok": True}, correlation_id="d")
        for case, instance_id in ids.items():
            if case not in ("live", "live_parent"):
                r.wait(instance_id, timeout=60)
        wait_for(lambda: all_published(r), 60, "the outbox rows to be relayed")
    for parent in ("undone_parent", "done_parent", "live_parent"):
        (child,) = r.find_instances(parent=ids[parent])
        ids[f"{parent}.child"] = child.instance_id
    expected = {
        "completed": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
        "event_consumed": "completed",
        "undone_parent": "failed",
        "undone_parent.child": "compensated",
        "done_parent": "completed",
        "done_parent.child": "completed",
        "live_parent": WAITING,
        "live_parent.child": "completed",
        "compensation_failed": "compensation_failed",
        "live": WAITING,
        "recent": "completed",
        "unrelayed": "completed",
    }
    assert {case: status(r, i) for case, i in ids.items()} == expected
    # Time passes for all but the recent instance and the child that a finished,
    # old parent started last (an abandoned child may well end long after its root).
    age(r, [i for case, i in ids.items() if case not in ("recent", "done_parent.child")], OLD)
    # A broker outage: the relay of this instance's event is still to be retried.
    with r.storage.transaction() as conn:
        conn.execute(
            sa.update(schema.outbox)
            .where(schema.outbox.c.instance_id == ids["unrelayed"])
            .values(status="pending", available_at=schema.utcnow() + timedelta(hours=1))
        )
    return ids


PURGED = (
    "completed",
    "failed",
    "cancelled",
    "event_consumed",
    "undone_parent",
    "undone_parent.child",
)


def status(romancy: Romancy, instance_id: str) -> str:
    return str(romancy.get_instance(instance_id).status)


def all_published(romancy: Romancy) -> bool:
    rows = romancy.storage.get_outbox()
    return len(rows) == 3 and {row.status for row in rows} == {"published"}


def age(romancy: Romancy, instance_ids: list[str], by: timedelta) -> None:
    i = schema.instances
    with romancy.storage.transaction() as conn:
        conn.execute(
            sa.update(i)
            .where(i.c.instance_id.in_(instance_ids))
            .values(updated_at=schema.utcnow() - by)
        )


def rows_by_instance(romancy: Romancy) -> dict[str, Counter[str]]:
    """Every table's rows counted by the instance they belong to."""
    owners = {t.name: t.c.instance_id for t in [*owned_tables(), schema.instances]}
    owners["romancy_events"] = schema.events.c.consumed_by
    owners["romancy_outbox"] = schema.outbox.c.instance_id
    found: dict[str, Counter[str]] = {}
    with romancy.storage.engine.connect() as conn:
        for table, owner in owners.items():
            stmt = sa.select(owner, sa.func.count()).where(owner.is_not(None)).group_by(owner)
            found[table] = Counter({row[0]: row[1] for row in conn.execute(stmt)})
    return found


def without(rows: dict[str, Counter[str]], gone: set[str]) -> dict[str, Counter[str]]:
    return {t: Counter({i: n for i, n in c.items() if i not in gone}) for t, c in rows.items()}


def deleted_counts(rows: dict[str, Counter[str]], gone: set[str]) -> dict[str, int]:
    return {t: sum(n for i, n in c.items() if i in gone) for t, c in rows.items()}


# -- the tests ---------------------------------------------------------------------------


def test_purge_takes_exactly_the_finished_old_trees_and_all_their_rows(harness: Harness) -> None:
    r = harness.romancy
    ids = run_scene(harness)
    gone = {ids[case] for case in PURGED}
    before = rows_by_instance(r)
    # The purged instances have rows in every table a purge must empty.
    for table in (
        "romancy_history",
        "romancy_attempts",
        "romancy_compensations",
        "romancy_search",
        "romancy_events",
        "romancy_outbox",
    ):
        assert deleted_counts(before, gone)[table] > 0, table

    dry = r.purge(RETENTION, dry_run=True)
    assert rows_by_instance(r) == before  # counted, nothing deleted
    report = r.purge(RETENTION)

    assert rows_by_instance(r) == without(before, gone)
    assert report.rows == deleted_counts(before, gone)
    assert report.statuses == {"cancelled": 1, "compensated": 1, "completed": 2, "failed": 2}
    assert report.instances == len(gone) == 6
    assert (dry.rows, dry.statuses, dry.dry_run, report.dry_run) == (
        report.rows,
        report.statuses,
        True,
        False,
    )

    # Once its event is relayed, the last old finished root goes too; nothing after it.
    with r.storage.transaction() as conn:
        conn.execute(sa.update(schema.outbox).values(available_at=schema.utcnow()))
    assert r.relay_outbox() == 1
    again = r.purge(RETENTION)
    assert again.statuses == {"completed": 1}
    assert r.storage.get_instance(ids["unrelayed"]) is None
    assert r.storage.get_outbox(ids["unrelayed"]) == []
    assert r.purge(RETENTION).rows == dict.fromkeys(report.rows, 0)
    kept = {case for case in ids if case not in PURGED and case != "unrelayed"}
    assert {case for case in kept if r.storage.get_instance(ids[case]) is not None} == kept


class Heard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_status_filter_and_the_retention_setting_choose_what_goes(tmp_path: Path) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'history.db'}", tmp_path, romancy_retention=3600)
    try:
        r = h.romancy
        register_purge_flows(r, tmp_path)
        with h.worker():
            done = r.start_workflow("p_done", "a")
            failed = r.start_workflow("p_fails", "b")
            for instance_id in (done, failed):
                r.wait(instance_id, timeout=60)
        age(r, [done, failed], timedelta(hours=2))
        assert r.purge(timedelta(hours=3)).instances == 0  # not old enough for that
        # On the logger itself: the worker set up logging its own way, without caplog.
        heard, logger = Heard(), logging.getLogger("celery_romancy.retention")
        logger.addHandler(heard)
        level = logger.level
        logger.setLevel(logging.INFO)
        try:
            only_failed = r.purge(status="failed")  # older than romancy_retention, 1 h
        finally:
            logger.removeHandler(heard)
            logger.setLevel(level)
        (line,) = [rec.getMessage() for rec in heard.records if rec.levelno == logging.INFO]
        assert line.startswith("celery_romancy: purged 1 finished instances that ended before")
        assert line.endswith(
            "(failed 1); rows: romancy_attempts 1, romancy_compensations 1, "
            "romancy_history 2, romancy_instances 1"
        )
        assert (only_failed.statuses, only_failed.cutoff < schema.utcnow()) == ({"failed": 1}, True)
        assert r.storage.get_instance(failed) is None
        assert r.storage.get_instance(done) is not None
    finally:
        h.close()


@pytest.mark.parametrize("setting", ["romancy_retention", "romancy_purge_interval"])
def test_the_retention_settings_must_be_positive_numbers(setting: str) -> None:
    app = Celery("t")
    app.conf[setting] = 0
    with pytest.raises(ConfigurationError, match=f"{setting} must be a positive number"):
        Romancy(app).settings  # noqa: B018


def park(romancy: Romancy, instance_ids: list[str]) -> None:
    """Make these look as a worker whose code cannot replay their history leaves them:
    ``failed`` by a ``NonDeterminismError``, not rolled back, for an operator to resume."""
    error = {"type": "celery_romancy.errors.NonDeterminismError", "message": "diverged"}
    i = schema.instances
    with romancy.storage.transaction() as conn:
        conn.execute(sa.update(i).where(i.c.instance_id.in_(instance_ids)).values(error=error))


def test_an_instance_parked_failed_for_an_operator_stays_with_its_tree(
    harness: Harness,
) -> None:
    r = harness.romancy
    register_purge_flows(r, harness.folder)
    with harness.worker():
        parked, failed = r.start_workflow("p_fails", "a"), r.start_workflow("p_fails", "b")
        parent = r.start_workflow("p_parent", "c", "done")
        for instance_id in (parked, failed, parent):
            r.wait(instance_id, timeout=60)
    (child,) = r.find_instances(parent=parent)
    with r.storage.transaction() as conn:
        i = schema.instances
        conn.execute(
            sa.update(i).where(i.c.instance_id == child.instance_id).values(status="failed")
        )
    park(r, [parked, child.instance_id])
    age(r, [parked, failed, parent, child.instance_id], OLD)

    dry = r.purge(RETENTION, dry_run=True)
    report = r.purge(RETENTION)
    assert dry.statuses == report.statuses == {"failed": 1}
    assert r.storage.get_instance(failed) is None
    for kept in (parked, parent, child.instance_id):
        assert r.storage.get_instance(kept) is not None, kept


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"status": "running"}, "status 'running' is never purged"),
        ({"status": ["completed", "compensation_failed"]}, "'compensation_failed' is never"),
        ({"status": "finished"}, "status 'finished' is no status"),
        ({"status": []}, "give at least one status"),
        ({"older_than": -5}, "older_than must be more than zero"),
        ({"older_than": "7d"}, "older_than takes a timedelta or a number of seconds"),
        ({"older_than": True}, "older_than takes a timedelta"),
        ({"older_than": float("inf")}, "older_than takes a timedelta or a number of seconds"),
        ({"older_than": float("nan")}, "older_than takes a timedelta or a number of seconds"),
        ({"older_than": 1e300}, "older_than is too long"),
        ({"older_than": timedelta(days=999_999)}, "older_than reaches back before the year 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_deleted(
    harness: Harness, arguments: dict[str, object], message: str
) -> None:
    r = harness.romancy
    with harness.worker():
        done = r.start_workflow("instant", 1)
        r.wait(done, timeout=60)
    age(r, [done], OLD)
    with pytest.raises(InvalidArgumentsError, match=message):
        r.purge(**arguments)  # type: ignore[arg-type]
    assert r.storage.get_instance(done) is not None


def test_the_beat_job_runs_the_same_purge(harness: Harness) -> None:
    r = harness.romancy
    entry = beat_schedule(r.settings)[PURGE_TASK]
    assert (entry["task"], entry["schedule"]) == (PURGE_TASK, 24 * 3600)
    assert entry["options"] == {"queue": r.settings.maintenance_queue}
    with harness.worker():
        old, recent = r.start_workflow("instant", 1), r.start_workflow("instant", 2)
        r.wait(old, timeout=60)
        r.wait(recent, timeout=60)
        age(r, [old], OLD)  # older than the default retention, 30 days
        result = r.app.send_task(entry["task"], **entry["options"])
        wait_for(lambda: r.storage.get_instance(old) is None, 60, "the beat job to purge")
    assert r.storage.get_instance(recent) is not None
    assert result.id  # sent through the broker, run by the worker


def test_two_purges_at_once_delete_each_tree_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = harness.romancy
    register_purge_flows(r, harness.folder)
    with harness.worker():
        started = [r.start_workflow("p_parent", f"t{n}", "done") for n in range(6)]
        for instance_id in started:
            r.wait(instance_id, timeout=60)
    everything = [i.instance_id for i in r.find_instances(limit=1000)]
    age(r, everything, OLD)
    before = rows_by_instance(r)
    monkeypatch.setattr(retention_module, "BATCH", 1)  # many short batches to interleave
    reports: list[PurgeReport] = []
    racers = [threading.Thread(target=lambda: reports.append(r.purge(RETENTION))) for _ in "ab"]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
    assert len(reports) == 2
    total = Counter[str]()
    for report in reports:
        total.update(report.rows)
    owned = [t.name for t in [*owned_tables(), schema.instances]]
    # Each tree's rows deleted by exactly one of the two.
    assert {t: total[t] for t in owned} == {
        t: n for t, n in deleted_counts(before, set(everything)).items() if t in owned
    }
    assert total["romancy_instances"] == 12
    assert rows_by_instance(r)["romancy_instances"] == Counter()


# -- chains of runs (continue_as_new) --------------------------------------------------------
#
# ``l_counter`` waits for a ``tick`` each round and continues as new until its last round.
# The first run's id is the chain's address: it goes only with the whole chain.


def run_id(first: str, n: int) -> str:
    return first if n == 0 else f"{first}~{n}"


def runs(first: str, *numbers: int) -> list[str]:
    return [run_id(first, n) for n in numbers]


def current_waits(romancy: Romancy, first: str, n: int) -> bool:
    run = romancy.get_instance(romancy.storage.last_run(first))
    return run.instance_id == run_id(first, n) and run.status == WAITING


def advance(romancy: Romancy, first: str, to: int) -> None:
    """Tick ``first``'s chain (addressed by its first id) until its run ``to`` waits."""
    wait_for(lambda: current_waits(romancy, first, 0), 60, f"{first} to wait")
    for n in range(1, to + 1):
        romancy.send_event("tick", n, instance_id=first)
        wait_for(lambda n=n: current_waits(romancy, first, n), 60, f"{run_id(first, n)}")


def finish(romancy: Romancy, first: str, rounds: int) -> Tally:
    """Run a chain of ``rounds`` runs to its end: every tick sent to the first id at once."""
    for tick in range(1, rounds + 1):
        romancy.send_event("tick", tick, instance_id=first)
    result: Tally = romancy.result(first, timeout=60)
    return result


def purged_alike(romancy: Romancy) -> PurgeReport:
    """Purge with the default statuses, after a dry run that must count the same."""
    dry = romancy.purge(RETENTION, dry_run=True)
    report = romancy.purge(RETENTION)
    assert (dry.rows, dry.statuses) == (report.rows, report.statuses)
    return report


def test_a_live_chain_loses_its_old_middle_runs_and_keeps_its_address(harness: Harness) -> None:
    r = harness.romancy
    first = r.start_workflow("l_counter", Tally(0, 0), 6, instance_id="live-chain")
    with harness.worker():
        advance(r, first, 4)  # runs 0-3 continued, run 4 waits for its tick
    age(r, runs(first, 0, 1, 2, 3), OLD)
    before = rows_by_instance(r)
    middle = set(runs(first, 1, 2, 3))

    report = purged_alike(r)

    # Three middle runs in one batch: each re-pointed past, the live run now continues
    # the first run, which stays (the chain's address), as does the live run.
    assert report.statuses == {"continued": 3}
    assert report.rows == deleted_counts(before, middle)
    assert deleted_counts(before, middle)["romancy_history"] == 6
    assert rows_by_instance(r) == without(before, middle)
    assert r.get_instance(run_id(first, 4)).continued_from == first
    assert r.get_instance(first).status == "continued"
    with harness.worker():
        assert r.send_event("tick", 5, instance_id=first)
        wait_for(lambda: current_waits(r, first, 5), 60, "the run after the purge to wait")
        assert r.send_event("tick", 6, instance_id=first)
        assert r.result(first, timeout=60) == Tally(6, 21)
    assert r.wait(first).instance_id == run_id(first, 5)


def test_a_finished_old_chain_goes_whole_by_its_last_runs_status(harness: Harness) -> None:
    r = harness.romancy
    first = r.start_workflow("l_counter", Tally(0, 0), 3, instance_id="done-chain")
    with harness.worker():
        assert finish(r, first, 3) == Tally(3, 6)
    chain = runs(first, 0, 1, 2)
    age(r, chain, OLD)
    before = rows_by_instance(r)
    rows = deleted_counts(before, set(chain))
    assert [rows[t] for t in ("romancy_history", "romancy_compensations", "romancy_events")] == [
        6,
        3,
        3,
    ]

    # The chain's status is its last run's, as a tree's is its root's: purging the
    # completed takes the whole chain, its continued runs with it.
    dry = r.purge(RETENTION, status="completed", dry_run=True)
    report = r.purge(RETENTION, status="completed")

    assert report.statuses == {"completed": 1, "continued": 2}
    assert report.rows == deleted_counts(before, set(chain))
    assert (dry.rows, dry.statuses) == (report.rows, report.statuses)
    assert rows_by_instance(r) == without(before, set(chain))
    assert all(not counts for counts in rows_by_instance(r).values())


def test_a_finished_chain_whose_last_run_is_recent_keeps_its_first_run(
    harness: Harness,
) -> None:
    r = harness.romancy
    first = r.start_workflow("l_counter", Tally(0, 0), 4, instance_id="recent-chain")
    with harness.worker():
        assert finish(r, first, 4) == Tally(4, 10)
    age(r, runs(first, 0, 1, 2), OLD)

    report = purged_alike(r)

    assert report.statuses == {"continued": 2}
    assert [r.storage.get_instance(i) is not None for i in runs(first, 0, 1, 2, 3)] == [
        True,
        False,
        False,
        True,
    ]
    assert r.get_instance(run_id(first, 3)).continued_from == first
    assert r.result(first) == Tally(4, 10)
    assert r.wait(first).instance_id == run_id(first, 3)
    # Once its last run is old too, what is left of the chain goes, whole.
    age(r, [run_id(first, 3)], OLD)
    assert purged_alike(r).statuses == {"completed": 1, "continued": 1}
    assert r.find_instances(workflow="l_counter") == []


def test_a_dry_run_counts_what_a_purge_of_chains_and_trees_deletes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = harness.romancy
    ids = {
        "live": r.start_workflow("l_counter", Tally(0, 0), 9, instance_id="c-live"),
        "done": r.start_workflow("l_counter", Tally(0, 0), 3, instance_id="c-done"),
        "recent": r.start_workflow("l_counter", Tally(0, 0), 3, instance_id="c-recent"),
        "parked": r.start_workflow("l_counter", Tally(0, 0), 9, instance_id="c-parked"),
        # Trees whose child workflow continues as new: its runs are no roots.
        "done_tree": r.start_workflow("l_parent", 2),
        "live_tree": r.start_workflow("l_parent", -1),
    }
    child = f"{ids['live_tree']}/child:l_child_loop:1"
    with harness.worker():
        advance(r, ids["live"], 3)
        advance(r, ids["parked"], 2)
        finish(r, ids["done"], 3)
        finish(r, ids["recent"], 3)
        assert r.result(ids["done_tree"], timeout=60) == 2
        wait_for(lambda: r.storage.instance_exists(child), 60, "the endless child")
        for n in (1, 2):
            r.send_event("tick", instance_id=child)
            wait_for(lambda n=n: current_waits(r, child, n), 60, f"{child}~{n}")
    # The parked chain's last run failed, parked for an operator to resume.
    parked_run = run_id(ids["parked"], 2)
    with r.storage.transaction() as conn:
        i = schema.instances
        conn.execute(sa.update(i).where(i.c.instance_id == parked_run).values(status="failed"))
    park(r, [parked_run])
    everything = [i.instance_id for i in r.find_instances(limit=1000)]
    age(r, [i for i in everything if i != run_id(ids["recent"], 2)], OLD)
    done_tree = {i.instance_id for i in r.find_instances(root=ids["done_tree"], limit=1000)}
    assert len(done_tree) == 4  # the parent and its child's three runs
    gone = {
        *runs(ids["live"], 1, 2),
        *runs(ids["done"], 0, 1, 2),
        *runs(ids["recent"], 1),
        *runs(ids["parked"], 1),
        *done_tree,
    }
    before = rows_by_instance(r)
    monkeypatch.setattr(retention_module, "BATCH", 2)  # chains across batches

    report = purged_alike(r)

    assert report.rows == deleted_counts(before, gone)
    assert rows_by_instance(r) == without(before, gone)
    assert report.statuses == {"completed": 3, "continued": 8}
    for first in (ids["live"], ids["recent"], ids["parked"]):
        assert r.storage.last_run(first) != first  # still the chain's address
    assert r.storage.last_run(child) == run_id(child, 2)


def test_runs_another_transaction_holds_wait_for_a_later_purge(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On PostgreSQL, as two purges at once (or a purge and a worker's commit) meet: a
    middle run whose next run is held elsewhere stays, and so does a chain one of whose
    runs is held, rather than a purge re-pointing around a run another one deletes."""
    h = Harness(empty_database("postgresql", request, tmp_path), tmp_path)
    request.addfinalizer(h.close)
    r = h.romancy
    # Rows as continuations leave them: a live chain "a" and a finished chain "b".
    for first, last_status, length in (("a", WAITING, 4), ("b", "completed", 3)):
        for n in range(length):
            values = {
                "instance_id": run_id(first, n),
                "workflow_name": "l_counter",
                "input_data": {},
                "status": last_status if n == length - 1 else "continued",
                "continued_from": run_id(first, n - 1) if n else None,
            }
            r.storage.create_instance(values)
    age(r, [*runs("a", 0, 1, 2), *runs("b", 0, 1, 2)], OLD)
    i = schema.instances
    with r.storage.engine.connect() as other:
        held = sa.select(i.c.instance_id).where(i.c.instance_id.in_(["a~3", "b~1"]))
        assert len(other.execute(held.with_for_update()).all()) == 2

        report = r.purge(RETENTION)

        other.rollback()
    # a~1 went (its next run, a~2, was this purge's too); a~2 stayed (a~3 held), as did
    # all of chain b (b~1 held).
    assert report.statuses == {"continued": 1}
    left = {x.instance_id: x.continued_from for x in r.find_instances(limit=100)}
    assert left == {"a": None, "a~2": "a", "a~3": "a~2", "b": None, "b~1": "b", "b~2": "b~1"}
    again = r.purge(RETENTION)
    assert again.statuses == {"completed": 1, "continued": 3}
    assert {x.instance_id: x.continued_from for x in r.find_instances(limit=100)} == {
        "a": None,
        "a~3": "a",
    }


# -- the command line -------------------------------------------------------------------------


def cli(h: Harness, *args: str) -> Result:
    context = CLIContext(app=h.app, no_color=True, workdir=None)
    return CliRunner().invoke(romancy_command, ["purge", *args], obj=context)


def test_the_purge_command_counts_with_dry_run_and_then_deletes(harness: Harness) -> None:
    r = harness.romancy
    register_purge_flows(r, harness.folder)
    with harness.worker():
        done = r.start_workflow("p_done", "a")
        failed = r.start_workflow("p_fails", "b")
        recent = r.start_workflow("p_done", "c")
        for instance_id in (done, failed, recent):
            r.wait(instance_id, timeout=60)
    age(r, [done, failed], timedelta(days=8))

    dry = cli(harness, "--older-than", "7d", "--status", "completed", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would purge 1 instances that ended before ")
    assert "completed  1" in dry.output
    assert r.storage.get_instance(done) is not None

    done_run = cli(harness, "--older-than", "1d12h", "--status", "completed")
    assert done_run.exit_code == 0, done_run.output
    assert done_run.output.startswith("purged 1 instances")
    assert [line.split() for line in done_run.output.splitlines() if "romancy_history" in line]
    rest = cli(harness, "--older-than", "8000m")  # 5.6 days: the failed one
    assert rest.output.startswith("purged 1 instances"), rest.output
    assert (r.storage.get_instance(done), r.storage.get_instance(failed)) == (None, None)
    assert r.storage.get_instance(recent) is not None

    # The ``celery`` program itself, as an operator types it.
    age(r, [recent], timedelta(days=8))
    typed = subprocess.run(
        celery("tests.worker_app", "romancy", "purge", "--older-than", "7d"),
        cwd=ROOT,
        env=harness._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert typed.returncode == 0, typed.stderr
    assert typed.stdout.startswith("purged 1 instances")
    assert r.storage.get_instance(recent) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "7"], "'7' is no duration"),
        (["--older-than", "7w"], "'7w' is no duration"),
        (["--older-than", "0d"], "'0d' must be more than zero"),
        (["--older-than", "99999999999d"], "'99999999999d' is too long"),
        (["--status", "running"], "'running' is not one of"),
        (["--status", "compensation_failed"], "'compensation_failed' is not one of"),
    ],
)
def test_the_purge_command_refuses_bad_input(
    harness: Harness, args: list[str], message: str
) -> None:
    r = harness.romancy
    with harness.worker():
        done = r.start_workflow("instant", 1)
        r.wait(done, timeout=60)
    age(r, [done], OLD)
    result = cli(harness, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert r.storage.get_instance(done) is not None
