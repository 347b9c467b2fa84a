"""OpenTelemetry traces (``celery_romancy.contrib.otel``) of sagas run on a real worker,
exported to the SDK's in-memory exporter; beside opentelemetry-instrumentation-celery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import current_task
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from celery_romancy import RetryPolicy, Romancy, WorkflowContext
from celery_romancy.contrib.otel import (
    RomancyTracing,
    instance_span_context,
    instrument,
)

from .harness import Harness
from .ledger import wait_for

NO_RETRY = RetryPolicy(max_attempts=1)
QUICK_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01)


class CardDeclinedError(Exception):
    pass


@dataclass
class Traced:
    exporter: InMemorySpanExporter
    provider: TracerProvider
    tracing: RomancyTracing
    # What each activity's Celery request carried in its traceparent header.
    traceparents: list[str] = field(default_factory=list)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def ended(self, counts: dict[str, int]) -> bool:
        """Whether the spans of these names have all ended, as many as given."""
        return all(len(self.named(name)) >= count for name, count in counts.items())


# The spans of a declined otel_saga, by name: how many.
SAGA_SPANS = {
    "workflow otel_saga": 1,
    "activity otel_book": 1,
    "activity otel_flaky": 2,
    "activity otel_charge": 1,
    "compensation otel_unbook": 1,
}


@pytest.fixture
def traced(harness: Harness) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = instrument(harness.romancy, tracer_provider=provider)
    found = Traced(exporter, provider, tracing)
    register_traced_saga(harness.romancy, found)
    yield found
    tracing.uninstrument()
    provider.shutdown()


def register_traced_saga(romancy: Romancy, traced: Traced) -> None:
    """book (undone by unbook) -> flaky (fails its first attempt) -> a short sleep ->
    charge (declined: the saga rolls back)."""
    body_tracer = traced.provider.get_tracer("the-activity-bodies")
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def carried() -> None:
        traced.traceparents.append(str(getattr(current_task.request, "traceparent", None)))

    @romancy.compensation("otel_unbook", retry=NO_RETRY)
    def unbook(key: str) -> None:
        carried()

    @romancy.activity("otel_book", compensation=unbook, retry=NO_RETRY)
    def book(key: str) -> str:
        carried()
        return f"B-{key}"

    @romancy.activity("otel_flaky", retry=QUICK_RETRY)
    def flaky(key: str) -> int:
        carried()
        with lock:
            attempts[key] = attempts.get(key, 0) + 1
            attempt = attempts[key]
        if attempt == 1:
            raise ConnectionError(f"first attempt of {key} lost")
        return attempt

    @romancy.activity("otel_charge", retry=NO_RETRY)
    def charge(key: str, decline: bool) -> str:
        carried()
        with body_tracer.start_as_current_span("charge-body"):
            if decline:
                raise CardDeclinedError(f"card declined for {key}")
        return f"C-{key}"

    @romancy.workflow("otel_saga")
    def saga(ctx: WorkflowContext, key: str, decline: bool) -> str:
        book.execute(ctx, key)
        flaky.execute(ctx, key)
        ctx.sleep(0.05)
        return charge.execute(ctx, key, decline)


def attribute(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def in_instance(spans: list[ReadableSpan], instance_id: str) -> list[ReadableSpan]:
    return [s for s in spans if attribute(s, "romancy.instance_id") == instance_id]


def test_a_failed_saga_is_one_trace_with_a_span_per_step_retries_and_errors(
    harness: Harness, traced: Traced
) -> None:
    caller = traced.provider.get_tracer("the-web-app")
    with caller.start_as_current_span("POST /orders") as request_span:
        instance_id = harness.romancy.start_workflow("otel_saga", "K1", True)
    with harness.worker():
        assert harness.romancy.wait(instance_id, timeout=30).status == "failed"
        # Each task's span ends after its commit: the saga may end before the last does.
        wait_for(lambda: traced.ended(SAGA_SPANS), 30, "every step's span")

    root_ids = instance_span_context(instance_id)
    ours = in_instance(traced.spans(), instance_id)
    # One trace for the whole instance, its id derived from the instance id.
    assert {s.context.trace_id for s in ours} == {root_ids.trace_id}

    (root,) = traced.named("workflow otel_saga")
    assert root.context.span_id == root_ids.span_id
    assert root.parent is None
    assert root.status.status_code is StatusCode.ERROR
    assert attribute(root, "romancy.status") == "failed"
    assert root.start_time is not None and root.end_time is not None
    assert root.start_time <= min(s.start_time or 0 for s in ours)

    # Every step is a child of the root, with its attempt.
    steps = [s for s in ours if s is not root and not s.name.startswith("start ")]
    assert {s.name for s in steps} >= {
        "activity otel_book",
        "activity otel_flaky",
        "activity otel_charge",
        "compensation otel_unbook",
    }
    assert all(s.parent is not None and s.parent.span_id == root_ids.span_id for s in steps)
    (timer,) = [s for s in steps if attribute(s, "romancy.step.kind") == "timer"]
    assert attribute(timer, "romancy.outcome") == "completed"

    # The retried step: two attempts; the first carries the error and the retry as events
    # and is not an error itself (the step went on).
    first, second = sorted(
        traced.named("activity otel_flaky"), key=lambda s: attribute(s, "romancy.attempt")
    )
    assert (attribute(first, "romancy.attempt"), attribute(second, "romancy.attempt")) == (1, 2)
    assert attribute(first, "romancy.outcome") == "retrying"
    assert [e.name for e in first.events] == ["exception", "romancy.retry"]
    exception = first.events[0].attributes or {}
    assert exception["exception.type"] == "builtins.ConnectionError"
    assert exception["exception.message"] == "first attempt of K1 lost"
    assert "ConnectionError" in str(exception["exception.stacktrace"])
    assert first.status.status_code is StatusCode.UNSET
    assert attribute(second, "romancy.outcome") == "completed"
    assert second.events == ()

    # The failed step: status ERROR with the exception event.
    (charge,) = traced.named("activity otel_charge")
    assert charge.status.status_code is StatusCode.ERROR
    assert attribute(charge, "romancy.outcome") == "failed"
    assert attribute(charge, "romancy.step_id") == "otel_charge:1"
    (declined,) = [e for e in charge.events if e.name == "exception"]
    assert str((declined.attributes or {})["exception.type"]).endswith("CardDeclinedError")
    assert (root.events[0].attributes or {})["exception.message"] == "card declined for K1"

    # The body's own spans are children of its step's span.
    (body,) = traced.named("charge-body")
    assert body.parent is not None and body.parent.span_id == charge.context.span_id
    assert body.context.trace_id == root_ids.trace_id

    (undo,) = traced.named("compensation otel_unbook")
    assert attribute(undo, "romancy.outcome") == "completed"

    # The start: in the instance's trace, linked to the request that started it.
    (start,) = traced.named("start otel_saga")
    assert start.context.trace_id == root_ids.trace_id
    assert [link.context for link in start.links] == [request_span.get_span_context()]

    # Each step message carried the instance's trace context in its headers.
    expected = f"00-{root_ids.trace_id:032x}-{root_ids.span_id:016x}-01"
    assert traced.traceparents
    assert set(traced.traceparents) == {expected}


def test_a_completed_saga_ends_its_root_span_ok(harness: Harness, traced: Traced) -> None:
    instance_id = harness.romancy.start_workflow("otel_saga", "K2", False)
    with harness.worker():
        assert harness.romancy.result(instance_id, timeout=30) == "C-K2"
        wait_for(
            lambda: traced.ended({"workflow otel_saga": 1, "activity otel_charge": 1}),
            30,
            "the root and the last step's spans",
        )
    (root,) = traced.named("workflow otel_saga")
    assert root.status.status_code is StatusCode.UNSET
    assert attribute(root, "romancy.status") == "completed"
    (charge,) = traced.named("activity otel_charge")
    assert charge.status.status_code is StatusCode.UNSET
    assert not traced.named("compensation otel_unbook")


@pytest.mark.parametrize("celery_first", [False, True], ids=["romancy-first", "celery-first"])
def test_beside_opentelemetry_instrumentation_celery_its_spans_join_the_trace(
    harness: Harness, traced: Traced, celery_first: bool
) -> None:
    instrumentor = CeleryInstrumentor()
    if celery_first:
        # Its signal receivers run before ours: connect ours again, after it.
        traced.tracing.uninstrument()
        instrumentor.instrument(tracer_provider=traced.provider)
        traced.tracing = instrument(harness.romancy, tracer_provider=traced.provider)
    else:
        instrumentor.instrument(tracer_provider=traced.provider)
    # A plain task of the app: what context does it find on a thread that ran steps?
    found_a_span: list[bool] = []

    @harness.app.task(name="otel_probe", ignore_result=True, shared=False)
    def probe() -> None:
        found_a_span.append(trace.get_current_span().get_span_context().is_valid)

    try:
        instance_id = harness.romancy.start_workflow("otel_saga", "K3", False)
        with harness.worker():
            assert harness.romancy.result(instance_id, timeout=30) == "C-K3"
            wait_for(
                lambda: traced.ended({"workflow otel_saga": 1, "run/otel_charge": 1}),
                30,
                "the root and the last Celery run span",
            )
            instrumentor.uninstrument()
            for _ in range(6):
                probe.delay()
            wait_for(lambda: len(found_a_span) == 6, 30, "the probes")
    finally:
        instrumentor.uninstrument()
    # No step's context was left behind on the worker's threads.
    assert found_a_span == [False] * 6

    trace_id = instance_span_context(instance_id).trace_id
    runs = [s for s in traced.spans() if s.name.startswith("run/otel_")]
    assert {s.name for s in runs} >= {"run/otel_book", "run/otel_flaky", "run/otel_charge"}
    # CeleryInstrumentor's run spans are in the instance's trace, each with a parent
    # span that is in it too (none dangles off another trace).
    assert {s.context.trace_id for s in runs} == {trace_id}
    exported = {s.context.span_id for s in traced.spans()}
    for run in runs:
        assert run.parent is not None
        assert run.parent.span_id in exported, run.name
    ours = in_instance(traced.spans(), instance_id)
    assert {s.context.trace_id for s in ours} == {trace_id}
    # Every step still ran under the instance's context, whichever handler ran first.
    expected = instance_span_context(instance_id)
    assert all(tp.split("-")[1] == f"{expected.trace_id:032x}" for tp in traced.traceparents)


def test_a_child_workflow_is_a_step_of_its_parent_and_a_trace_linked_to_it(
    harness: Harness, traced: Traced
) -> None:
    romancy = harness.romancy

    @romancy.activity("otel_leaf_step", retry=NO_RETRY)
    def leaf_step(key: str) -> str:
        return f"L-{key}"

    @romancy.workflow("otel_leaf")
    def leaf(ctx: WorkflowContext, key: str) -> str:
        return leaf_step.execute(ctx, key)

    @romancy.workflow("otel_parent")
    def parent(ctx: WorkflowContext, key: str) -> str:
        return ctx.execute_child(leaf, key)

    parent_id = romancy.start_workflow("otel_parent", "K5")
    with harness.worker():
        assert romancy.result(parent_id, timeout=30) == "L-K5"
        wait_for(
            lambda: traced.ended({"workflow otel_parent": 1, "workflow otel_leaf": 1}),
            30,
            "both root spans",
        )
    (child,) = romancy.find_instances(parent=parent_id)
    parent_root, child_root = (
        instance_span_context(parent_id),
        instance_span_context(child.instance_id),
    )

    # In the parent's trace, the wait for its child is a step like the others.
    (child_step,) = [
        s
        for s in in_instance(traced.spans(), parent_id)
        if attribute(s, "romancy.step.kind") == "child"
    ]
    assert child_step.name == "child otel_leaf"
    assert child_step.context.trace_id == parent_root.trace_id
    assert child_step.parent is not None and child_step.parent.span_id == parent_root.span_id
    assert attribute(child_step, "romancy.outcome") == "completed"

    # The child is a trace of its own, whose root links to its parent's root.
    (leaf_root,) = traced.named("workflow otel_leaf")
    assert leaf_root.context.trace_id == child_root.trace_id
    assert attribute(leaf_root, "romancy.parent_instance_id") == parent_id
    assert [(link.context.trace_id, link.context.span_id) for link in leaf_root.links] == [
        (parent_root.trace_id, parent_root.span_id)
    ]
    (leaf_activity,) = traced.named("activity otel_leaf_step")
    assert leaf_activity.context.trace_id == child_root.trace_id


# The process-wide provider, set once for the whole test session (OpenTelemetry
# refuses to replace it).
GLOBAL_EXPORTER = InMemorySpanExporter()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_instrumented_before_the_sdk_is_set_up_it_traces_once_it_is(harness: Harness) -> None:
    tracing = instrument(harness.romancy)  # no provider given, none set yet
    try:
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(GLOBAL_EXPORTER))
            trace.set_tracer_provider(provider)  # e.g. in worker_process_init
        global_provider = trace.get_tracer_provider()
        assert isinstance(global_provider, TracerProvider)
        traced = Traced(GLOBAL_EXPORTER, global_provider, tracing)
        register_traced_saga(harness.romancy, traced)
        instance_id = harness.romancy.start_workflow("otel_saga", "K4", False)
        with harness.worker():
            assert harness.romancy.result(instance_id, timeout=30) == "C-K4"
            wait_for(
                lambda: in_instance(traced.named("workflow otel_saga"), instance_id),
                30,
                "the root span",
            )
    finally:
        tracing.uninstrument()
    (root,) = in_instance(traced.named("workflow otel_saga"), instance_id)
    assert root.context.span_id == instance_span_context(instance_id).span_id
    charges = in_instance(traced.named("activity otel_charge"), instance_id)
    assert [s.parent.span_id for s in charges if s.parent] == [root.context.span_id]
