"""Loops without unbounded history: ``ctx.continue_as_new`` on the embedded default.

    python example_project/loops.py

A meter poller reads a page of readings, sleeps, and continues as new with its cursor:
each run records two steps, however long the loop runs. Then a thermostat that waits
for events: each event is sent to the first run's id and reaches whichever run holds
the loop by then. No service to start.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-loops-")
app = embedded_celery("loops", folder)
romancy = Romancy(app)

READINGS = {"meter-7": [3, 5, 2, 8, 1, 4, 6]}


@dataclass
class Progress:
    cursor: int
    total: int


@romancy.activity("fetch_readings")
def fetch_readings(meter: str, cursor: int) -> list[int]:
    return READINGS[meter][cursor : cursor + 2]  # one page


@romancy.workflow("meter_poller")
def meter_poller(ctx: WorkflowContext, meter: str, progress: Progress) -> Progress:
    page = fetch_readings.execute(ctx, meter, progress.cursor)
    if not page:
        return progress  # caught up: the last run completes with the result
    ctx.sleep(0.1)  # the poll interval
    # This run ends here; the next starts with an empty history and these arguments.
    ctx.continue_as_new(meter, Progress(progress.cursor + len(page), progress.total + sum(page)))


@romancy.workflow("thermostat")
def thermostat(ctx: WorkflowContext, room: str, target: float) -> float:
    setting = ctx.wait_event("set_target", data_type=float | None)
    if setting is None:
        return target  # switched off: the loop ends
    ctx.continue_as_new(room, setting)


def set_the_thermostat() -> str:
    first = romancy.start_workflow(thermostat, "kitchen", 19.0, instance_id="thermo-1")
    for setting in (20.5, 21.0, None):
        romancy.send_event("set_target", setting, instance_id=first)  # the first run's id
    print(f"thermostat: {romancy.result(first, timeout=60)}", flush=True)  # the last run's
    return first


def print_chain(first: str) -> None:
    """Each run of the loop: the first keeps its id, the n-th next run is ``<first>~<n>``."""
    run, n = romancy.get_instance(first), 0  # the first run itself, status "continued"
    while True:
        steps = [event.step_id for event in romancy.get_history(run.instance_id)]
        print(f"  {run.instance_id}: {run.status}, history {steps}", flush=True)
        if run.status != "continued":
            break
        n += 1
        run = romancy.get_instance(f"{first}~{n}")  # its .continued_from: the run before


def main() -> None:
    with in_process_worker(app, concurrency=2):
        first = romancy.start_workflow(
            meter_poller, "meter-7", Progress(0, 0), instance_id="poll-meter-7"
        )
        print(f"meter: {romancy.result(first, timeout=60)}", flush=True)  # follows the chain
        print_chain(first)

        print_chain(set_the_thermostat())


if __name__ == "__main__":
    main()
