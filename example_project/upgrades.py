"""Upgrading workflow code while sagas run: release 1 starts two orders, which wait for
approval; release 2 (a fraud check added with ``ctx.patched``) is deployed over it and
starts a third. The first two finish the release 1 way, the third the release 2 way.

    python example_project/upgrades.py

On the embedded default (no service to start). Each release is its own module with its
own Celery app, as each would be its own deploy; they share the history database.
"""

from __future__ import annotations

import time

from celery_romancy import Romancy
from celery_romancy.embedded import in_process_worker


def wait_until_waiting(romancy: Romancy, *instance_ids: str) -> None:
    deadline = time.monotonic() + 60
    while any(romancy.get_instance(i).status != "waiting_for_event" for i in instance_ids):
        if time.monotonic() > deadline:
            raise TimeoutError("the orders did not reach their approval")
        time.sleep(0.05)


def main() -> None:
    import upgrades_release_1 as release_1

    with in_process_worker(release_1.app):
        for order_id in ("ORD-1", "ORD-2"):
            release_1.romancy.start_workflow(release_1.ship_order, order_id, instance_id=order_id)
        wait_until_waiting(release_1.romancy, "ORD-1", "ORD-2")

    # The deploy: release 1's worker has stopped; release 2's starts.
    import upgrades_release_2 as release_2

    romancy = release_2.romancy
    waiting = romancy.find_instances(version="1", status=["waiting_for_event"])
    print("release 1 instances still running:", ", ".join(sorted(i.instance_id for i in waiting)))
    with in_process_worker(release_2.app):
        romancy.start_workflow(release_2.ship_order, "ORD-3", instance_id="ORD-3")
        for order_id in ("ORD-1", "ORD-2", "ORD-3"):
            romancy.send_event("approved", instance_id=order_id)
        for order_id in ("ORD-1", "ORD-2", "ORD-3"):
            version = romancy.get_instance(order_id).workflow_version
            print(f"{order_id} (version {version}): {romancy.result(order_id, timeout=60)}")
    left = romancy.find_instances(version="1", status=["pending", "running", "waiting_for_event"])
    print(f"release 1 instances left: {len(left)}: its code can go")


if __name__ == "__main__":
    main()
