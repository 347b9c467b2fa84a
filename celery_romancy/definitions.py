"""Workflow, activity and compensation objects, made by the ``Romancy`` decorators."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from .errors import ConfigurationError, InvalidArgumentsError
from .patching import checked_version
from .retry import RetryPolicy
from .signatures import CallShape
from .validation import MAX_NAME_LENGTH, check_identifier

if TYPE_CHECKING:
    from .context import WorkflowContext

P = ParamSpec("P")
R = TypeVar("R")


def call_maybe_async(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call a plain function; run a coroutine function to completion in a fresh loop."""
    result = fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


class CompensationDefinition(Generic[P]):
    """A function that undoes an activity; its parameters are bound by name.

    A parameter named ``result`` receives the undone activity's return value; every other
    parameter gets the activity's call argument of the same name.
    """

    def __init__(
        self, name: str, fn: Callable[P, Any], retry: RetryPolicy, queue: str | None
    ) -> None:
        self.name = check_identifier(name, "a compensation name", MAX_NAME_LENGTH)
        self.fn = fn
        self.retry = retry
        self.queue = queue
        self.shape = CallShape(fn, name=name)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def check_undoes(self, activity: ActivityDefinition[Any, Any]) -> None:
        """Refuse, at attach time, a compensation whose parameters the activity cannot fill."""
        available = set(activity.shape.parameter_names) | {"result"}
        for param in self.shape.signature.parameters.values():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if param.name not in available and param.default is inspect.Parameter.empty:
                raise ConfigurationError(
                    f"compensation {self.name!r} cannot undo activity {activity.name!r}: "
                    f"its parameter {param.name!r} is neither an argument of "
                    f"{activity.name!r} nor 'result'"
                )

    def arguments_from(self, activity_arguments: dict[str, Any], result: Any) -> dict[str, Any]:
        """The JSON arguments of this compensation, taken by name from the undone call."""
        source = {**activity_arguments, "result": result}
        return {name: source[name] for name in self.shape.parameter_names if name in source}

    def invoke(self, arguments: dict[str, Any]) -> None:
        args, kwargs = self.shape.decode_arguments(arguments)
        call_maybe_async(self.fn, args, kwargs)


class ActivityDefinition(Generic[P, R]):
    """A step of a workflow: runs once per call as its own Celery task, result recorded."""

    def __init__(
        self,
        name: str,
        fn: Callable[P, R],
        *,
        compensation: CompensationDefinition[Any] | None,
        retry: RetryPolicy,
        queue: str | None,
    ) -> None:
        self.name = check_identifier(name, "an activity name", MAX_NAME_LENGTH)
        self.fn = fn
        self.retry = retry
        self.queue = queue
        self.shape = CallShape(fn, name=name)
        self.compensation = compensation
        if compensation is not None:
            compensation.check_undoes(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function, outside any workflow (handy in unit tests)."""
        return self.fn(*args, **kwargs)

    def execute(self, ctx: WorkflowContext, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run this activity as the workflow's next step (or return its recorded result)."""
        result: R = ctx.execute(self, *args, **kwargs)
        return result

    def s(self, *args: P.args, **kwargs: P.kwargs) -> StepSignature[R]:
        """A step of this activity with these arguments, for ``ctx.gather`` (like
        Celery's ``.s()``). The arguments are checked and encoded now; nothing runs
        until the signature is gathered."""
        signature = StepSignature(self, args, kwargs)
        signature.arguments  # noqa: B018 - bad arguments raise here, at the call
        return signature

    def invoke(self, arguments: dict[str, Any]) -> Any:
        args, kwargs = self.shape.decode_arguments(arguments)
        return call_maybe_async(self.fn, args, kwargs)

    def __repr__(self) -> str:
        return f"<activity {self.name}>"


class StepSignature(Generic[R]):
    """An activity and its call arguments, bound lazily (``execute`` binds only the
    call that is not recorded yet; ``.s()`` binds at once)."""

    def __init__(
        self,
        activity: ActivityDefinition[Any, R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.activity = activity
        self._args = args
        self._kwargs = kwargs
        self._arguments = arguments

    @property
    def step_key(self) -> str:
        """What its step ids are made of: ``<key>:<n>``."""
        return self.activity.name

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments as stored JSON, by parameter name."""
        if self._arguments is None:
            self._arguments = self.activity.shape.bind(self._args, self._kwargs)
        return self._arguments

    def decode_result(self, recorded: Any) -> R:
        value: R = self.activity.shape.decode_result(recorded)
        return value

    def __repr__(self) -> str:
        return f"<step {self.activity.name}{self._args!r}>"


PARENT_CLOSE_POLICIES = ("cancel", "abandon")


class ChildSignature(Generic[R]):
    """A child workflow and its input, for ``ctx.gather`` beside activity steps
    (``payment.s(order.payment)``) and for ``ctx.start_child``."""

    def __init__(
        self,
        workflow: WorkflowDefinition[Any, R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        instance_id: str | None = None,
        parent_close: str = "cancel",
    ) -> None:
        if parent_close not in PARENT_CLOSE_POLICIES:
            raise InvalidArgumentsError(
                f"parent_close must be 'cancel' or 'abandon', not {parent_close!r}"
            )
        if instance_id is not None:
            check_identifier(instance_id, "instance_id")
        self.workflow = workflow
        self.instance_id = instance_id
        self.parent_close = parent_close
        self._args = args
        self._kwargs = kwargs
        self._arguments: dict[str, Any] | None = None

    def set(
        self, *, instance_id: str | None = None, parent_close: str | None = None
    ) -> ChildSignature[R]:
        """This signature with the child's id or ``parent_close`` chosen (as Celery's
        ``signature.set(...)``): ``refund.s(item).set(parent_close="abandon")``."""
        chosen = ChildSignature(
            self.workflow,
            self._args,
            self._kwargs,
            instance_id=instance_id if instance_id is not None else self.instance_id,
            parent_close=parent_close if parent_close is not None else self.parent_close,
        )
        chosen._arguments = self._arguments
        return chosen

    @property
    def step_key(self) -> str:
        return f"child:{self.workflow.name}"

    @property
    def arguments(self) -> dict[str, Any]:
        """The child's input as stored JSON, by parameter name."""
        if self._arguments is None:
            self._arguments = self.workflow.shape.bind(self._args, self._kwargs)
        return self._arguments

    def decode_result(self, recorded: Any) -> R:
        """The child's output from its record in the parent's history."""
        value: R = self.workflow.shape.decode_result(recorded["output"])
        return value

    def __repr__(self) -> str:
        return f"<child {self.workflow.name}{self._args!r}>"


class WorkflowDefinition(Generic[P, R]):
    """A workflow: a plain function of a context and its input, replayed from history."""

    def __init__(
        self,
        name: str,
        fn: Callable[Concatenate[WorkflowContext, P], R],
        version: str | None = None,
    ) -> None:
        self.name = check_identifier(name, "a workflow name", MAX_NAME_LENGTH)
        self.fn = fn
        self.shape = CallShape(fn, skip_first=True, name=name)
        # The code version each new instance is stamped with (None: not given).
        self.version = checked_version(version)

    def __call__(self, ctx: WorkflowContext, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(ctx, *args, **kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> ChildSignature[R]:
        """This workflow as a child with this input, for ``ctx.gather``; the input is
        checked now, nothing starts until the signature is gathered."""
        signature = ChildSignature(self, args, kwargs)
        signature.arguments  # noqa: B018 - bad arguments raise here, at the call
        return signature

    def run(self, ctx: WorkflowContext, input_data: dict[str, Any]) -> Any:
        args, kwargs = self.shape.decode_arguments(input_data)
        return self.fn(ctx, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"
