"""The README's demo and the order-saga example work with no service running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_the_readme_fan_out_example_is_the_one_that_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "example_project" / "fan_out.py").read_text()
    start = readme.index("<!-- fan-out example -->")
    block = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    assert block.strip() and block in example


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
