"""Lease renewal for steps that run long: one daemon thread per worker process.

A step holds its instance's lease while its activity runs. Without renewal, an activity
longer than ``romancy_lease_timeout`` would be taken over by recovery while still
running. A paused or dead process renews nothing, so its lease still runs out.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import Claim, Store

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._claims: dict[int, Claim] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, claim: Claim) -> int:
        """Keep ``claim`` renewed until ``release`` is called with the returned handle."""
        with self._lock:
            self._ensure_thread()
            handle = id(claim)
            self._claims[handle] = claim
        return handle

    def release(self, handle: int) -> None:
        with self._lock:
            self._claims.pop(handle, None)

    def _ensure_thread(self) -> None:
        # A thread does not survive fork: a prefork child starts its own.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._claims = {}
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="romancy-lease-keeper", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        while not self._wake.wait(interval):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:
                try:
                    if not self.store.renew_lease(claim, self.lease_seconds):
                        logger.warning(
                            "celery_romancy: lost the lease on %s while its step ran",
                            claim.instance.instance_id,
                        )
                except Exception:
                    logger.exception("celery_romancy: could not renew a lease")
