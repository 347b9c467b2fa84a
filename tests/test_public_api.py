"""The public names are a contract: code outside this repository imports them."""

from __future__ import annotations

import inspect

import celery_romancy

PUBLIC = {
    "ActivityDefinition",
    "ActivityError",
    "ActivityInfo",
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


def test_every_error_shares_one_root() -> None:
    for name in PUBLIC:
        obj = getattr(celery_romancy, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, celery_romancy.RomancyError), name


def test_package_ships_its_type_marker() -> None:
    from importlib.resources import files

    assert files("celery_romancy").joinpath("py.typed").is_file()
