"""Quickstart: the user-onboarding workflow on the embedded default.

    python example_project/quickstart.py

No service to start: SQLite history, a filesystem broker and a Celery worker inside
this process, all in a temporary folder.
"""

from __future__ import annotations

import tempfile

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-quickstart-")
app = embedded_celery("quickstart", folder)
romancy = Romancy(app)


@romancy.activity("create_user_profile")
def create_user_profile(user_id: str, email: str) -> dict[str, str]:
    print(f"  step 1: creating profile for {user_id} <{email}>", flush=True)
    return {"user_id": user_id, "email": email}


@romancy.activity("send_welcome_email")
def send_welcome_email(email: str) -> bool:
    print(f"  step 2: sending welcome email to {email}", flush=True)
    return True


@romancy.workflow("user_onboarding")
def user_onboarding(ctx: WorkflowContext, user_id: str, email: str) -> dict[str, object]:
    profile = create_user_profile.execute(ctx, user_id, email)
    sent = send_welcome_email.execute(ctx, profile["email"])
    return {"user_id": profile["user_id"], "email_sent": sent}


def main() -> None:
    with in_process_worker(app):
        instance_id = romancy.start_workflow(user_onboarding, "user_123", "newuser@example.com")
        print(f"started user_onboarding, instance id: {instance_id}", flush=True)
        instance = romancy.wait(instance_id, timeout=60)
    print("recorded history:")
    for event in romancy.get_history(instance_id):
        print(f"  {event.step_id} -> {event.result!r}")
    print(f"status: {instance.status}")
    for key, value in (instance.output_data or {}).items():
        print(f"{key}: {value}")
    print(f"(history and broker files in {folder})")


if __name__ == "__main__":
    main()
