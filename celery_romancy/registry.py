"""Name -> definition lookups for one ``Romancy``."""

from __future__ import annotations

from typing import Any

from .definitions import ActivityDefinition, CompensationDefinition, WorkflowDefinition
from .errors import ConfigurationError, UnknownWorkflowError


class Registry:
    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowDefinition[Any, Any]] = {}
        self.activities: dict[str, ActivityDefinition[Any, Any]] = {}
        self.compensations: dict[str, CompensationDefinition[Any]] = {}

    def add(self, definition: Any) -> None:
        table: dict[str, Any]
        if isinstance(definition, WorkflowDefinition):
            table = self.workflows
        elif isinstance(definition, ActivityDefinition):
            table = self.activities
        else:
            table = self.compensations
        taken = (
            definition.name in self.workflows
            or definition.name in self.activities
            or definition.name in self.compensations
        )
        if taken:
            raise ConfigurationError(f"the name {definition.name!r} is already registered")
        table[definition.name] = definition

    def workflow(self, name: str) -> WorkflowDefinition[Any, Any]:
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise UnknownWorkflowError(f"unknown workflow {name!r} (registered: {known})") from None

    def resolve_workflow(
        self, workflow: WorkflowDefinition[Any, Any] | str
    ) -> WorkflowDefinition[Any, Any]:
        if isinstance(workflow, WorkflowDefinition):
            if self.workflows.get(workflow.name) is not workflow:
                raise UnknownWorkflowError(
                    f"workflow {workflow.name!r} is not registered with this Romancy"
                )
            return workflow
        if isinstance(workflow, str):
            return self.workflow(workflow)
        raise UnknownWorkflowError(
            f"expected a workflow or its name, got {type(workflow).__name__}"
        )

    def activity(self, name: str) -> ActivityDefinition[Any, Any]:
        try:
            return self.activities[name]
        except KeyError:
            raise ConfigurationError(f"unknown activity {name!r}") from None

    def compensation(self, name: str) -> CompensationDefinition[Any]:
        try:
            return self.compensations[name]
        except KeyError:
            raise ConfigurationError(f"unknown compensation {name!r}") from None

    def compensation_queue(self, name: str) -> str | None:
        definition = self.compensations.get(name)
        return definition.queue if definition is not None else None
