"""Durable sagas for Celery: workflows whose every step is a recorded Celery task."""

from .activity_info import ActivityInfo, current_activity
from .app import Romancy
from .context import ChildHandle, WorkflowContext
from .definitions import (
    ActivityDefinition,
    ChildSignature,
    CompensationDefinition,
    StepSignature,
    WorkflowDefinition,
)
from .errors import (
    ActivityError,
    ChildWorkflowError,
    ConfigurationError,
    EventConflictError,
    EventTimeoutError,
    InstanceStateError,
    InvalidArgumentsError,
    NonDeterminismError,
    PayloadTooLargeError,
    PoisonStepError,
    RomancyError,
    SerializationError,
    TerminalError,
    UnknownInstanceError,
    UnknownWorkflowError,
    WaitTimeoutError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
)
from .retry import RetryPolicy
from .settings import RomancySettings
from .storage import HistoryEvent, WorkflowInstance

__all__ = [
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
]

__version__ = "0.1.0"
