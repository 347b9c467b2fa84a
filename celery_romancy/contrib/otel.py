"""OpenTelemetry traces for sagas: ``pip install celery-romancy[otel]``.

::

    from celery_romancy.contrib.otel import instrument

    instrument(romancy)  # or instrument(romancy, tracer_provider=provider)

Call it in every process that starts workflows or runs steps (a worker: at import of the
app module, or in a ``worker_process_init`` handler after the SDK is set up).

One trace per workflow instance
-------------------------------
A saga lives for minutes or weeks and its steps run in many processes (the caller of
``start_workflow``, any worker, beat's timer job, the recovery sweep), so no process can
hold an open root span for it. Instead, the trace id and the root span's id are
**derived from the instance id** (a SHA-256 of it; ``instance_span_context``): every
process computes the same ones with nothing stored and nothing read, including a
process that re-sends a step after a crash. Every step's span is a child of that root,
so a trace shows the saga's steps side by side, not a staircase growing with each step.
The root span itself, ``workflow <name>``, is exported when the instance ends
(completed, failed, cancelled, or parked in ``compensation_failed``) with its start at
the instance's ``created_at``; until then a tracing backend shows the steps under a root
not received yet. (An instance that is revived after it ended, by ``resume`` or
``retry_compensation``, exports its root span again when it ends again.) The root span
needs the SDK's ``TracerProvider``, whose tracer is given the ids; with another provider
the steps are still traced, under a root that is never exported. The root's context
says "sampled", so with the SDK's default sampler (parent-based) every step's span is
kept: sample sagas in the collector (tail sampling), not with a ratio sampler in the
process.

The alternative, a root span created at the start whose context is stored with the
instance and read back by each step, would cost a column and a read per step, and a
step re-sent by a process that lost the message would need that read too.

Spans
-----
- ``start <workflow>``: where ``start_workflow`` created the instance, linked to the span
  current there (e.g. the web request that started the saga).
- ``activity <name>`` / ``compensation <name>``: one per attempt, open in the worker
  while the step's body runs (the body's own spans, an HTTP call for instance, are its
  children). Attributes: ``romancy.instance_id``, ``romancy.workflow``,
  ``romancy.step_id``, ``romancy.step.kind``, ``romancy.attempt``, ``romancy.outcome``
  (``completed``, ``failed``, ``retrying``, or what the runner did with a message it did
  not run: ``duplicate``, ``cancelled``...) and ``celery.task_id``. An attempt that failed
  and will be retried gets an ``exception`` event and a ``romancy.retry`` event and keeps
  its status (the step has not failed); a step that failed for good gets the
  ``exception`` event and status ERROR.
- ``timer <name>``, ``wait_event <name>``, ``child <workflow>``: the steps that run as
  no task (as the ``step_recorded`` signal reports them), from when they began to when
  they were recorded (a fired timer, an event's arrival or its timeout, a child
  workflow's end). A child workflow is an instance, so a trace of its own.
- ``workflow <name>``: the root, as above; status ERROR for ``failed`` and
  ``compensation_failed`` (with the recorded error as an ``exception`` event); a child
  workflow's root span links to its parent's.

With opentelemetry-instrumentation-celery
-----------------------------------------
Each step's message carries the trace context in its headers (the globally configured
propagator, W3C ``traceparent`` by default): the instance's context, unless the header
already points into the instance's trace (CeleryInstrumentor's ``apply_async`` span of
a step published from within a step of the same instance). If CeleryInstrumentor's
receiver runs after ours and puts another trace there (a start made in a web request),
the worker puts the instance's context on the task's request before CeleryInstrumentor
reads it. So its ``run/<task>`` spans always join the instance's trace, whichever was
instrumented first; only its ``apply_async`` span of a start stays in the caller's
trace (the ``start`` span links the two). During the body the current span is ours, or
its ``run/<task>`` span when it was instrumented after us; each context is taken off
again after the task.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import signals as celery_signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    ProxyTracer,
    SpanContext,
    Status,
    StatusCode,
)

from .. import __version__
from .. import signals as romancy_signals
from ..dispatch import WAKE_TASK
from ..states import StepKind

if TYPE_CHECKING:
    from ..app import Romancy

logger = logging.getLogger(__name__)

TRACER_NAME = "celery_romancy"
# Step errors a ``step_failed`` brought before its ``step_recorded``, for steps traced
# after the fact (no live span in this thread): at most this many are kept.
_PENDING_ERRORS = 1000


def instance_span_context(instance_id: str) -> SpanContext:
    """The context of an instance's root span: the same in every process.

    Use it to link spans of your own to a saga: ``trace.Link(instance_span_context(id))``.
    """
    digest = hashlib.sha256(f"celery_romancy:{instance_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # 0 is the invalid id
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


def instance_context(instance_id: str, base: otel_context.Context | None = None) -> Any:
    """An OpenTelemetry ``Context`` whose current span is the instance's root (baggage
    and the rest taken from ``base``, by default the current context)."""
    return trace.set_span_in_context(NonRecordingSpan(instance_span_context(instance_id)), base)


def instrument(romancy: Romancy, tracer_provider: Any = None) -> RomancyTracing:
    """Trace ``romancy``'s workflows with ``tracer_provider`` (default: the global one).

    Returns the ``RomancyTracing``; its ``uninstrument()`` disconnects it again.
    """
    tracing = RomancyTracing(romancy, tracer_provider)
    tracing.connect()
    return tracing


class _ChosenIds:
    """The tracer's id generator, except while ``chosen`` holds ids: then those (the
    root span of an instance, whose ids every process derives the same way)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chosen: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
            "celery_romancy_chosen_ids", default=None
        )

    def generate_trace_id(self) -> int:
        chosen = self.chosen.get()
        return chosen.trace_id if chosen is not None else int(self.inner.generate_trace_id())

    def generate_span_id(self) -> int:
        chosen = self.chosen.get()
        return chosen.span_id if chosen is not None else int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        if self.chosen.get() is not None:
            return False  # derived from the instance id, not drawn at random
        return bool(getattr(self.inner, "is_trace_id_random", lambda: False)())

    @contextmanager
    def choosing(self, ids: SpanContext) -> Iterator[None]:
        reset = self.chosen.set(ids)
        try:
            yield
        finally:
            self.chosen.reset(reset)


@dataclass
class _LiveStep:
    """The span of the step task this thread is running."""

    task_id: str
    instance_id: str
    name: str
    span: trace.Span
    before: otel_context.Context  # the context current before the task
    attached: otel_context.Context  # the context made current for the body
    token: contextvars.Token[otel_context.Context]  # to detach it
    outcome: str | None = None
    error: dict[str, Any] | None = None


class RomancyTracing:
    """The receivers that turn one ``Romancy``'s steps into spans (see the module)."""

    def __init__(self, romancy: Romancy, tracer_provider: Any = None) -> None:
        self.romancy = romancy
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._ids: _ChosenIds | None = None
        self._local = threading.local()
        self._pending_errors: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._connections: list[tuple[Any, Any, Any]] = []

    # -- wiring ---------------------------------------------------------------------------

    def connect(self) -> None:
        romancy = self.romancy
        wiring: list[tuple[Any, Any, Any]] = [
            (celery_signals.before_task_publish, self._before_publish, None),
            (celery_signals.task_prerun, self._prerun, None),
            (celery_signals.task_postrun, self._postrun, None),
            (romancy_signals.workflow_started, self._started, romancy),
            (romancy_signals.workflow_completed, self._completed, romancy),
            (romancy_signals.workflow_failed, self._failed, romancy),
            (romancy_signals.workflow_cancelled, self._cancelled, romancy),
            (romancy_signals.step_failed, self._step_failed, romancy),
            (romancy_signals.step_recorded, self._step_recorded, romancy),
        ]
        for signal, receiver, sender in wiring:
            signal.connect(receiver, sender=sender, weak=False)
        self._connections = wiring

    def uninstrument(self) -> None:
        for signal, receiver, sender in self._connections:
            signal.disconnect(receiver, sender=sender)
        self._connections = []

    @property
    def tracer(self) -> trace.Tracer:
        """Our tracer; from the global provider, once one is set, when none was given
        (``instrument`` may run before the SDK is set up, e.g. in worker_process_init)."""
        if self._tracer is not None:
            return self._tracer
        tracer = trace.get_tracer(TRACER_NAME, __version__, self._provider)
        if isinstance(tracer, ProxyTracer):
            return tracer  # no provider yet: ask again next time
        current = getattr(tracer, "id_generator", None)
        if isinstance(current, _ChosenIds):
            self._ids = current  # instrumented before with this provider
        elif current is not None:  # the SDK's tracer: it can be given the root's ids
            self._ids = _ChosenIds(current)
            tracer.id_generator = self._ids  # type: ignore[attr-defined]
        self._tracer = tracer
        return tracer

    def _runs_as_task(self, name: Any) -> bool:
        registry = self.romancy.registry
        return name in registry.activities or name in registry.compensations

    # -- the step message -----------------------------------------------------------------

    def _before_publish(
        self, sender: Any = None, body: Any = None, headers: Any = None, **_: Any
    ) -> None:
        if headers is None or not (sender == WAKE_TASK or self._runs_as_task(sender)):
            return
        instance_id = _instance_of(body)
        if instance_id is None:
            return
        root = instance_span_context(instance_id)
        carried = trace.get_current_span(propagate.extract(headers)).get_span_context()
        if carried.is_valid and carried.trace_id == root.trace_id:
            return  # already in the instance's trace (CeleryInstrumentor's publish span)
        propagate.inject(headers, context=instance_context(instance_id))

    # -- steps that run as tasks: a live span around the body ------------------------------

    def _prerun(self, sender: Any = None, task_id: Any = None, args: Any = None, **_: Any) -> None:
        self._drop_stale_context()
        if sender is None or getattr(sender, "app", None) is not self.romancy.app:
            return
        if not self._runs_as_task(sender.name) or not args:
            return
        instance_id = str(args[0])
        _carry_instance_context(sender.request, instance_id)
        kind = (
            StepKind.ACTIVITY
            if sender.name in self.romancy.registry.activities
            else StepKind.COMPENSATION
        )
        span = self.tracer.start_span(
            f"{kind} {sender.name}",
            context=instance_context(instance_id),
            attributes={
                "romancy.instance_id": instance_id,
                "romancy.step.kind": str(kind),
                "romancy.step.name": sender.name,
                "celery.task_id": str(task_id),
            },
        )
        # The body's own spans are this span's children.
        before = otel_context.get_current()
        attached = trace.set_span_in_context(span)
        token = otel_context.attach(attached)
        self._local.step = _LiveStep(
            str(task_id), instance_id, sender.name, span, before, attached, token
        )

    def _postrun(self, task_id: Any = None, retval: Any = None, **_: Any) -> None:
        live: _LiveStep | None = getattr(self._local, "step", None)
        if live is None or live.task_id != str(task_id):
            return
        self._local.step = None
        if live.outcome is None and isinstance(retval, str):
            # Not run and recorded: a duplicate, a step dropped by a cancel...
            live.span.set_attribute("romancy.outcome", retval)
        live.span.end()
        if otel_context.get_current() is live.attached:
            otel_context.detach(live.token)
        else:
            # Another instrumentation (CeleryInstrumentor) attached its context after
            # ours: its postrun runs after this one and restores ours (a context var's
            # reset restores the value it replaced). Undone at the next task's prerun.
            self._local.stale = (live.attached, live.before)

    def _drop_stale_context(self) -> None:
        """Put back the context a task found, if the last task left ours behind."""
        stale = getattr(self._local, "stale", None)
        if stale is None:
            return
        self._local.stale = None
        attached, before = stale
        if otel_context.get_current() is attached:
            otel_context.attach(before)  # no token kept: nothing is to restore it later

    def _live_step(self, instance_id: str, name: str | None = None) -> _LiveStep | None:
        live: _LiveStep | None = getattr(self._local, "step", None)
        if live is None or live.instance_id != instance_id:
            return None
        if name is not None and live.name != name:
            return None
        return live

    # -- step signals ---------------------------------------------------------------------

    def _step_failed(
        self,
        instance_id: str = "",
        workflow: str = "",
        step_id: str = "",
        attempt: int = 1,
        error: Any = None,
        will_retry: bool = False,
        **_: Any,
    ) -> None:
        record = _error_record(error)
        live = self._live_step(instance_id)
        if live is None:
            with self._lock:
                self._pending_errors[(instance_id, step_id, attempt)] = record
                while len(self._pending_errors) > _PENDING_ERRORS:
                    self._pending_errors.popitem(last=False)
            return
        live.error = record
        _add_exception_event(live.span, record)
        if will_retry:
            live.span.add_event(
                "romancy.retry",
                {"romancy.attempt": attempt, "romancy.next_attempt": attempt + 1},
            )
        else:
            live.span.set_status(Status(StatusCode.ERROR, record.get("message") or "failed"))

    def _step_recorded(
        self,
        instance_id: str = "",
        workflow: str = "",
        step_id: str = "",
        kind: Any = "",
        name: str = "",
        attempt: int = 1,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        outcome: str = "",
        **_: Any,
    ) -> None:
        attributes: dict[str, Any] = {
            "romancy.instance_id": instance_id,
            "romancy.workflow": workflow,
            "romancy.step_id": step_id,
            "romancy.step.kind": str(kind),
            "romancy.step.name": name,
            "romancy.attempt": attempt,
            "romancy.outcome": outcome,
        }
        live = self._live_step(instance_id, name)
        if live is not None and str(kind) in (StepKind.ACTIVITY, StepKind.COMPENSATION):
            live.outcome = outcome
            live.span.set_attributes(attributes)
            if outcome == "failed" and live.error is None:
                live.span.set_status(Status(StatusCode.ERROR, "failed"))
            return
        # A step with no live span here (a timer, an event wait, a child, or a task
        # step recorded by another path): its span from when it began to its record.
        end = _nanos(finished_at)
        span = self.tracer.start_span(
            f"{kind} {name}",
            context=instance_context(instance_id),
            attributes=attributes,
            start_time=_nanos(started_at) if started_at is not None else end,
        )
        with self._lock:
            record = self._pending_errors.pop((instance_id, step_id, attempt), None)
        if record is not None:
            _add_exception_event(span, record)
        if outcome == "retrying":
            span.add_event("romancy.retry", {"romancy.attempt": attempt})
        elif outcome == "failed":
            message = (record or {}).get("message") or "failed"
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=end)

    # -- the instance: its start, and its root span at its end ------------------------------

    def _started(self, instance_id: str = "", workflow: str = "", **_: Any) -> None:
        caller = trace.get_current_span().get_span_context()
        root = instance_span_context(instance_id)
        links = [Link(caller)] if caller.is_valid and caller.trace_id != root.trace_id else []
        span = self.tracer.start_span(
            f"start {workflow}",
            context=instance_context(instance_id),
            attributes={"romancy.instance_id": instance_id, "romancy.workflow": workflow},
            links=links,
        )
        span.end()

    def _completed(self, instance_id: str = "", workflow: str = "", **_: Any) -> None:
        self._end_root(instance_id, workflow, "completed", None)

    def _failed(
        self,
        instance_id: str = "",
        workflow: str = "",
        error: Any = None,
        status: str = "failed",
        **_: Any,
    ) -> None:
        self._end_root(instance_id, workflow, status, _error_record(error))

    def _cancelled(
        self, instance_id: str = "", workflow: str = "", reason: Any = None, **_: Any
    ) -> None:
        self._end_root(instance_id, workflow, "cancelled", None, {"romancy.cancel_reason": reason})

    def _end_root(
        self,
        instance_id: str,
        workflow: str,
        status: str,
        error: dict[str, Any] | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        tracer = self.tracer
        if self._ids is None:
            return  # not the SDK: the root's ids cannot be given to the span
        instance = self.romancy.storage.get_instance(instance_id)
        if instance is None:
            return
        attributes: dict[str, Any] = {
            "romancy.instance_id": instance_id,
            "romancy.workflow": workflow,
            "romancy.status": status,
        }
        attributes.update({k: v for k, v in (extra or {}).items() if v is not None})
        links = []
        if instance.parent_instance_id is not None:
            attributes["romancy.parent_instance_id"] = instance.parent_instance_id
            links.append(Link(instance_span_context(instance.parent_instance_id)))
        with self._ids.choosing(instance_span_context(instance_id)):
            span = tracer.start_span(
                f"workflow {workflow}",
                context=otel_context.Context(),  # a root: no parent
                attributes=attributes,
                links=links,
                start_time=_nanos(instance.created_at),
            )
        if error is not None:
            _add_exception_event(span, error)
            span.set_status(Status(StatusCode.ERROR, error.get("message") or status))
        span.end()


def _instance_of(body: Any) -> str | None:
    """The instance id of a step message: its first argument (protocol 2 body)."""
    try:
        args = body[0]
        return str(args[0]) if args else None
    except (TypeError, IndexError, KeyError):
        return None


class _RequestGetter(Getter[Any]):
    """Reads a trace header from a Celery task request (headers are its attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


def _carry_instance_context(request: Any, instance_id: str) -> None:
    """Put the instance's context on the task's request if its message brought another
    trace (another instrumentation's publish span, sent from outside the saga): what
    CeleryInstrumentor's ``run/<task>`` span, made after this, is the child of."""
    carried = propagate.extract(request, getter=_RequestGetter())
    if trace.get_current_span(carried).get_span_context().trace_id == (
        instance_span_context(instance_id).trace_id
    ):
        return
    headers: dict[str, str] = {}
    propagate.inject(headers, context=instance_context(instance_id))
    for key, value in headers.items():
        setattr(request, key, value)


def _error_record(error: Any) -> dict[str, Any]:
    if isinstance(error, Mapping):
        return dict(error)
    if isinstance(error, BaseException):
        return {"type": type(error).__qualname__, "message": str(error)}
    return {"type": "error", "message": "" if error is None else str(error)}


def _add_exception_event(span: trace.Span, record: Mapping[str, Any]) -> None:
    """The OpenTelemetry ``exception`` event of a recorded error (the exception object
    itself is gone: the step's error is stored as JSON)."""
    attributes = {
        "exception.type": str(record.get("type") or "Exception"),
        "exception.message": str(record.get("message") or ""),
    }
    if record.get("traceback"):
        attributes["exception.stacktrace"] = str(record["traceback"])
    span.add_event("exception", attributes)


def _nanos(moment: datetime | None) -> int:
    if moment is None:
        return time.time_ns()
    return int(moment.timestamp() * 1_000_000_000)
