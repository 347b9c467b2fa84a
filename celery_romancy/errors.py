"""Exceptions. One root, ``RomancyError``; control flow lives outside ``Exception``.

``Suspend`` derives from ``BaseException`` on purpose: a workflow body that says
``except Exception`` must not be able to swallow the engine's "stop here, the
next step is not recorded yet" signal (Temporal and DBOS do the same).
"""

from __future__ import annotations

from typing import Any


class RomancyError(Exception):
    """Root of every error this package raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without calling ``__init__`` (most take other arguments than ``args``):
        # Celery checks that a task's exception pickles, and otherwise reports it under
        # the nearest base class that does (a PoisonStepError as plain RomancyError).
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[RomancyError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(RomancyError):
    """The package is set up wrongly (settings, registration, database)."""


class UnknownWorkflowError(RomancyError, LookupError):
    """No workflow is registered under that name."""


class UnknownInstanceError(RomancyError, LookupError):
    """No workflow instance has that id."""


class InstanceStateError(RomancyError):
    """The instance's status does not allow that operation (e.g. cancelling a finished one)."""


class SerializationError(RomancyError, TypeError):
    """A value cannot be stored as JSON, or stored JSON does not fit its declared type.

    When data does not fit its type, ``path`` names the part (``order.items[2].price``)
    and ``problem`` says how (``expected float, got str '3'``); both are None otherwise.
    """

    def __init__(
        self, message: str, *, path: str | None = None, problem: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem


class InvalidArgumentsError(RomancyError, TypeError):
    """The arguments do not fit the function's signature."""


class PayloadTooLargeError(InvalidArgumentsError):
    """A value's JSON form is larger than ``romancy_max_payload_bytes``."""


class EventConflictError(RomancyError):
    """An event id already kept for this target and type came again with other data."""


class WorkflowAlreadyStartedError(RomancyError):
    """A start named an instance id that already runs another workflow or other arguments.

    Starting the same workflow with equal arguments under the same id is idempotent and
    returns the id; anything else would silently hand back a run the caller did not ask for.
    """

    def __init__(self, instance_id: str, reason: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"instance id {instance_id!r} {reason}")


class ChildWorkflowError(RomancyError):
    """Raised in a parent workflow when a child workflow ended ``failed``, ``cancelled``
    or ``compensation_failed``.

    ``error`` is the child's own error record (``type``, ``message``, ``traceback``...),
    so the original type and message of what failed in the child are kept;
    ``cancel_reason`` says why a cancelled child was cancelled.
    """

    def __init__(
        self,
        instance_id: str,
        workflow: str,
        status: str,
        error: dict[str, Any] | None,
        cancel_reason: str | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.workflow = workflow
        self.status = status
        self.error = error
        self.cancel_reason = cancel_reason
        reason = f" ({cancel_reason})" if cancel_reason else ""
        super().__init__(
            f"child workflow {workflow} {instance_id} ended {status}{reason}{_cause(error)}"
        )


def _cause(error: dict[str, Any] | None) -> str:
    """What a child's error record says went wrong: its failure, its failed compensation."""
    parts = []
    if error and error.get("type"):
        parts.append(f"{error['type']}: {error.get('message')}")
    undo = (error or {}).get("compensation_error")
    if isinstance(undo, dict):
        parts.append(f"compensation failed: {undo.get('type')}: {undo.get('message')}")
    return f": {'; '.join(parts)}" if parts else ""


class WaitTimeoutError(RomancyError, TimeoutError):
    """``Romancy.wait`` gave up before the instance reached a terminal status."""


class NonDeterminismError(RomancyError):
    """Replay met a different call at a position that history already records."""

    def __init__(
        self, instance_id: str, position: int, recorded: str, called: str, note: str = ""
    ) -> None:
        self.instance_id = instance_id
        self.position = position
        self.recorded = recorded
        self.called = called
        # What the deploy has to do with it (code versions, an unknown patch).
        self.note = note
        super().__init__(
            f"nondeterministic workflow: instance {instance_id} step #{position} is recorded "
            f"as {recorded!r} but the code now calls {called!r}" + (f"; {note}" if note else "")
        )


class PoisonStepError(RomancyError):
    """A step's worker died too many times in a row; the instance is parked for an operator."""

    def __init__(self, instance_id: str, step_id: str, crashes: int) -> None:
        self.instance_id = instance_id
        self.step_id = step_id
        self.crashes = crashes
        super().__init__(
            f"step {step_id} of instance {instance_id} lost its worker {crashes} times in a "
            "row; parked: fix the cause, then call romancy.resume()"
        )


class EventTimeoutError(RomancyError):
    """Raised in a workflow by ``ctx.wait_event`` when no matching event came in time."""

    def __init__(self, event_type: str, timeout: float | None = None) -> None:
        self.event_type = event_type
        self.timeout = timeout
        super().__init__(f"no {event_type!r} event arrived within {timeout} s")


class TerminalError(RomancyError):
    """Raise from an activity to fail it at once: it is never retried."""


class ActivityError(RomancyError):
    """Stands in for a recorded error whose original type cannot be imported on replay."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class WorkflowFailedError(RomancyError):
    """Raised by ``Romancy.result`` for an instance that did not complete."""

    def __init__(self, instance_id: str, status: str, error: dict[str, Any] | None) -> None:
        self.instance_id = instance_id
        self.status = status
        self.error = error
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        super().__init__(f"workflow instance {instance_id} ended {status}{detail}")


class LeaseHeldError(RomancyError):
    """Internal: the step is leased by another worker; deliver this message again later."""

    def __init__(self, instance_id: str, retry_in: float) -> None:
        self.retry_in = retry_in
        super().__init__(f"instance {instance_id} is leased; retry in {retry_in:.1f} s")


class Suspend(BaseException):
    """Internal: replay reached a call that history does not record yet; ``commands``
    are the steps that should be in flight (none: wait for those already sent)."""

    def __init__(self, commands: tuple[Any, ...]) -> None:
        self.commands = commands
        super().__init__(commands)


class ContinueAsNew(BaseException):
    """Internal: ``ctx.continue_as_new`` ends this run; ``input_data`` (the next run's
    arguments, bound and JSON-encoded) starts the next. A ``BaseException`` like
    ``Suspend``: ``except Exception`` in a workflow cannot swallow it."""

    def __init__(self, input_data: dict[str, Any]) -> None:
        self.input_data = input_data
        super().__init__(input_data)
