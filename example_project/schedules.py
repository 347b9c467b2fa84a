"""Scheduled workflows: a nightly report, started once per night however many beats run.

    python example_project/schedules.py

On the embedded default (no service to start). Celery beat would send the schedule's
entry every night at 02:00; here two sends of the same night, as two beats (or a beat
and its restart) would make, go through a real in-process worker: both name the same
instance, which runs once.
"""

from __future__ import annotations

import tempfile
import threading
from typing import Any

from celery import signals
from celery.schedules import crontab

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker
from celery_romancy.schedules import START_TASK, scheduled_time

folder = tempfile.mkdtemp(prefix="romancy-schedules-")
app = embedded_celery("schedules", folder)
romancy = Romancy(app)


@romancy.activity("build_report")
def build_report(region: str, night: str) -> str:
    print(f"  build_report: {region} for the night of {night}", flush=True)
    return f"report-{region}-{night}"


@romancy.workflow("nightly_report")
def nightly_report(ctx: WorkflowContext, region: str) -> str:
    # The night this run is for: its tick, from its instance id.
    night = scheduled_time(ctx.instance_id)
    return build_report.execute(ctx, region, night.date().isoformat() if night else "today")


# Every night at 02:00 in the app's timezone (UTC unless app.conf.timezone says otherwise).
romancy.schedule("nightly-report", nightly_report, crontab(hour=2, minute=0), "eu")

starts: list[str] = []
started = threading.Condition()


@signals.task_postrun.connect
def on_start(sender: Any = None, retval: Any = None, **_: Any) -> None:
    if sender is not None and sender.name == START_TASK:
        with started:
            starts.append(retval["instance_id"])
            started.notify_all()


def main() -> None:
    entry = app.conf.beat_schedule["romancy.schedule:nightly-report"]
    print(f"beat entry: {entry['task']} {entry['args']} {entry['schedule']}")
    start = app.tasks[START_TASK]
    with in_process_worker(app):
        # What beat sends at 02:00:00, and a second beat 1.5 s later.
        for sent_at in ("2026-11-29T02:00:00.004+00:00", "2026-11-29T02:00:01.5+00:00"):
            start.apply_async(["nightly-report"], {"sent_at": sent_at})
        with started:
            started.wait_for(lambda: len(starts) == 2, timeout=60)
        for instance_id in starts:
            print(f"sent -> {instance_id}")
        runs = romancy.find_instances(search={"schedule": "nightly-report"})
        print(f"runs: {[run.instance_id for run in runs]}")
        print(f"result: {romancy.result(runs[0].instance_id, timeout=60)}")


if __name__ == "__main__":
    main()
