"""Saga workflows for the compensation tests: a trip booked in three steps.

Every effect goes to the ledger with its arguments, so tests can check which
compensations ran, in which order, with what.
"""

from __future__ import annotations

from pathlib import Path

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext

from .ledger import Gate, Ledger

NO_RETRY = RetryPolicy(max_attempts=1)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05, backoff_coefficient=2.0)


class FlakyError(Exception):
    pass


class BadRequestError(Exception):
    pass


def register_sagas(romancy: Romancy, folder: Path) -> None:
    ledger = Ledger(folder / "ledger.log")

    @romancy.compensation("cancel_flight", retry=FAST_RETRY)
    def cancel_flight(trip_id: str, result: str) -> None:
        if (folder / "flight-api-down").exists():
            ledger.record(f"cancel_flight-failed:{trip_id}")
            raise ConnectionError("flight API unreachable")
        ledger.record(f"cancel_flight:{trip_id}:{result}")

    @romancy.compensation("cancel_hotel", retry=NO_RETRY)
    def cancel_hotel(trip_id: str, nights: int, result: str) -> None:
        ledger.record(f"cancel_hotel-start:{trip_id}")
        if trip_id.startswith("slowundo"):
            Gate(folder, f"undo-{trip_id}").wait()
        ledger.record(f"cancel_hotel:{trip_id}:{nights}:{result}")

    @romancy.compensation("cancel_car", retry=NO_RETRY)
    def cancel_car(trip_id: str) -> None:
        ledger.record(f"cancel_car:{trip_id}")

    @romancy.compensation("send_apology", retry=NO_RETRY)
    def send_apology(trip_id: str, channel: str) -> None:
        ledger.record(f"send_apology:{trip_id}:{channel}")

    @romancy.activity("book_flight", compensation=cancel_flight, retry=NO_RETRY)
    def book_flight(trip_id: str, seat: str) -> str:
        ledger.record(f"book_flight:{trip_id}:{seat}")
        return f"FL-{trip_id}"

    @romancy.activity("book_hotel", compensation=cancel_hotel, retry=NO_RETRY)
    def book_hotel(trip_id: str, nights: int) -> str:
        ledger.record(f"book_hotel-start:{trip_id}")
        if trip_id.startswith("held"):
            Gate(folder, f"hotel-{trip_id}").wait()
        ledger.record(f"book_hotel:{trip_id}:{nights}")
        return f"HT-{trip_id}"

    @romancy.activity("book_car", compensation=cancel_car, retry=NO_RETRY)
    def book_car(trip_id: str, fail: bool) -> str:
        ledger.record(f"book_car:{trip_id}")
        if fail:
            raise TerminalError(f"no car for {trip_id}")
        return f"CAR-{trip_id}"

    @romancy.workflow("trip")
    def trip(ctx: WorkflowContext, trip_id: str, fail_car: bool = False) -> dict[str, str]:
        flight = book_flight.execute(ctx, trip_id, "12A")
        ctx.register_compensation(send_apology, trip_id, channel="email")
        hotel = book_hotel.execute(ctx, trip_id, 3)
        car = book_car.execute(ctx, trip_id, fail_car)
        return {"flight": flight, "hotel": hotel, "car": car}

    @romancy.activity(
        "flaky",
        retry=RetryPolicy(
            max_attempts=4,
            initial_interval=0.05,
            backoff_coefficient=2.0,
            max_interval=0.15,
            non_retryable=(BadRequestError,),
        ),
    )
    def flaky(key: str, failures: int, error: str = "flaky") -> int:
        ledger.record(f"flaky:{key}")
        attempt = ledger.count(f"flaky:{key}")
        if error == "bad-request":
            raise BadRequestError(key)
        if attempt <= failures:
            raise FlakyError(f"attempt {attempt} of {key} failed")
        return attempt

    @romancy.workflow("flaky_flow")
    def flaky_flow(ctx: WorkflowContext, key: str, failures: int, error: str = "flaky") -> int:
        return flaky.execute(ctx, key, failures, error)
