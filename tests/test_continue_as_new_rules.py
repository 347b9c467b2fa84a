"""Continue-as-new without a database: what replay decides, what planning makes of it,
the next run's id and when a run may not continue. The engine: test_continue_as_new.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_romancy.context import WorkflowContext
from celery_romancy.continuation import next_run_id, refusal
from celery_romancy.definitions import ActivityDefinition, WorkflowDefinition
from celery_romancy.errors import WorkflowAlreadyStartedError
from celery_romancy.planning import plan_outcome
from celery_romancy.registry import Registry
from celery_romancy.replay import ContinuedAsNew, Diverged, Failed, Waiting, replay_recording
from celery_romancy.retry import RetryPolicy
from celery_romancy.states import Status, StepKind
from celery_romancy.storage import CompensationRecord, HistoryEvent, WorkflowInstance

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Cursor:
    page: int
    seen: list[str]


def _fetch(page: int) -> list[str]:
    raise AssertionError("activities do not run during replay")


fetch = ActivityDefinition("fetch", _fetch, compensation=None, retry=RetryPolicy(), queue=None)


def _poller(ctx: WorkflowContext, cursor: Cursor, how: str = "plain") -> int:
    items = fetch.execute(ctx, cursor.page)
    if how == "swallow":
        try:
            ctx.continue_as_new(Cursor(cursor.page + 1, cursor.seen + items))
        except BaseException:  # noqa: BLE001 - even this cannot undo the hand-over
            return -1
    if how == "bad":
        ctx.continue_as_new(Cursor(cursor.page + 1, cursor.seen), "x", 3)
    if how == "running":
        ctx.start_child("poller", Cursor(0, []))
    ctx.continue_as_new(Cursor(cursor.page + 1, cursor.seen + items), how=how)


poller = WorkflowDefinition("poller", _poller)
REGISTRY = Registry()
REGISTRY.add(poller)
REGISTRY.add(fetch)


def fetched(items: list[str]) -> HistoryEvent:
    return HistoryEvent(0, "fetch:1", "activity", "fetch", result=items)


def run(how: str, history: list[HistoryEvent], in_flight: tuple[str, ...] = ()) -> Any:
    given = {"cursor": {"page": 4, "seen": ["a"]}, "how": how}
    return replay_recording(poller, "poll-1", given, history, in_flight, REGISTRY).outcome


def test_continue_as_new_ends_the_replay_with_the_next_runs_input_as_json() -> None:
    assert run("plain", [fetched(["b", "c"])]) == ContinuedAsNew(
        {"cursor": {"page": 5, "seen": ["a", "b", "c"]}, "how": "plain"}
    )


def test_a_body_that_catches_the_hand_over_still_hands_over() -> None:
    assert run("swallow", [fetched(["b"])]) == ContinuedAsNew(
        {"cursor": {"page": 5, "seen": ["a", "b"]}}
    )


def test_arguments_that_do_not_fit_the_workflow_fail_it_at_the_call() -> None:
    outcome = run("bad", [fetched([])])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == "celery_romancy.errors.InvalidArgumentsError"
    assert "poller()" in outcome.error["message"]
    assert "too many positional arguments" in outcome.error["message"]


def test_a_child_still_running_refuses_the_hand_over() -> None:
    outcome = run("running", [fetched([])])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == "celery_romancy.errors.InstanceStateError"
    assert "child:poller:1" in outcome.error["message"]


def test_a_body_that_goes_on_past_an_unrecorded_step_waits_for_that_step() -> None:
    def _two(ctx: WorkflowContext) -> None:
        try:
            fetch.execute(ctx, 1)
        finally:  # reached although the step is not recorded yet
            ctx.continue_as_new()

    two = WorkflowDefinition("two", _two)
    registry = Registry()
    registry.add(two)
    outcome = replay_recording(two, "t", {}, [], (), registry).outcome

    assert isinstance(outcome, Waiting)
    assert [c.step_id for c in outcome.commands] == ["fetch:1"]


def test_a_run_that_took_no_step_cannot_continue_or_runs_would_follow_without_end() -> None:
    def _spin(ctx: WorkflowContext, n: int) -> None:
        ctx.set_search_attributes(n=str(n))  # recorded, but no step waited for
        ctx.continue_as_new(n + 1)

    spin = WorkflowDefinition("spin", _spin)
    registry = Registry()
    registry.add(spin)
    outcome = replay_recording(spin, "s", {"n": 0}, [], (), registry).outcome

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == "celery_romancy.errors.InstanceStateError"
    assert "before this run took any step" in outcome.error["message"]


def test_history_beyond_the_hand_over_is_nondeterminism() -> None:
    later = HistoryEvent(1, "fetch:2", "activity", "fetch", result=[])

    assert isinstance(run("plain", [fetched([]), later]), Diverged)


# -- planning --------------------------------------------------------------------------


def instance(**changes: Any) -> WorkflowInstance:
    values: dict[str, Any] = {
        "instance_id": "poll-1",
        "workflow_name": "poller",
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


def plan(outcome: Any, cancel_reason: str | None = None) -> Any:
    def compensations() -> list[CompensationRecord]:
        return [CompensationRecord(0, "fetch:1", "unfetch", {}, "registered", None, 0, NOW, None)]

    return plan_outcome(instance(), cancel_reason, outcome, [], compensations, lambda _: None)


def test_a_hand_over_ends_the_run_continued_with_the_next_runs_input() -> None:
    planned = plan(ContinuedAsNew({"cursor": 1}))

    assert planned.change.status is Status.CONTINUED
    assert (planned.change.output_data, planned.change.error) == (None, None)
    assert planned.continue_with == {"cursor": 1}
    # Nothing is undone: this run's compensations stay with it.
    assert planned.add == [] and planned.dispatches == []


def test_a_cancel_that_came_while_the_last_step_ran_wins_over_the_hand_over() -> None:
    planned = plan(ContinuedAsNew({"cursor": 1}), cancel_reason="stop")

    assert planned.continue_with is None
    assert planned.change.status is Status.COMPENSATING
    [undo] = [step.command for step in planned.add]
    assert (undo.kind, undo.name) == (StepKind.COMPENSATION, "unfetch")


# -- the next run ----------------------------------------------------------------------


def test_the_next_runs_id_counts_from_the_first_run() -> None:
    first = instance(instance_id="poll-1")
    second = instance(instance_id=next_run_id(first), continued_from="poll-1")
    third = instance(instance_id=next_run_id(second), continued_from=second.instance_id)

    assert (second.instance_id, third.instance_id) == ("poll-1~1", "poll-1~2")
    # A first run whose own id has a tilde is still a first run.
    assert next_run_id(instance(instance_id="a~7")) == "a~7~1"
    assert next_run_id(instance(instance_id="a~7~9", continued_from="a~7~8")) == "a~7~10"


def test_a_next_run_id_too_long_for_the_column_is_hashed_and_still_counts() -> None:
    long_id = "x" * 99
    second = next_run_id(instance(instance_id=long_id))
    third = next_run_id(instance(instance_id=second, continued_from=long_id))

    assert len(second) <= 100 and second.endswith("~1")
    assert third == f"{second[:-2]}~2"
    assert next_run_id(instance(instance_id=long_id)) == second  # the same on every replay


@pytest.mark.parametrize("taken", [True, False])
def test_a_next_run_id_another_instance_took_refuses_the_hand_over(taken: bool) -> None:
    refused = refusal(instance(), taken)

    assert isinstance(refused, WorkflowAlreadyStartedError) if taken else refused is None
