"""The public names are a contract: code outside this repository imports them."""

from __future__ import annotations

import inspect

import celery_romancy

PUBLIC = {
    "ActivityDefinition",
    "ActivityError",
    "ActivityInfo",
    "ChildHandle",
    "ChildSignature",
    "ChildWorkflowError",
    "CompensationDefinition",
    "ConfigurationError",
    "EventConflictError",
    "EventTimeoutError",
    "HistoryEvent",
    "InstanceStateError",
    "InvalidArgumentsError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "PoisonStepError",
    "RetryPolicy",
    "Romancy",
    "RomancyError",
    "RomancySettings",
    "SerializationError",
    "StepSignature",
    "TerminalError",
    "UnknownInstanceError",
    "UnknownWorkflowError",
    "WaitTimeoutError",
    "WorkflowAlreadyStartedError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowFailedError",
    "WorkflowInstance",
    "current_activity",
}


def test_public_names_are_pinned() -> None:
    assert set(celery_romancy.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(celery_romancy, name) is not None


def test_the_parallel_step_api_is_pinned() -> None:
    """``activity.s``, ``ctx.gather`` and ``ctx.map`` as DESIGN.md's contract names them."""
    context = celery_romancy.WorkflowContext
    gather = inspect.signature(context.gather).parameters
    assert [(p.name, p.kind, p.default) for p in gather.values()][1:] == [
        ("signatures", inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty),
        ("return_exceptions", inspect.Parameter.KEYWORD_ONLY, False),
        ("max_concurrency", inspect.Parameter.KEYWORD_ONLY, None),
    ]
    mapped = inspect.signature(context.map).parameters
    assert list(mapped)[1:] == ["activity", "items", "max_concurrency"]
    assert mapped["max_concurrency"].default is None
    step = inspect.signature(celery_romancy.ActivityDefinition.s).parameters
    assert [p.kind for p in step.values()][1:] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]


def test_the_child_workflow_api_is_pinned() -> None:
    """``ctx.start_child`` / ``ctx.execute_child``, ``workflow.s`` and the handle and error
    they give, as DESIGN.md and the child-workflow issue name them."""
    context = celery_romancy.WorkflowContext
    for method in (context.start_child, context.execute_child):
        params = inspect.signature(method).parameters
        assert [(p.name, p.kind, p.default) for p in params.values()][1:] == [
            ("workflow", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("args", inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty),
            ("instance_id", inspect.Parameter.KEYWORD_ONLY, None),
            ("parent_close", inspect.Parameter.KEYWORD_ONLY, "cancel"),
            ("kwargs", inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty),
        ]
    handle = celery_romancy.ChildHandle
    assert list(inspect.signature(handle.result).parameters) == ["self"]
    child = inspect.signature(celery_romancy.WorkflowDefinition.s).parameters
    assert [p.kind for p in child.values()][1:] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    error = celery_romancy.ChildWorkflowError("c-1", "payment", "failed", {"type": "X"})
    assert (error.instance_id, error.status, error.error) == ("c-1", "failed", {"type": "X"})
    from celery_romancy.states import TERMINAL, Status

    assert Status("compensated") in TERMINAL  # a child undone by its parent's rollback


def test_every_error_shares_one_root() -> None:
    for name in PUBLIC:
        obj = getattr(celery_romancy, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, celery_romancy.RomancyError), name


def test_package_ships_its_type_marker() -> None:
    from importlib.resources import files

    assert files("celery_romancy").joinpath("py.typed").is_file()


def test_every_error_pickles_as_itself_with_its_attributes() -> None:
    """Celery checks that a task's exception pickles; one that does not is reported under
    the nearest base class that does (a PoisonStepError as a plain RomancyError)."""
    import pickle

    from celery.utils.serialization import get_pickleable_exception

    from celery_romancy.errors import LeaseHeldError

    samples = [
        celery_romancy.PoisonStepError("i-1", "reserve:1", 3),
        celery_romancy.ChildWorkflowError("c-1", "payment", "cancelled", None, "stop"),
        celery_romancy.NonDeterminismError("i-1", 2, "charge:1", "refund:1"),
        celery_romancy.WorkflowAlreadyStartedError("i-1", "is taken"),
        celery_romancy.EventTimeoutError("paid", 5.0),
        celery_romancy.ActivityError("shop.Declined", "no"),
        celery_romancy.WorkflowFailedError("i-1", "failed", {"type": "X", "message": "m"}),
        celery_romancy.SerializationError("bad", path="order.total", problem="not a number"),
        LeaseHeldError("i-1", 2.5),
    ]
    for error in samples:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert (again.args, again.__dict__) == (error.args, error.__dict__)
        assert str(again) == str(error)
        assert type(get_pickleable_exception(error)) is type(error)
