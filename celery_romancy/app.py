"""``Romancy``: binds the registry, the storage, the Celery tasks and the settings to one app."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from celery import Celery

from . import events, maintenance, operations, outbox, retention, schedules, tasks, transition
from .definitions import ActivityDefinition, CompensationDefinition, WorkflowDefinition
from .errors import (
    RomancyError,
    UnknownInstanceError,
    WaitTimeoutError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
)
from .heartbeat import LeaseKeeper
from .patching import checked_version
from .recorded import checked_search
from .registry import Registry
from .retry import DEFAULT_RETRY_POLICY, RetryPolicy
from .runner import StepRunner
from .settings import RomancySettings
from .states import Status
from .storage import HistoryEvent, OperatorAction, Store, WorkflowInstance, open_store
from .validation import (
    MAX_NAME_LENGTH,
    check_identifier,
    check_payload_size,
    check_text,
    is_possible_identifier,
    shorten,
)

P = ParamSpec("P")
R = TypeVar("R")


class Romancy:
    """Durable workflows on a Celery app.

    Nothing connects at construction: settings are read from ``celery_app.conf`` and the
    database is opened (and migrated) on first use, in each process.
    """

    def __init__(
        self,
        celery_app: Celery,
        database_url: str | None = None,
        worker_id: str | None = None,
        **settings: Any,
    ) -> None:
        self.app = celery_app
        self.overrides = {"database_url": database_url, "worker_id": worker_id, **settings}
        self._settings: RomancySettings | None = None
        self._storage: Store | None = None
        self.registry = Registry()
        self.runner = StepRunner(self)
        self._lease_keeper: LeaseKeeper | None = None
        self.schedules: dict[str, schedules.ScheduledWorkflow] = {}
        celery_app._celery_romancy = self  # for CLI and contrib
        tasks.install(self)

    # -- settings and storage ------------------------------------------------------------

    @property
    def settings(self) -> RomancySettings:
        if self._settings is None:
            self._settings = RomancySettings.from_celery(self.app.conf, **self.overrides)
        return self._settings

    @property
    def storage(self) -> Store:
        if self._storage is None:
            settings = self.settings
            self._storage = open_store(settings.database_url, settings.prepared_statements)
        return self._storage

    @property
    def lease_keeper(self) -> LeaseKeeper:
        if self._lease_keeper is None:
            self._lease_keeper = LeaseKeeper(self.storage, self.settings.lease_timeout)
        return self._lease_keeper

    @property
    def worker_id(self) -> str:
        return self.settings.resolved_worker_id()

    def migrate(self) -> None:
        """Create or upgrade the history tables now (first use does it too)."""
        self.storage.engine  # noqa: B018 - opening the engine applies the migrations

    def recover(self) -> maintenance.RecoveryReport:
        """Run the recovery sweep now (beat runs it every ``romancy_recovery_interval``)."""
        return maintenance.recover(self)

    # -- decorators -----------------------------------------------------------------------

    def workflow(
        self, name: str, *, version: str | None = None
    ) -> Callable[[Callable[Concatenate[Any, P], R]], WorkflowDefinition[P, R]]:
        """Register a workflow: ``fn(ctx, *input) -> output``, replayed from history.

        ``version``: a short string (``"3"``) stamped on each instance it starts, to
        find the instances of older code (``find_instances(version=...)``)."""
        _check_name(name)
        checked_version(version)  # a bad one fails at the decorator, not at its use

        def register(fn: Callable[Concatenate[Any, P], R]) -> WorkflowDefinition[P, R]:
            definition = WorkflowDefinition(name, fn, version)
            self.registry.add(definition)
            return definition

        return register

    def activity(
        self,
        name: str,
        *,
        compensation: CompensationDefinition[Any] | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
    ) -> Callable[[Callable[P, R]], ActivityDefinition[P, R]]:
        """Register an activity: one Celery task named ``name``, its result recorded once."""
        _check_name(name)
        if compensation is not None and not isinstance(compensation, CompensationDefinition):
            raise RomancyError(
                f"activity {name!r}: compensation= takes a function decorated with "
                "@romancy.compensation"
            )

        def register(fn: Callable[P, R]) -> ActivityDefinition[P, R]:
            definition = ActivityDefinition(
                name,
                fn,
                compensation=compensation,
                retry=retry or DEFAULT_RETRY_POLICY,
                queue=queue,
            )
            self.registry.add(definition)
            tasks.register_step_task(self, name)
            return definition

        return register

    def compensation(
        self, name: str, *, retry: RetryPolicy | None = None, queue: str | None = None
    ) -> Callable[[Callable[P, Any]], CompensationDefinition[P]]:
        """Register a compensation: one Celery task named ``name`` that undoes an activity."""
        _check_name(name)

        def register(fn: Callable[P, Any]) -> CompensationDefinition[P]:
            definition = CompensationDefinition(name, fn, retry or DEFAULT_RETRY_POLICY, queue)
            self.registry.add(definition)
            tasks.register_step_task(self, name)
            return definition

        return register

    # -- starting and reading -----------------------------------------------------------------

    def start_workflow(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        *args: Any,
        instance_id: str | None = None,
        search: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a workflow and return its instance id at once.

        Arguments are checked against the workflow's signature and annotations and stored
        as JSON before anything is written (``InvalidArgumentsError``). With a caller-chosen
        ``instance_id`` a second start with equal arguments returns the same instance and
        runs nothing; other arguments or another workflow raise
        ``WorkflowAlreadyStartedError``.

        ``search``: business keys to find the instance by (``{"order_id": "ORD-4"}``,
        see ``find_instances``), stored with it; a second start of the same id leaves
        those of the first.
        """
        return self.start_prepared(
            self.prepare_start(workflow, *args, instance_id=instance_id, search=search, **kwargs)
        )

    def prepare_start(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        *args: Any,
        instance_id: str | None = None,
        search: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> PreparedStart:
        """Check a start and take its JSON snapshot, writing nothing (for starting
        later, e.g. after a transaction commits: ``start_prepared``)."""
        definition = self.registry.resolve_workflow(workflow)
        if instance_id is not None:
            check_identifier(instance_id, "instance_id")
        keys = checked_search({} if search is None else search)
        input_data = definition.shape.bind(args, kwargs)
        check_payload_size(input_data, self.settings.max_payload_bytes, "the workflow input")
        return PreparedStart(definition, input_data, instance_id or uuid.uuid4().hex, keys)

    def start_prepared(self, prepared: PreparedStart) -> str:
        """Start what ``prepare_start`` checked; idempotent on its instance id."""
        definition, input_data, instance_id = (
            prepared.workflow,
            prepared.input_data,
            prepared.instance_id,
        )
        instance, created = transition.start(
            self, definition.name, instance_id, input_data, prepared.search
        )
        if not created:
            if instance.workflow_name != definition.name:
                raise WorkflowAlreadyStartedError(
                    instance_id, f"already belongs to workflow {instance.workflow_name!r}"
                )
            if _canonical(instance.input_data) != _canonical(input_data):
                raise WorkflowAlreadyStartedError(
                    instance_id,
                    f"was already started with other arguments for {definition.name!r}; "
                    "start it with the same arguments to get it back, or choose another id",
                )
        return instance_id

    def schedule(
        self,
        name: str,
        workflow: WorkflowDefinition[Any, Any] | str,
        schedule: Any,
        *args: Any,
        search: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> schedules.ScheduledWorkflow:
        """Start ``workflow(*args, **kwargs)`` at each tick of ``schedule`` (a
        ``crontab``, or an interval: seconds, a ``timedelta``, ``celery.schedules.schedule``,
        ticking on whole multiples of it since the epoch) from Celery beat.

        Checked here as ``start_workflow`` checks a start. Each run is the instance
        ``schedule:<name>:<tick, UTC>``, started once however many beats send the tick;
        a tick beat was down for is started when it is back (only the latest of several),
        as Celery beat runs any overdue entry. Call it where the app is defined, so beat
        and the workers register it alike.
        """
        return schedules.add(self, name, workflow, schedule, args, kwargs, search)

    def get_instance(self, instance_id: str) -> WorkflowInstance:
        """The instance, or ``UnknownInstanceError``."""
        if not is_possible_identifier(instance_id):  # no such row can exist: ask no database
            raise UnknownInstanceError(f"no workflow instance {shorten(instance_id)}")
        instance = self.storage.get_instance(instance_id)
        if instance is None:
            raise UnknownInstanceError(f"no workflow instance {instance_id!r}")
        return instance

    def get_history(self, instance_id: str) -> list[HistoryEvent]:
        self.get_instance(instance_id)
        return self.storage.get_history(instance_id)

    def find_instances(
        self,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
        root: str | None = None,
        search: Mapping[str, str] | None = None,
        version: str | None = None,
        after: tuple[datetime, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[WorkflowInstance]:
        """Instances, newest first. ``parent``: the children of that instance; ``root``:
        every instance of the tree a workflow started on its own (pass that workflow's
        id), the root included; ``search``: the instances having all these business keys
        (``{"order_id": "ORD-4"}``, set at the start or by ``ctx.set_search_attributes``);
        ``version``: the instances started under that code version
        (``@romancy.workflow(name, version=...)``); ``created_after`` (included) and
        ``created_before`` (excluded): when it started; ``after``: the next page, after
        the last instance of this one (``(instance.created_at, instance.instance_id)``)."""
        keys = None if search is None else checked_search(search)
        return self.storage.find_instances(
            status=status,
            workflow=workflow,
            limit=limit,
            parent=parent,
            root=root,
            search=keys,
            version=version,
            after=after,
            created_after=created_after,
            created_before=created_before,
        )

    def search_attributes(self, instance_id: str) -> dict[str, str]:
        """The instance's business keys and their values; ``UnknownInstanceError`` for
        an unknown id."""
        self.get_instance(instance_id)
        return self.storage.get_search_attributes(instance_id)

    def wait(self, instance_id: str, timeout: float = 30.0) -> WorkflowInstance:
        """Block until the instance reaches a terminal status; ``WaitTimeoutError`` after
        ``timeout`` seconds. A run that continued (``ctx.continue_as_new``) is followed to
        the run of its chain that ends otherwise, which is returned."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            instance = self.get_instance(instance_id)
            if instance.status == Status.CONTINUED:
                instance = self.get_instance(self.storage.last_run(instance_id))
                instance_id = instance.instance_id
            if instance.is_terminal and instance.status != Status.CONTINUED:
                return instance
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(
                    f"workflow instance {instance_id} is still {instance.status} after {timeout} s"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)

    # -- operators ---------------------------------------------------------------------------

    def cancel(self, instance_id: str, reason: str = "cancelled", *, by: str | None = None) -> bool:
        """Cancel at the next step boundary, compensating succeeded steps; see
        ``operations.cancel``. A finished instance raises ``InstanceStateError``.
        ``by``: who asked, kept with the instance's operator actions (with the reason)."""
        check_text(reason, "reason")
        _check_actor(by)
        requested = operations.cancel(self, instance_id, reason)
        if requested:
            self._record(instance_id, "cancel", by, {"reason": reason})
        return requested

    def send_event(
        self,
        event_type: str,
        data: Any = None,
        instance_id: str | None = None,
        correlation_id: str | None = None,
        *,
        data_type: Any = None,
        by: str | None = None,
    ) -> bool:
        """Send an event to one instance, or to whichever waits with ``correlation_id``.

        Callable from any process (a view, a script): it is kept until a matching
        ``ctx.wait_event`` takes it, and wakes a waiting instance at once. With
        ``data_type``, ``data`` must fit it (``InvalidArgumentsError`` otherwise).
        ``by``: who sent it, kept with the instance's operator actions (for an event
        sent to an instance id).
        """
        _check_actor(by)
        sent = events.send_event(
            self, event_type, data, instance_id, correlation_id, data_type=data_type
        )
        if sent and instance_id is not None:
            self._record(instance_id, "send_event", by, {"event_type": event_type})
        return sent

    def fire_due(self) -> int:
        """Fire due timers and event timeouts now (beat does it every
        ``romancy_timer_interval``)."""
        return maintenance.fire_due(self)

    def relay_outbox(self) -> int:
        """Publish pending outbox rows now (beat does it every ``romancy_outbox_interval``)."""
        return outbox.relay(self)

    def purge(
        self,
        older_than: timedelta | float | None = None,
        status: str | Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> retention.PurgeReport:
        """Delete finished instances that ended more than ``older_than`` ago (default
        ``romancy_retention``; a timedelta or seconds) with all their rows; only those
        in ``status`` if given. A child workflow goes only with its whole tree. With
        ``dry_run`` count, delete nothing. Beat runs it every ``romancy_purge_interval``."""
        return retention.purge(self, older_than, status, dry_run)

    def resume(self, instance_id: str, *, by: str | None = None) -> None:
        """Push an instance on: re-send its pending step, or replay a parked one
        (nondeterminism or a poison step) after the cause was fixed. ``by``: who did it,
        kept with the instance's operator actions."""
        _check_actor(by)
        operations.resume(self, instance_id)
        self._record(instance_id, "resume", by)

    def retry_compensation(self, instance_id: str, *, by: str | None = None) -> None:
        """Resume a rollback parked in ``compensation_failed``. ``by``: who did it, kept
        with the instance's operator actions."""
        _check_actor(by)
        operations.retry_compensation(self, instance_id)
        self._record(instance_id, "retry_compensation", by)

    def operator_actions(self, instance_id: str) -> list[OperatorAction]:
        """What operators did to the instance (through ``cancel``, ``resume``,
        ``retry_compensation`` and ``send_event`` to its id), oldest first."""
        self.get_instance(instance_id)
        return self.storage.get_operator_actions(instance_id)

    def _record(
        self, instance_id: str, action: str, by: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        # After the action succeeded: an action refused leaves no trace.
        self.storage.record_operator_action(instance_id, action, by, detail)

    def result(self, instance_id: str, timeout: float = 30.0) -> Any:
        """Wait, then return the output as the workflow's declared return type."""
        instance = self.wait(instance_id, timeout)  # the chain's last run, if it continued
        if instance.status != "completed":
            raise WorkflowFailedError(instance.instance_id, instance.status, instance.error)
        definition = self.registry.workflow(instance.workflow_name)
        return definition.shape.decode_result(instance.output_data)


@dataclass(frozen=True)
class PreparedStart:
    """A checked start: the workflow, its input as stored JSON, the instance id, and its
    business keys."""

    workflow: WorkflowDefinition[Any, Any]
    input_data: dict[str, Any]
    instance_id: str
    # Business keys stored with the instance (``start_workflow(search=...)``).
    search: dict[str, str] = field(default_factory=dict)


def _canonical(data: Any) -> str:
    """One spelling per JSON value, to compare stored input with a new start's."""
    return json.dumps(data, sort_keys=True)


def _check_actor(by: Any) -> None:
    if by is not None:
        check_identifier(by, "by", MAX_NAME_LENGTH)  # the width of operator_actions.actor


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise RomancyError(
            "give the name as the decorator's first argument, e.g. @romancy.activity('charge')"
        )
