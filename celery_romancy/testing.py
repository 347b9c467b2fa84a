"""Helpers for users' own tests: run steps on a real worker, never in eager mode."""

from __future__ import annotations

from .embedded import embedded_celery, in_process_worker

worker = in_process_worker

__all__ = ["embedded_celery", "in_process_worker", "worker"]
