"""The README's demo command works with no service running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_prints_its_steps_and_result(tmp_path: Path) -> None:
    # No broker or database URL from the environment can leak in: the demo is embedded.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "ROMANCY"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
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
