"""The dashboard in a real browser: headless Chromium (Playwright) on the dashboard served
by a real HTTP server, over sagas a real worker ran.

An operator opens the list, filters it to the failed sagas, opens one and reads its
error and its compensations; then opens the saga parked in ``compensation_failed``,
clicks "Retry compensation" once the cause is fixed, and watches the page (its own
auto-refresh, no reload) show the rollback finished. The instance page is kept as a
screenshot under ``test-artifacts/`` (paths printed), parked and retried;
``docs/dashboard-instance.png`` in the README is ``dashboard-parked-sqlite.png``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from celery_romancy.contrib.dashboard import Dashboard

from .browser import chromium, keep_screenshot, serve
from .harness import Harness

if TYPE_CHECKING:
    from playwright.sync_api import Page

# The worker's rollback and the page's refresh (every 5 s) both fit in this, with room.
FINISHES_WITHIN_MS = 30_000


def keep(page: Page, name: str) -> None:
    """A screenshot of the whole page, kept in ``test-artifacts/``."""
    kept = keep_screenshot(name)
    page.screenshot(path=str(kept), full_page=True)
    print(f"screenshot of the instance page: {kept}")


def run_trips(harness: Harness) -> dict[str, str]:
    """Three trips run to their ends by the harness's worker (running): one booked, one
    that failed and was undone, one whose undo is parked (the flight API is down).
    Their ids, by what became of them."""
    romancy = harness.romancy
    ids = {
        "booked": romancy.start_workflow("trip", "T1", instance_id="trip-T1"),
        "failed": romancy.start_workflow(
            "trip", "T2", fail_car=True, instance_id="trip-T2", search={"trip_id": "T2"}
        ),
    }
    assert romancy.wait(ids["booked"], timeout=30).status == "completed"
    assert romancy.wait(ids["failed"], timeout=30).status == "failed"
    (harness.folder / "flight-api-down").touch()
    ids["parked"] = romancy.start_workflow(
        "trip", "T3", fail_car=True, instance_id="trip-T3", search={"trip_id": "T3"}
    )
    assert romancy.wait(ids["parked"], timeout=30).status == "compensation_failed"
    return ids


def test_an_operator_finds_a_failed_saga_and_retries_its_parked_compensation_in_a_browser(
    harness: Harness, request: pytest.FixtureRequest
) -> None:
    database = request.node.callspec.id
    dashboard = Dashboard(harness.romancy, authorize=lambda _request: "ops@example.com")
    with chromium() as browser, harness.worker(), serve(dashboard) as url:
        from playwright.sync_api import expect  # chromium() checked it is installed

        sagas = run_trips(harness)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        rows = page.locator("#instances tbody tr[data-instance-id]")

        # The list: every saga, newest first.
        page.goto(url + "/")
        expect(rows).to_have_count(3)
        expect(page.locator('#status-counts a[data-status="failed"] .count')).to_have_text("1")

        # Filtered to the failed ones: only trip T2.
        page.select_option("#filter-status", "failed")
        page.locator("#filters button[type=submit]").click()
        expect(rows).to_have_count(1)
        expect(rows).to_have_attribute("data-instance-id", sagas["failed"])

        # Its page: the error, the step that failed, and the undo path newest first.
        rows.locator("th a").click()
        expect(page.locator("#status")).to_have_text("failed")
        error = page.locator("#error")
        expect(error).to_contain_text("celery_romancy.errors.TerminalError")
        expect(error).to_contain_text("no car for T2")
        expect(error).to_contain_text("book_car:1")
        undo = page.locator("#compensations li.undo")
        expect(undo.locator("strong")).to_have_text(
            ["cancel_hotel", "send_apology", "cancel_flight"]
        )
        for step in range(3):
            expect(undo.nth(step)).to_have_attribute("data-status", "done")
        expect(page.locator('#timeline li.entry[data-step-id="book_car:1"]')).to_have_attribute(
            "data-state", "failed"
        )

        # The parked saga, through the count of its status: the failed compensation.
        page.goto(url + "/")
        page.locator('#status-counts a[data-status="compensation_failed"]').click()
        expect(rows).to_have_count(1)
        rows.locator("th a").click()
        expect(page.locator("#status")).to_have_text("compensation failed")
        expect(page.locator("#error")).to_contain_text("flight API unreachable")
        flight = page.locator('#compensations li.undo[data-step-id="book_flight:1"]')
        expect(flight).to_have_attribute("data-status", "failed")
        keep(page, f"dashboard-parked-{database}.png")

        # The operator fixes the cause, then retries from the page.
        (harness.folder / "flight-api-down").unlink()
        page.locator("#action-retry-compensation button").click()
        expect(page.locator("#notice")).to_have_text("retrying the compensation")
        expect(page.locator("#status")).to_have_text("failed", timeout=FINISHES_WITHIN_MS)
        expect(flight).to_have_attribute("data-status", "done", timeout=FINISHES_WITHIN_MS)
        expect(page.locator("#error")).not_to_contain_text("flight API unreachable")
        operator = page.locator('#timeline li.entry[data-kind="operator"]')
        expect(operator).to_contain_text("ops@example.com")
        expect(operator).to_contain_text("retry compensation")

        keep(page, f"dashboard-retried-{database}.png")

    assert harness.romancy.get_instance(sagas["parked"]).status == "failed"
    assert harness.ledger.count("cancel_flight:T3:FL-T3") == 1  # undone once, after the fix
    assert harness.ledger.count("cancel_hotel:T3:3:HT-T3") == 1  # not undone again
