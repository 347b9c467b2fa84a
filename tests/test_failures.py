"""Recorded errors: rebuilt faithfully, never by running code the stored data chose,
contained when a workflow body raises them, and capped in size."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import WorkerTerminate

from celery_romancy import ActivityError, RetryPolicy, WorkflowContext
from celery_romancy.definitions import ActivityDefinition, WorkflowDefinition
from celery_romancy.failures import MAX_ERROR_TEXT, describe_error, rebuild_error
from celery_romancy.replay import Failed, replay
from celery_romancy.storage import HistoryEvent

from .harness import Harness

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
