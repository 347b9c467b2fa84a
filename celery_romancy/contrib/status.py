"""A JSON-ready summary of one instance, for status views and ``--json`` output."""

from __future__ import annotations

from typing import Any

from ..storage import WorkflowInstance


def instance_status(instance: WorkflowInstance) -> dict[str, Any]:
    """What a status endpoint may show: no input, lease or traceback (they can hold
    personal data or internals), the error only as type, message and step."""
    error = instance.error
    return {
        "instance_id": instance.instance_id,
        "workflow": instance.workflow_name,
        "status": instance.status,
        "finished": instance.is_terminal,
        "output": instance.output_data,
        "error": None
        if error is None
        else {key: error.get(key) for key in ("type", "message", "step")},
        "created_at": instance.created_at.isoformat(),
        "updated_at": instance.updated_at.isoformat(),
        # A child workflow's place in its tree (None for a workflow started on its own).
        "parent_instance_id": instance.parent_instance_id,
        "root_instance_id": instance.root_instance_id,
    }
