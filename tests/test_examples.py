"""The README's demo and the order-saga example work with no service running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    # No broker or database URL from the environment can leak in: examples are embedded.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "ROMANCY"))}
    return subprocess.run(
        [sys.executable, str(ROOT / "example_project" / name)],
        cwd=cwd,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_quickstart_prints_its_steps_and_result(tmp_path: Path) -> None:
    done = run_example("quickstart.py", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("started user_onboarding, instance id: ") for line in lines)
    step1 = lines.index("  step 1: creating profile for user_123 <newuser@example.com>")
    step2 = lines.index("  step 2: sending welcome email to newuser@example.com")
    assert step1 < step2
    assert (
        "  create_user_profile:1 -> {'user_id': 'user_123', 'email': 'newuser@example.com'}"
        in lines
    )
    assert "  send_welcome_email:1 -> True" in lines
    assert lines.index("status: completed") > step2
    assert "user_id: user_123" in lines
    assert "email_sent: True" in lines
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory


def test_order_saga_completes(tmp_path: Path) -> None:
    done = run_example("orders.py", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "reserve_inventory: reserved 2 x ITEM-001, 1 x ITEM-002 for ORD-12345",
        "process_payment: charged $109.97 to customer@example.com for ORD-12345",
        "ship_order: shipped ORD-12345 to 1-2-3 Shibuya, Shibuya-ku, Tokyo, Japan",
        "status: completed",
        "total: $109.97",
        "tracking: TRACK-ORD-12345",
    ]


def test_order_saga_with_failed_shipping_refunds_then_releases(tmp_path: Path) -> None:
    done = run_example("orders.py", tmp_path, SHIPPING_FAILS="1")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()[1:]
    assert lines[:2] == [
        "reserve_inventory: reserved 2 x ITEM-001, 1 x ITEM-002 for ORD-12345",
        "process_payment: charged $109.97 to customer@example.com for ORD-12345",
    ]
    assert lines[2:5] == [
        "refund_payment: refunded $109.97 for ORD-12345",
        "cancel_inventory_reservation: released reservation RES-ORD-12345 for ORD-12345",
        "status: failed",
    ]
    assert lines[5].startswith("error: __main__.ShippingError: carrier refused the parcel")
    assert lines[5].endswith("(step ship_order:1)")
    assert not any(line.startswith("ship_order: shipped") for line in lines)


def test_fan_out_example_gathers_in_argument_order(tmp_path: Path) -> None:
    done = run_example("fan_out.py", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "receipt: receipt-ORD-7",
        "hold: hold-ORD-7",
        "labels: label:mug, label:tee, label:cap, label:pin",
    ]
    recorded = sorted(line.split()[-1] for line in lines[3:])
    assert recorded == sorted(
        ["gather:1", "charge:1", "reserve:1", "gather:2"]
        + [f"print_label:{i}" for i in range(1, 5)]
    )


@pytest.fixture(scope="module")
def children_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run of children.py for the tests that read its output: its folder, its stdout."""
    folder = tmp_path_factory.mktemp("children")
    done = run_example("children.py", folder)
    assert done.returncode == 0, done.stderr
    return folder, done.stdout


def test_children_example_rolls_back_its_children_and_prints_each_tree(
    children_run: tuple[Path, str],
) -> None:
    folder, stdout = children_run
    lines = stdout.splitlines()
    ord1, ord2, ord3 = (lines.index(f"ORD-{n}:") for n in (1, 2, 3))
    assert ord1 < ord2 < ord3

    # ORD-1: both children complete. The shipping child and email_customer run at the
    # same time, so only what follows from the waits is ordered.
    first = lines[ord1 + 1 : ord2]
    assert first[0] == "  charge_card: charged 42.00 for ORD-1"
    assert sorted(first[1:3]) == [
        "  book_courier: booked for ORD-1 to 1-2-3 Shibuya, Tokyo",
        "  email_customer: order ORD-1 is on its way",
    ]
    assert first[3:] == [
        "  result: INV-ORD-1",
        "  order-ORD-1 (place_order): completed",
        "    order-ORD-1/child:payment:1 (payment): completed",
        "    order-ORD-1/child:shipping:1 (shipping): completed",
    ]

    # ORD-2: the invoice fails after both children completed; the rollback undoes the
    # shipping child, then the payment child (newest first), each once, and both end
    # compensated.
    second = lines[ord2 + 1 : ord3]
    assert second[0] == "  charge_card: charged 42.00 for ORD-2"
    assert sorted(second[1:3]) == [
        "  book_courier: booked for ORD-2 to 4-5-6 Umeda, Osaka",
        "  email_customer: order ORD-2 is on its way",
    ]
    assert second[3:] == [
        "  cancel_courier: cancelled TRACK-ORD-2",
        "  refund_card: refunded 42.00 for ORD-2",
        "  error: celery_romancy.errors.TerminalError: no invoice address for ORD-2",
        "  order-ORD-2 (place_order): failed",
        "    order-ORD-2/child:payment:1 (payment): compensated",
        "    order-ORD-2/child:shipping:1 (shipping): compensated",
    ]

    # ORD-3: the payment child fails; the parent catches ChildWorkflowError and starts
    # no shipping child.
    assert lines[ord3 + 1 :] == [
        "  result: not paid: card declined for ORD-3",
        "  order-ORD-3 (place_order): completed",
        "    order-ORD-3/child:payment:1 (payment): failed",
    ]
    assert list(folder.iterdir()) == []  # nothing left in the working directory


def test_loops_example_keeps_each_runs_history_bounded_and_follows_the_chain(
    tmp_path: Path,
) -> None:
    done = run_example("loops.py", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "meter: Progress(cursor=7, total=29)",
        *(
            f"  poll-meter-7{suffix}: continued, history ['fetch_readings:1', 'sleep:1']"
            for suffix in ("", "~1", "~2", "~3")
        ),
        "  poll-meter-7~4: completed, history ['fetch_readings:1']",
        "thermostat: 21.0",
        "  thermo-1: continued, history ['wait_event:set_target:1']",
        "  thermo-1~1: continued, history ['wait_event:set_target:1']",
        "  thermo-1~2: completed, history ['wait_event:set_target:1']",
    ]
    (shown,) = readme_blocks("output of example_project/loops.py")
    assert shown.strip() and shown in done.stdout
    assert list(tmp_path.iterdir()) == []


def readme_blocks(marker: str) -> list[str]:
    """The fenced block after each ``<!-- marker -->`` line of the README."""
    readme = (ROOT / "README.md").read_text()
    parts = readme.split(f"<!-- {marker} -->\n")[1:]
    return [part.split("\n", 1)[1].split("```", 1)[0] for part in parts]


def test_watching_example_hears_the_signals_and_finds_the_order_by_its_key(
    tmp_path: Path,
) -> None:
    done = run_example("watching.py", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    retried = "step_failed: charge:1 attempt 1 will retry: payment gateway timed out"
    failed = "step_failed: ship:1 attempt 1 for good: no courier for ORD-4"
    assert lines.index(retried) < lines.index(failed) < lines.index("refund: ORD-4")
    assert any(
        line.startswith("workflow_failed: order ") and line.endswith(": no courier for ORD-4")
        for line in lines
    )
    assert "found by its key: order {'order_id': 'ORD-4', 'stage': 'shipping'}" in lines
    assert '  "status": "failed",' in lines
    assert "steps: [('charge:1', 'completed'), ('ship:1', 'failed')]" in lines
    # The worker's log says the same, at WARNING, with the traceback.
    assert "celery_romancy: workflow order " in done.stderr
    assert "TerminalError: no courier for ORD-4" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_retention_example_counts_then_purges_what_has_ended(tmp_path: Path) -> None:
    # Its own checkout's package, wherever the shared install points.
    done = run_example("retention.py", tmp_path, PYTHONPATH=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refund: ORD-2",
        "would purge 0 instances {}, 0 history rows",
        "would purge 2 instances {'completed': 1, 'failed': 1}, 4 history rows",
        "purged 2 instances {'completed': 1, 'failed': 1}, 4 history rows",
        "left: 0 instances",
    ]
    assert list(tmp_path.iterdir()) == []


def test_every_readme_snippet_marked_as_running_is_in_its_example() -> None:
    readme = (ROOT / "README.md").read_text()
    examples = sorted(
        set(re.findall(r"<!-- runs in ((?:example_project|tests)/[\w/]+\.py) -->", readme))
    )
    assert examples == [
        "example_project/children.py",
        "example_project/django_shop/urls.py",
        "example_project/fan_out.py",
        "example_project/flask_shop.py",
        "example_project/loops.py",
        "example_project/retention.py",
        "example_project/schedules.py",
        "example_project/upgrades_release_2.py",
        "example_project/watching.py",
        "tests/django_project/proj/settings.py",
        "tests/django_project/proj/urls.py",
    ]
    for example in examples:
        source = (ROOT / example).read_text()
        blocks = readme_blocks(f"runs in {example}")
        assert blocks
        for block in blocks:
            assert block.strip() and block in source, f"not in {example}:\n{block}"


def test_schedules_example_starts_one_run_for_two_sends_of_a_tick(tmp_path: Path) -> None:
    # PYTHONPATH: this checkout's package, whichever one is installed.
    done = run_example("schedules.py", tmp_path, PYTHONPATH=str(ROOT))
    assert done.returncode == 0, done.stderr
    run = "schedule:nightly-report:2026-11-29T02:00:00Z"
    assert done.stdout.splitlines() == [
        "beat entry: romancy.start_scheduled ['nightly-report'] <crontab: 0 2 * * * (m/h/dM/MY/d)>",
        f"sent -> {run}",
        f"sent -> {run}",
        f"runs: ['{run}']",
        "  build_report: eu for the night of 2026-11-29",
        "result: report-eu-2026-11-29",
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_readme_children_output_is_what_the_example_prints(
    children_run: tuple[Path, str],
) -> None:
    (shown,) = readme_blocks("output of example_project/children.py")
    assert shown.strip() and shown in children_run[1]


def test_the_embedded_broker_never_hands_out_a_half_written_message(tmp_path: Path) -> None:
    """kombu's filesystem transport shows a message's file before it is written: a
    consumer polling the folder then loses it (JSONDecodeError). Large messages, a
    reader polling all the while: every one must arrive whole."""
    import threading
    from queue import Empty

    from celery_romancy.embedded import embedded_celery

    app = embedded_celery("race", tmp_path)
    count, body = 40, "x" * 1_000_000
    received: list[int] = []
    failures: list[str] = []

    def read() -> None:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            while len(received) + len(failures) < count:
                try:
                    received.append(channel._get("q")["i"])
                except Empty:
                    continue
                except Exception as exc:  # noqa: BLE001 - a lost message is what we look for
                    failures.append(repr(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with app.connection_for_write() as conn:
        for i in range(count):
            conn.default_channel._put("q", {"i": i, "body": body})
    reader.join(60)
    assert failures == []
    assert sorted(received) == list(range(count))


def test_the_upgrades_example_finishes_old_orders_the_old_way_and_new_ones_the_new_way(
    tmp_path: Path,
) -> None:
    done = run_example("upgrades.py", tmp_path, PYTHONPATH=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "release 1 instances still running: ORD-1, ORD-2",
        "ORD-1 (version 1): charged ORD-1, without a fraud check",
        "ORD-2 (version 1): charged ORD-2, without a fraud check",
        "ORD-3 (version 2): charged ORD-3, fraud score 10",
        "release 1 instances left: 0: its code can go",
    ]
    (shown,) = readme_blocks("output of example_project/upgrades.py")
    assert shown.strip() and shown in done.stdout
