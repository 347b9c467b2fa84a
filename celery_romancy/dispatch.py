"""Publishing a step's Celery message, after the transaction that recorded it commits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from celery import Celery

from .commands import ActivityCommand

logger = logging.getLogger(__name__)


class InstanceRef(Protocol):
    """What a dispatch needs to know of its instance (a ``WorkflowInstance`` will do)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def workflow_name(self) -> str: ...


@dataclass(frozen=True)
class Dispatch:
    """One message: run ``command`` of ``instance_id``; ``token`` makes duplicates detectable."""

    instance_id: str
    workflow_name: str
    token: str
    command: ActivityCommand
    countdown: float | None = None
    # The step whose task sent this one (Flower draws the fan-out from it); inside a
    # worker task Celery fills it in itself.
    parent_id: str | None = None

    @property
    def argsrepr(self) -> str:
        """What Flower and the worker log show as the task's arguments: which saga and
        which step. (A ``shadow`` name would replace the task name itself, so Flower
        could no longer group and count steps by activity.)"""
        command = self.command
        return f"{self.workflow_name}[{self.instance_id}] {command.kind} {command.step_id}"


WAKE_TASK = "romancy.wake"


def publish(app: Celery, dispatch: Dispatch) -> bool:
    """Send the message; False if the broker refused (the dispatch sweep will resend it)."""
    command = dispatch.command
    # Activities and compensations are tasks of their own name; a timer wakes its instance.
    task_name = command.name if command.runs_as_task else WAKE_TASK
    try:
        app.send_task(
            task_name,
            args=(dispatch.instance_id, dispatch.token),
            task_id=dispatch.token,
            queue=dispatch.command.queue,
            countdown=dispatch.countdown,
            argsrepr=dispatch.argsrepr,
            group_id=command.group_id,
            parent_id=dispatch.parent_id,
            serializer="json",
            # Steps store no Celery result: without this, a Redis result backend makes
            # every publish outside a worker SUBSCRIBE to a result channel nobody reads.
            ignore_result=True,
            add_to_parent=False,
        )
    except Exception:
        logger.exception(
            "celery_romancy: could not publish %s for %s; the dispatch sweep will resend it",
            dispatch.command.step_id,
            dispatch.instance_id,
        )
        return False
    return True
