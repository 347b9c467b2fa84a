"""The package's Celery tasks and its place in the app's config.

Each activity and compensation is a task of its own name (so Flower and routing see
it); the maintenance jobs are ``romancy.*`` tasks that beat sends.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import Task, bootsteps, signals
from celery.exceptions import Retry, TaskPredicate

from . import maintenance, outbox, retention, scheduled_runs, schedules
from .dispatch import WAKE_TASK
from .errors import ActivityError, ConfigurationError, LeaseHeldError
from .runner import FailedAttempt
from .settings import DEFAULT_DATABASE_URL, RomancySettings, masked_url

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)

STEP_TASK_OPTIONS: dict[str, Any] = {
    # Ack after the step is recorded: a worker that dies mid-step leaves the message
    # to be redelivered, and the dispatch token makes the redelivery harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # A step's task fails (or says RETRY) only after its attempt is recorded: its
    # message is done with, whatever task_acks_on_failure(_or_timeout) the app sets.
    # (``acks_on_failure`` for Celery >= 5.7, the other for older ones.)
    "acks_on_failure": True,
    "acks_on_failure_or_timeout": True,
    # The engine retries steps itself: Celery's autoretry (say, from task_annotations)
    # would republish a failed step's message instead of letting its task fail.
    "autoretry_for": (),
    "serializer": "json",
    "ignore_result": True,
}
MAINTENANCE_TASK_OPTIONS: dict[str, Any] = {"serializer": "json", "ignore_result": True}
# Serializers whose decoder can run code the message's sender chose, by name and by
# content type (``accept_content`` takes either). Kombu decodes YAML with ``safe_load``,
# but a project may register its own YAML serializer: refused all the same.
UNSAFE_CONTENT = {
    "pickle": "application/x-python-serialize",
    "yaml": "application/x-yaml",
}


def install(romancy: Romancy) -> None:
    """Register the maintenance tasks and, once the app is configured, the config."""
    app = romancy.app
    register_maintenance_tasks(romancy)
    scheduled_runs.register_start_task(romancy)
    schedules.install_beat_hook(romancy)
    # Beat entries need the settings, which need the app's config: wait for it.
    if app.configured:
        configure(romancy)
    else:
        app.on_after_configure.connect(lambda *_, **__: configure(romancy), weak=False)

    def add_beat_entries(sender: Any = None, **_: Any) -> None:
        # A user may replace ``beat_schedule`` after configuration: beat gets ours anyway.
        if sender is not None and sender.app is app:
            sender.scheduler.update_from_dict(maintenance.beat_schedule(romancy.settings))

    signals.beat_init.connect(add_beat_entries, weak=False)
    app.steps["worker"].add(worker_startup_step(romancy))


def worker_startup_step(romancy: Romancy) -> type[bootsteps.StartStopStep]:
    """A worker bootstep: check the configuration and say which database the worker
    records to, before the worker consumes its first message.

    A bootstep rather than a signal: Celery logs and swallows what a signal receiver
    raises, while a bootstep that raises stops the worker (exit code 1).
    """

    class RomancyStartup(bootsteps.StartStopStep):  # type: ignore[misc]  # untyped Celery
        label = "celery_romancy"

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            # Every worker of the app consumes the maintenance queue, whatever its -Q:
            # beat's jobs then never wait behind a backlog of steps, and never go
            # unconsumed. Added before the consumer starts, as Celery adds worker_direct.
            queue = romancy.settings.maintenance_queue
            if queue is not None:
                worker.app.amqp.queues.select_add(queue)

        def start(self, worker: Any) -> None:
            settings = romancy.settings  # a bad setting stops the worker here, not mid-step
            refuse_unsafe_content(romancy.app.conf.get("accept_content") or [], settings)
            log_history_database(settings)

    return RomancyStartup


def refuse_unsafe_content(accepted: Any, settings: RomancySettings) -> None:
    """``ConfigurationError`` if the worker would decode pickle or YAML messages.

    Celery decodes a message before any task sees it, with the app's ``accept_content``
    for every task alike, so one pickled message to any task name (a romancy step or
    Celery's own ``celery.chord_unlock``) runs the code its sender put in it.
    """
    if settings.allow_unsafe_content:
        return
    names = {str(entry).lower() for entry in accepted}
    unsafe = sorted(name for name, mime in UNSAFE_CONTENT.items() if {name, mime} & names)
    if unsafe:
        raise ConfigurationError(
            f"this worker accepts {' and '.join(unsafe)} messages (accept_content="
            f"{list(accepted)!r}): whoever can publish to the broker could run code in it, "
            "since a message is decoded before any task sees it. celery_romancy's messages "
            f"are JSON: remove {' and '.join(unsafe)} from accept_content, or set "
            "romancy_allow_unsafe_content = True to take that risk knowingly"
        )


def log_history_database(settings: RomancySettings) -> None:
    """Name the history database in the worker's startup log (password masked)."""
    url = settings.database_url
    logger.info("celery_romancy: workflow history in %s", masked_url(url))
    if url == DEFAULT_DATABASE_URL:
        # Only right for a single-process demo: other processes would write elsewhere.
        logger.warning(
            "celery_romancy: the history is the default %s, the file %s in this "
            "worker's working directory: set romancy_database_url to the database the "
            "processes that start workflows use",
            url,
            os.path.abspath("romancy.db"),
        )


def configure(romancy: Romancy) -> None:
    conf = romancy.app.conf
    accepted = conf.get("accept_content") or ["json"]
    if "json" not in accepted and "application/json" not in accepted:
        conf.accept_content = [*accepted, "json"]  # the package's own messages are JSON
    try:
        # Read, not cached: more config may follow this first access.
        settings = RomancySettings.from_celery(conf, **romancy.overrides)
    except ConfigurationError:
        return  # reported on first use, where the caller can see it
    # The user's own entries stay; ours are added under their ``romancy.`` names.
    conf.beat_schedule = {**maintenance.beat_schedule(settings), **(conf.beat_schedule or {})}


def register_step_task(romancy: Romancy, name: str) -> None:
    """The Celery task that runs activity or compensation ``name`` for one instance.

    The queue travels with each message (``send_task(queue=...)``), not on the task.
    """
    runner = romancy.runner

    def run_step(task: Task, instance_id: str, token: str) -> str:
        try:
            ran = runner.run(instance_id, token, name)
        except LeaseHeldError as busy:
            raise task.retry(countdown=busy.retry_in, max_retries=None) from None
        except sa.exc.DBAPIError as exc:
            # The history database is unreachable (restarting, failing over): the step
            # is not recorded, so keep its message rather than ack it away and wait for
            # the recovery sweep.
            logger.warning("celery_romancy: database error in %s, retrying: %s", name, exc)
            raise task.retry(countdown=2.0, max_retries=None) from None
        if isinstance(ran, FailedAttempt):
            # Raised here, outside the handlers above, so an activity's own database
            # error is never mistaken for the history's.
            raise as_task_outcome(ran)
        return ran

    run_step.__name__ = run_step.__qualname__ = name.replace(".", "_")
    romancy.app.task(name=name, bind=True, lazy=False, shared=False, **STEP_TASK_OPTIONS)(run_step)


def as_task_outcome(failed: FailedAttempt) -> Exception:
    """What a step's task raises for an attempt that failed, once it is recorded: Celery
    then shows the task as ``RETRY`` or ``FAILURE`` (events, Flower, ``task_failure``,
    the worker log) with the activity's own exception.

    ``Retry`` is raised, not ``task.retry()`` called: the engine has dispatched the next
    attempt already (a task of its own id), so Celery must send nothing.
    """
    error = failed.error
    if isinstance(error, TaskPredicate):
        # Celery would act on an activity's own Retry, Ignore or Reject (redeliver, ack
        # silently): it failed like any error.
        error = ActivityError(f"{type(error).__module__}.{type(error).__qualname__}", str(error))
    if failed.retry_in is not None:
        retry: Exception = Retry(exc=error, when=failed.retry_in)
        retry.__cause__ = error  # the traceback Celery sends and logs shows the activity's
        return retry
    return error


def register_maintenance_tasks(romancy: Romancy) -> None:
    def recover() -> dict[str, int]:
        report = maintenance.recover(romancy)
        return {"republished": report.republished, "failed": report.failed_publishes}

    def fire_timers() -> int:
        return maintenance.fire_due(romancy)

    def relay_outbox() -> int:
        return outbox.relay(romancy)

    def purge() -> dict[str, int]:
        return retention.purge(romancy).counts()

    def wake(task: Task, instance_id: str, token: str) -> str:
        # A timer's countdown message; beat's fire_timers is the fallback.
        result = maintenance.fire(romancy, instance_id, token)
        if result == "early":  # clocks differ between machines: come back shortly
            raise task.retry(countdown=0.2, max_retries=50)
        return result

    register = romancy.app.task
    options = {"lazy": False, "shared": False, **MAINTENANCE_TASK_OPTIONS}
    register(name=maintenance.RECOVER_TASK, **options)(recover)
    register(name=maintenance.FIRE_TASK, **options)(fire_timers)
    register(name=maintenance.RELAY_TASK, **options)(relay_outbox)
    register(name=retention.PURGE_TASK, **options)(purge)
    register(name=WAKE_TASK, bind=True, acks_late=True, **options)(wake)
