"""Recorded errors: rebuilt faithfully, never by running code the stored data chose,
contained when a workflow body raises them, and capped in size."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import signals as celery_signals
from celery.exceptions import Ignore, Reject, Retry, WorkerTerminate
from celery.utils.serialization import get_pickled_exception

from celery_romancy import (
    ActivityError,
    PoisonStepError,
    RetryPolicy,
    WorkflowContext,
)
from celery_romancy.definitions import ActivityDefinition, WorkflowDefinition
from celery_romancy.failures import MAX_ERROR_TEXT, describe_error, rebuild_error
from celery_romancy.replay import Failed, replay
from celery_romancy.runner import FailedAttempt
from celery_romancy.storage import HistoryEvent
from celery_romancy.tasks import as_task_outcome

from .harness import Harness
from .ledger import wait_for
from .services import redis_client

NO_RETRY = RetryPolicy(max_attempts=1)


class CardDeclined(Exception):  # noqa: N818 - the name a payment API would use
    """An error whose ``__init__`` takes other arguments than it passes to ``Exception``."""

    amount: Decimal  # annotated: comes back as a Decimal, not its JSON string

    def __init__(self, code: int, amount: Decimal) -> None:
        super().__init__(f"card declined with code {code}")
        self.code = code
        self.amount = amount


class HugeError(Exception):
    pass


class ExitingWorkflow(BaseException):
    """A ``BaseException`` that is not the engine's: a body raising it must not escape."""


# What the workflow bodies below caught, in every replay (the in-process worker's threads
# share this module).
caught: list[BaseException] = []


@pytest.fixture(autouse=True)
def _forget_caught() -> None:
    caught.clear()


# -- rebuilding faithfully ------------------------------------------------------------------


def test_an_error_whose_init_takes_other_arguments_comes_back_with_its_type_and_attributes() -> (
    None
):
    error = rebuild_error(describe_error(CardDeclined(51, Decimal("109.97")), "charge:1"))

    assert type(error) is CardDeclined
    assert error.args == ("card declined with code 51",)
    assert str(error) == "card declined with code 51"
    assert (error.code, error.amount) == (51, Decimal("109.97"))


def test_builtin_errors_come_back_through_their_own_init() -> None:
    missing = rebuild_error(describe_error(FileNotFoundError(2, "No such file", "/x")))
    assert type(missing) is FileNotFoundError
    # errno and strerror travel in args; filename is a C slot, not kept (see failures.py).
    assert (missing.errno, missing.strerror, missing.filename) == (2, "No such file", None)

    noted = ValueError("bad")
    noted.add_note("while pricing")
    rebuilt = rebuild_error(describe_error(noted))
    assert type(rebuilt) is ValueError
    assert rebuilt.__notes__ == ["while pricing"]


def register_card_flow(harness: Harness) -> None:
    romancy, ledger = harness.romancy, harness.ledger

    @romancy.activity("fl_pay", retry=NO_RETRY)
    def fl_pay(order_id: str) -> str:
        raise CardDeclined(51, Decimal("109.97"))

    @romancy.activity("fl_notify", retry=NO_RETRY)
    def fl_notify(message: str) -> str:
        ledger.record(f"fl_notify:{message}")
        return "sent"

    @romancy.workflow("fl_card")
    def fl_card(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
        try:
            fl_pay.execute(ctx, order_id)
        except CardDeclined as declined:
            caught.append(declined)
            notified = fl_notify.execute(ctx, f"declined {declined.code}")
            return {"code": declined.code, "amount": str(declined.amount), "notified": notified}
        return {"code": None}


def test_an_activity_error_whose_init_takes_other_arguments_is_caught_on_every_run(
    harness: Harness,
) -> None:
    register_card_flow(harness)
    instance_id = harness.romancy.start_workflow("fl_card", "FL-1")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "completed"
    assert instance.output_data == {"code": 51, "amount": "109.97", "notified": "sent"}
    assert harness.ledger.events() == ["fl_notify:declined 51"]
    # The first run after the failure was recorded, and the replay after fl_notify.
    assert len(caught) == 2
    assert all(type(e) is CardDeclined and e.amount == Decimal("109.97") for e in caught)


# -- nothing chosen by the stored data ---------------------------------------------------------


@pytest.mark.parametrize(
    "type_name",
    [
        "os.system",  # imported, but not a class
        "builtins.SystemExit",
        "builtins.KeyboardInterrupt",
        "builtins.GeneratorExit",
        "builtins.BaseException",
        "celery_romancy.errors.Suspend",  # the engine's control flow
        "celery_romancy.errors.LeaseHeldError",
        "builtins.object",
    ],
)
def test_a_record_naming_anything_but_an_exception_class_rebuilds_as_activity_error(
    type_name: str,
) -> None:
    error = rebuild_error({"type": type_name, "message": "crafted", "args": [0]})

    assert type(error) is ActivityError
    assert (error.type_name, error.message) == (type_name, "crafted")


def test_a_module_named_by_a_record_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"romancy_side_effect_{uuid.uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
        "class Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    record = {"type": f"{module}.Boom", "message": "crafted", "args": ["crafted"]}

    error = rebuild_error(record)

    assert type(error) is ActivityError
    assert not marker.exists()
    assert module not in sys.modules
    # The control: once the application itself imported it, the class is used.
    monkeypatch.delitem(sys.modules, module, raising=False)  # undone after the test
    importlib.import_module(module)
    assert marker.exists()
    assert type(rebuild_error(record)).__name__ == "Boom"


def _step() -> int:
    raise AssertionError("activities do not run during replay")


step = ActivityDefinition("step", _step, compensation=None, retry=NO_RETRY, queue=None)


def _calls_step(ctx: WorkflowContext) -> int:
    result: int = step.execute(ctx)
    return result


def test_a_crafted_system_exit_record_fails_the_workflow_instead_of_exiting() -> None:
    crafted = {"type": "builtins.SystemExit", "message": "bye", "args": [0], "step": "step:1"}
    history = [HistoryEvent(seq=0, step_id="step:1", kind="activity", name="step", error=crafted)]

    outcome = replay(WorkflowDefinition("w", _calls_step), "fl-2", {}, history)

    assert isinstance(outcome, Failed)
    assert outcome.error == crafted


def _raises(error: BaseException) -> WorkflowDefinition[Any, Any]:
    def body(ctx: WorkflowContext) -> None:
        raise error

    return WorkflowDefinition("w", body)


@pytest.mark.parametrize(
    ("error", "type_name"),
    [
        (SystemExit(3), "builtins.SystemExit"),
        (KeyboardInterrupt(), "builtins.KeyboardInterrupt"),
        (GeneratorExit(), "builtins.GeneratorExit"),
        (ExitingWorkflow("stop"), f"{__name__}.ExitingWorkflow"),
    ],
)
def test_whatever_the_body_raises_is_contained_as_a_failure(
    error: BaseException, type_name: str
) -> None:
    outcome = replay(_raises(error), "fl-3", {}, [])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == type_name


def test_a_worker_stop_raised_by_celery_is_not_a_workflow_failure() -> None:
    # Celery raises it into a solo-pool task on a hard shutdown: the step stays unrecorded.
    with pytest.raises(WorkerTerminate):
        replay(_raises(WorkerTerminate(1)), "fl-4", {}, [])


# -- sizes -----------------------------------------------------------------------------------------

MARKER = "…[truncated "


def raise_and_describe(error: BaseException) -> dict[str, Any]:
    try:
        raise error
    except BaseException as raised:  # noqa: BLE001 - to describe it with its traceback
        return describe_error(raised, "s:1")


def test_a_huge_message_is_cut_in_the_record_and_the_traceback_keeps_its_frames() -> None:
    record = raise_and_describe(HugeError("x" * 20_000_000))

    assert (
        record["message"] == "x" * MAX_ERROR_TEXT + f"{MARKER}{20_000_000 - MAX_ERROR_TEXT} chars]"
    )
    assert record["args"] is None  # longer than the cap: not kept
    assert len(record["traceback"]) <= MAX_ERROR_TEXT + 40
    assert "in raise_and_describe" in record["traceback"]
    assert len(json.dumps(record)) < 3 * MAX_ERROR_TEXT
    rebuilt = rebuild_error(record)
    assert type(rebuilt) is HugeError
    assert str(rebuilt) == record["message"]


def _ping(depth: int) -> None:
    if depth == 0:
        raise ValueError("deep")
    _pong(depth - 1)


def _pong(depth: int) -> None:
    _ping(depth)  # alternating frames: Python does not fold them into "repeated" lines


def test_a_huge_traceback_keeps_its_tail() -> None:
    try:
        _ping(400)
    except ValueError as error:
        record = describe_error(error)

    long_form = record["traceback"]
    assert long_form.startswith(MARKER)
    assert long_form.endswith("ValueError: deep\n")
    assert len(long_form) <= MAX_ERROR_TEXT + 40


def test_nul_in_an_error_message_is_stored_escaped() -> None:
    record = describe_error(ValueError("bad\x00byte"))

    assert record["message"] == "bad\\x00byte"
    assert "\x00" not in json.dumps(record)


def register_huge_flow(harness: Harness) -> None:
    romancy = harness.romancy

    @romancy.activity("fl_huge", retry=NO_RETRY)
    def fl_huge(order_id: str) -> str:
        raise HugeError("x" * 20_000_000)

    @romancy.workflow("fl_huge_flow")
    def fl_huge_flow(ctx: WorkflowContext, order_id: str) -> str:
        try:
            fl_huge.execute(ctx, order_id)
        except HugeError as huge:
            caught.append(huge)
            raise
        return "unreachable"


def test_a_20_mb_error_is_stored_small_and_still_rebuilds_with_its_type(
    harness: Harness,
) -> None:
    register_huge_flow(harness)
    instance_id = harness.romancy.start_workflow("fl_huge_flow", "FL-5")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=60)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"] == f"{__name__}.HugeError"
    assert instance.error["message"].endswith(f"{MARKER}{20_000_000 - MAX_ERROR_TEXT} chars]")
    [event] = harness.romancy.get_history(instance_id)
    assert len(json.dumps(event.error)) < 3 * MAX_ERROR_TEXT
    assert len(json.dumps(instance.error)) < 3 * MAX_ERROR_TEXT
    assert caught and all(type(e) is HugeError for e in caught)


# -- failures as Celery sees them: RETRY and FAILURE, the log -----------------------------


@dataclass
class TaskEnds:
    """Celery's own task_retry and task_failure signals for one app's tasks."""

    retries: list[tuple[str, BaseException]] = field(default_factory=list)  # (task, exc)
    failures: list[tuple[str, str, BaseException]] = field(default_factory=list)  # + task id
    lock: threading.Lock = field(default_factory=threading.Lock)

    def retried(self, task: str) -> list[BaseException]:
        with self.lock:
            return [exc for name, exc in self.retries if name == task]

    def failed(self, task: str) -> list[tuple[str, BaseException]]:
        with self.lock:
            return [(task_id, exc) for name, task_id, exc in self.failures if name == task]


@pytest.fixture
def task_ends(harness: Harness) -> Iterator[TaskEnds]:
    ends = TaskEnds()

    def on_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is harness.app:
            with ends.lock:
                ends.retries.append((sender.name, reason.exc))

    def on_failure(sender: Any = None, task_id: str = "", exception: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is harness.app:
            with ends.lock:
                ends.failures.append((sender.name, task_id, exception))

    celery_signals.task_retry.connect(on_retry, weak=False)
    celery_signals.task_failure.connect(on_failure, weak=False)
    yield ends
    celery_signals.task_retry.disconnect(on_retry)
    celery_signals.task_failure.disconnect(on_failure)


def unacked_messages_of(instance_id: str) -> list[str]:
    """Messages of ``instance_id`` the Redis broker still waits to see acknowledged."""
    unacked = redis_client().hgetall("unacked")
    return [str(m) for m in unacked.values() if instance_id.encode() in m]


@contextmanager
def worker_logging_to(harness: Harness, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The in-process worker, its log lines captured by ``caplog``."""
    with harness.worker():
        # The worker's logging setup emptied the root logger's handlers, pytest's too.
        logging.getLogger().addHandler(caplog.handler)
        try:
            yield
        finally:
            logging.getLogger().removeHandler(caplog.handler)


def test_failed_attempts_end_their_tasks_as_retry_then_failure_with_the_activity_error(
    harness: Harness, task_ends: TaskEnds
) -> None:
    instance_id = harness.romancy.start_workflow("flaky_flow", "K-9", 10)  # fails every time
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)
        wait_for(lambda: task_ends.failed("flaky"), 10, "task_failure")
        # Every message was acknowledged: none waits to come back.
        wait_for(lambda: not unacked_messages_of(instance_id), 10, "the acks")
    assert harness.queued() == 0

    assert instance.status == "failed"
    # Attempts 1 to 3 were retried (the engine sent each next attempt), the 4th is final.
    retried = task_ends.retried("flaky")
    # Sorted: the worker may start attempt n + 1 before Celery signals attempt n's retry.
    assert sorted(str(exc) for exc in retried) == [f"attempt {n} of K-9 failed" for n in (1, 2, 3)]
    assert {type(exc).__name__ for exc in retried} == {"FlakyError"}
    [(task_id, exc)] = task_ends.failed("flaky")
    assert type(exc).__name__ == "FlakyError"
    assert str(exc) == "attempt 4 of K-9 failed"
    # Each attempt ran once: Celery republished nothing, the broker redelivered nothing.
    assert harness.ledger.count("flaky:K-9") == 4
    # The failed task is the step the history row names, and the row says when it began.
    [event] = harness.romancy.get_history(instance_id)
    assert event.task_id == task_id
    assert event.attempt == 4
    assert event.started_at is not None and event.created_at is not None
    assert event.started_at <= event.created_at
    assert event.started_at.utcoffset() is not None and event.started_at.utcoffset().seconds == 0


def test_a_step_failing_for_good_is_a_failure_and_its_rollback_s_failures_too(
    harness: Harness, task_ends: TaskEnds
) -> None:
    (harness.folder / "flight-api-down").touch()
    instance_id = harness.romancy.start_workflow("trip", "T-9", fail_car=True)
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)
        wait_for(lambda: task_ends.failed("cancel_flight"), 10, "the undo's failure")
        wait_for(lambda: not unacked_messages_of(instance_id), 10, "the acks")
    assert harness.queued() == 0

    assert instance.status == "compensation_failed"
    [(_, car_error)] = task_ends.failed("book_car")
    assert (type(car_error).__name__, str(car_error)) == ("TerminalError", "no car for T-9")
    assert not task_ends.retried("book_car")  # TerminalError: never retried
    # The undo was retried twice (RETRY), then failed for good (FAILURE).
    assert [str(e) for e in task_ends.retried("cancel_flight")] == ["flight API unreachable"] * 2
    [(_, undo_error)] = task_ends.failed("cancel_flight")
    assert type(undo_error) is ConnectionError
    assert harness.ledger.count("book_car:T-9") == 1
    assert harness.ledger.count("cancel_flight-failed:T-9") == 3
    # The other compensations succeeded: no Celery failure for them.
    assert not task_ends.failed("cancel_hotel") and not task_ends.failed("send_apology")


def test_an_activity_error_whose_init_takes_other_arguments_fails_its_task_as_itself(
    harness: Harness, task_ends: TaskEnds
) -> None:
    register_card_flow(harness)
    instance_id = harness.romancy.start_workflow("fl_card", "FL-9")
    with harness.worker():
        assert harness.romancy.wait(instance_id, timeout=30).status == "completed"
        wait_for(lambda: task_ends.failed("fl_pay"), 10, "task_failure")
    [(_, declined)] = task_ends.failed("fl_pay")
    # Celery passes on an exception it cannot pickle wrapped, and shows (events, Flower,
    # its log) what the wrapper restores: the type's name and the message.
    shown = get_pickled_exception(declined)
    assert (type(shown).__name__, str(shown)) == ("CardDeclined", "card declined with code 51")


def test_failed_attempts_log_warnings_with_tracebacks_and_a_parked_saga_an_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    (harness.folder / "flight-api-down").touch()

    def logged(level: int, *words: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name.startswith("celery_romancy")
            and r.levelno == level
            and all(w in r.getMessage() for w in words)
        ]

    with caplog.at_level(logging.WARNING):
        flaky = harness.romancy.start_workflow("flaky_flow", "K-8", 1)
        trip = harness.romancy.start_workflow("trip", "T-8", fail_car=True)
        with worker_logging_to(harness, caplog):
            assert harness.romancy.wait(flaky, timeout=30).status == "completed"
            assert harness.romancy.wait(trip, timeout=30).status == "compensation_failed"
            (harness.folder / "flight-api-down").unlink()
            harness.romancy.retry_compensation(trip)
            assert harness.romancy.wait(trip, timeout=30).status == "failed"
            # Logged right after the commit the wait saw.
            wait_for(lambda: logged(logging.WARNING, "workflow trip", trip), 10, "the log")

    [retried] = logged(logging.WARNING, "flaky:1", flaky, "attempt 1", "retrying in")
    assert retried.exc_info is not None and retried.exc_info[0].__name__ == "FlakyError"
    assert "attempt 1 of K-8 failed" in caplog.text  # the traceback's last line
    [car] = logged(logging.WARNING, "book_car:1", trip, "attempt 1", "TerminalError")
    assert car.exc_info is not None
    undo = logged(logging.WARNING, "cancel_flight:undo:book_flight:1", trip, "ConnectionError")
    assert [r.exc_info is not None for r in undo] == [True] * 3
    [parked] = logged(logging.ERROR, trip, "compensation_failed", "book_flight:1")
    assert "retry-compensation" in parked.getMessage()
    [failed] = logged(logging.WARNING, "workflow trip", trip, "failed", "no car for T-8")
    assert failed.created > parked.created  # once its rollback was retried and done
    assert not logged(logging.WARNING, "workflow flaky_flow")  # it completed


def test_a_cancelled_saga_is_logged_at_warning(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_romancy"):
        instance_id = harness.romancy.start_workflow("order_saga", "C-9")
        harness.romancy.cancel(instance_id, reason="fraud suspected")
    [record] = [r for r in caplog.records if instance_id in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "cancelled: fraud suspected" in record.getMessage()


@pytest.fixture
def one_crash(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    """A harness whose steps are parked as poison after one worker died holding them."""
    h = Harness(database_url, tmp_path, romancy_lease_timeout=1, romancy_max_step_crashes=1)
    yield h
    h.close()


def test_a_poisoned_step_fails_its_task_and_parks_its_saga_with_an_error_log(
    one_crash: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    romancy = one_crash.romancy
    instance_id = romancy.start_workflow("order_saga", "P-9")
    [step] = romancy.storage.get_steps(instance_id)
    # A worker claims the step and dies: its lease runs out with the step unrecorded.
    assert romancy.storage.claim(instance_id, step.token, "dead-worker", 0.2) is not None
    failures: list[BaseException] = []

    def on_failure(sender: Any = None, exception: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is one_crash.app:
            failures.append(exception)

    celery_signals.task_failure.connect(on_failure, weak=False)
    try:
        with caplog.at_level(logging.WARNING), worker_logging_to(one_crash, caplog):
            parked = romancy.wait(instance_id, timeout=30)
            wait_for(lambda: failures, 10, "task_failure")
    finally:
        celery_signals.task_failure.disconnect(on_failure)

    assert parked.status == "failed"
    [failure] = failures
    # The engine's own error, as itself: it pickles (Celery checks), with its attributes.
    assert type(failure) is PoisonStepError
    assert (failure.instance_id, failure.step_id, failure.crashes) == (instance_id, "reserve:1", 1)
    assert f"step reserve:1 of instance {instance_id} lost its worker 1 times" in str(failure)
    assert one_crash.ledger.count("reserve:P-9") == 0  # the step never ran again
    [record] = [
        r
        for r in caplog.records
        if r.name.startswith("celery_romancy") and instance_id in r.getMessage()
    ]
    assert record.levelno == logging.ERROR
    assert "parked until `romancy resume`" in record.getMessage()


def test_as_task_outcome_never_hands_celery_an_activity_s_own_task_predicate() -> None:
    flaky = ValueError("flaky")
    retry = as_task_outcome(FailedAttempt(flaky, 1.5))
    assert isinstance(retry, Retry)
    assert (retry.exc, retry.when, retry.__cause__) == (flaky, 1.5, flaky)
    assert as_task_outcome(FailedAttempt(flaky)) is flaky
    # An activity that raised Celery's Reject or Ignore failed like any other: Celery must
    # not requeue or silently ack its message.
    for own in (Reject("no", requeue=True), Ignore(), Retry()):
        failure = as_task_outcome(FailedAttempt(own))
        assert isinstance(failure, ActivityError)
        assert failure.type_name == f"celery.exceptions.{type(own).__name__}"


@pytest.fixture
def autoretrying(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    """An app whose tasks all autoretry on any error (task_annotations)."""
    annotations = {"*": {"autoretry_for": (Exception,), "max_retries": 3}}
    h = Harness(database_url, tmp_path, task_annotations=annotations)
    yield h
    h.close()


def test_celery_autoretry_from_the_app_s_config_never_republishes_a_failed_step(
    autoretrying: Harness,
) -> None:
    failures: list[str] = []

    def on_failure(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is autoretrying.app:
            failures.append(sender.name)

    celery_signals.task_failure.connect(on_failure, weak=False)
    try:
        instance_id = autoretrying.romancy.start_workflow("trip", "A-1", fail_car=True)
        with autoretrying.worker():
            assert autoretrying.romancy.wait(instance_id, timeout=30).status == "failed"
            wait_for(lambda: failures, 10, "task_failure")
    finally:
        celery_signals.task_failure.disconnect(on_failure)
    assert failures == ["book_car"]
    assert autoretrying.ledger.count("book_car:A-1") == 1
    assert autoretrying.queued() == 0


def test_a_prefork_worker_retries_and_fails_a_step_as_celery_would_and_logs_it(
    harness: Harness,
) -> None:
    """Across the pool's process boundary too: RETRY and FAILURE in Celery's own log
    lines, ours at WARNING with the traceback, every message acknowledged."""
    instance_id = harness.romancy.start_workflow("flaky_flow", "K-7", 10)  # always fails
    worker = harness.worker_process(pool="prefork").start()
    assert harness.romancy.wait(instance_id, timeout=60).status == "failed"
    wait_for(lambda: "raised unexpected: FlakyError" in worker.log(), 10, "the failure line")
    log = worker.log()
    assert log.count("] retry: Retry in") == 3
    assert "raised unexpected: FlakyError('attempt 4 of K-7 failed')" in log
    lines = log.splitlines()
    for attempt in (1, 2, 3, 4):  # logged by the pool process that ran the attempt
        failed = f"activity flaky:1 of flaky_flow {instance_id} failed (attempt {attempt})"
        assert [line for line in lines if failed in line and "WARNING/ForkPoolWorker" in line]
    assert 'raise FlakyError(f"attempt {attempt} of {key} failed")' in log  # tracebacks
    assert f"workflow flaky_flow {instance_id} failed" in log
    assert harness.ledger.count("flaky:K-7") == 4
    wait_for(lambda: not unacked_messages_of(instance_id), 10, "the acks")
    assert harness.queued() == 0
