"""Planning without a database: a replay's outcome and the steps in flight in, a plan out.

Here the rules that tie a parent to its children: who waits for whom, who is cancelled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery_romancy.commands import ActivityCommand
from celery_romancy.planning import final_status, next_compensation, plan_outcome
from celery_romancy.replay import Completed, Failed, Waiting
from celery_romancy.states import Status, StepKind
from celery_romancy.storage import CompensationRecord, StepRef, WorkflowInstance

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def instance(**changes: Any) -> WorkflowInstance:
    values: dict[str, Any] = {
        "instance_id": "p",
        "workflow_name": "parent",
        "status": "running",
        "input_data": {},
        "output_data": None,
        "error": None,
        "version": 3,
        "cancel_reason": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return WorkflowInstance(**{**values, **changes})


def child_step(token: str, child_id: str, abandon: bool = False) -> StepRef:
    return StepRef(token, f"child:c:{token}", StepKind.CHILD, False, child_id, abandon)


def start(step_id: str, child_id: str, policy: str = "cancel") -> ActivityCommand:
    arguments = {"instance_id": child_id, "parent_close": policy, "input": {"x": 1}}
    return ActivityCommand(StepKind.CHILD, "c", step_id, 0, arguments)


def registered(step_id: str, kind: str = "activity") -> CompensationRecord:
    return CompensationRecord(0, step_id, "undo", {}, "registered", None, 0, NOW, None, kind)


def plan(
    outcome: Any,
    steps: list[StepRef],
    started: tuple[ActivityCommand, ...] | list[ActivityCommand] = (),
    **kw: Any,
) -> Any:
    return plan_outcome(
        kw.get("of", instance()),
        kw.get("cancel_reason"),
        outcome,
        steps,
        lambda: [registered("a:1")],
        lambda _: None,
        started=started,
    )


def test_a_started_child_gets_a_step_without_a_message_and_is_started_with_the_commit() -> None:
    result = plan(Waiting(()), [], [start("child:c:1", "p/child:c:1")])
    [step] = result.add
    assert step.command.kind is StepKind.CHILD and result.dispatches == []
    assert (step.wait_correlation_id, step.wait_event_type) == ("p/child:c:1", "cancel")
    assert "input" not in step.command.arguments  # kept in the child's own row only
    assert [c.arguments["input"] for c in result.start_children] == [{"x": 1}]
    assert result.change.status is Status.RUNNING


def test_a_failing_parent_cancels_the_children_it_holds_and_waits_for_them() -> None:
    steps = [child_step("t1", "held"), child_step("t2", "free", abandon=True)]
    result = plan(Failed({"type": "E"}), steps)
    assert result.change.status is Status.COMPENSATING and result.change.error == {"type": "E"}
    assert result.cancel_children == ["held"]
    assert result.remove == ["t2"]  # the abandoned child is let go
    assert result.add == [] and result.dispatches == []  # no compensation yet


def test_a_failing_parent_with_no_running_child_rolls_back_at_once() -> None:
    result = plan(Failed({"type": "E"}), [child_step("t2", "free", abandon=True)])
    assert [s.command.step_id for s in result.add] == ["a:1"]
    assert result.add[0].command.kind is StepKind.COMPENSATION


def test_a_completing_parent_cancels_held_children_even_those_it_just_started() -> None:
    started = [start("child:c:1", "new"), start("child:c:2", "let-go", "abandon")]
    result = plan(Completed("ok"), [child_step("t1", "old")], started)
    assert result.change.status is Status.COMPLETED
    assert sorted(result.cancel_children) == ["new", "old"]
    assert result.add == []  # a finished parent keeps no step for them
    assert [c.arguments["instance_id"] for c in result.start_children] == ["new", "let-go"]


def test_a_cancel_waits_for_held_children_and_ends_cancelled() -> None:
    result = plan(Waiting(()), [child_step("t1", "held")], cancel_reason="stop")
    assert result.cancel_children == ["held"] and result.change.status is None
    idle = plan(Waiting(()), [], cancel_reason="stop", of=instance(cancel_reason="stop"))
    assert idle.change.status is Status.COMPENSATING


def test_a_completed_child_in_the_rollback_is_undone_by_waiting_for_its_own_rollback() -> None:
    child = CompensationRecord(
        0, "child:c:1", "c", {"instance_id": "k"}, "registered", None, 0, NOW, None, "child"
    )
    command = next_compensation([child, registered("a:1")], lambda _: "never-a-queue")
    assert command is not None and command.kind is StepKind.UNDO_CHILD
    assert command.queue is None and command.arguments == {"instance_id": "k"}


def test_a_rollback_ends_as_what_started_it() -> None:
    assert final_status(instance(cancel_reason="stop")) is Status.CANCELLED
    assert final_status(instance(error={"type": "E"})) is Status.FAILED
    assert final_status(instance()) is Status.COMPENSATED  # a parent undoing its child
