"""The public names are a contract: code outside this repository imports them."""

from __future__ import annotations

import celery_romancy

PUBLIC = {
    "ActivityDefinition",
    "ActivityError",
    "ActivityInfo",
    "CompensationDefinition",
    "ConfigurationError",
    "EventTimeoutError",
    "HistoryEvent",
    "InstanceStateError",
    "InvalidArgumentsError",
    "NonDeterminismError",
    "PoisonStepError",
    "RetryPolicy",
    "Romancy",
    "RomancyError",
    "RomancySettings",
    "SerializationError",
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


def test_every_error_shares_one_root() -> None:
    for name in PUBLIC:
        obj = getattr(celery_romancy, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, celery_romancy.RomancyError), name


def test_package_ships_its_type_marker() -> None:
    from importlib.resources import files

    assert files("celery_romancy").joinpath("py.typed").is_file()
