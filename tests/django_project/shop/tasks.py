import os
from pathlib import Path

from django.db import connection
from proj.celery import romancy

from celery_romancy import RetryPolicy, TerminalError, WorkflowContext


@romancy.activity("count_instances")
def count_instances() -> int:
    # The Django ORM's connection, in a prefork worker child; the history shares the database.
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM romancy_instances")
        return int(cursor.fetchone()[0])


@romancy.activity("greet")
def greet(name: str, instances: int) -> str:
    return f"hello {name}, instance {instances}"


@romancy.workflow("greeting")
def greeting(ctx: WorkflowContext, name: str) -> str:
    return greet.execute(ctx, name, count_instances.execute(ctx))


# -- a seat booking, for the admin's checks (admin_checks.py) ---------------------------

NO_RETRY = RetryPolicy(max_attempts=1)
ONE_RETRY = RetryPolicy(max_attempts=2, initial_interval=0.1)


def flag(name: str) -> Path:
    """A file the checks create or remove to make a step fail or pass."""
    return Path(os.environ["SHOP_FLAGS_DIR"]) / name


@romancy.compensation("release_seat", retry=NO_RETRY)
def release_seat(seat: str, result: str) -> None:
    if flag(f"seat-service-down-{seat}").exists():
        raise ConnectionError(f"the seat service is down: {result} not released")


@romancy.activity("reserve_seat", compensation=release_seat, retry=NO_RETRY)
def reserve_seat(seat: str) -> str:
    return f"HOLD-{seat}"


@romancy.activity("charge_card", retry=ONE_RETRY)
def charge_card(seat: str) -> str:
    charged_once = flag(f"charged-once-{seat}")
    if not charged_once.exists():  # the first attempt times out, the retry goes through
        charged_once.touch()
        raise ConnectionError(f"the card service timed out for {seat}")
    return f"PAY-{seat}"


@romancy.activity("issue_ticket", retry=NO_RETRY)
def issue_ticket(seat: str, answer: str) -> str:
    if answer != "confirmed":
        raise TerminalError(f"seat {seat} was not confirmed: {answer}")
    return f"TICKET-{seat}"


@romancy.workflow("booking")
def booking(ctx: WorkflowContext, seat: str) -> str:
    reserve_seat.execute(ctx, seat)
    charge_card.execute(ctx, seat)
    answer = ctx.wait_event("confirmation", data_type=str)
    return issue_ticket.execute(ctx, seat, answer)


@romancy.activity("check_seat", retry=NO_RETRY)
def check_seat(seat: str) -> str:
    return f"{seat} ok"


@romancy.workflow("seat_check")
def seat_check(ctx: WorkflowContext, seat: str) -> str:
    return check_seat.execute(ctx, seat)


@romancy.workflow("party_check")
def party_check(ctx: WorkflowContext, seats: list[str]) -> list[str]:
    # Each seat checked by a child workflow (ids "<this id>/<step id>").
    return [ctx.execute_child(seat_check, seat) for seat in seats]
