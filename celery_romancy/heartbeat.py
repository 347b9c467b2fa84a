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

    def hold(self, claim: Claim) -> None:
        """Keep ``claim`` renewed until ``release(claim)``."""
        with self._lock:
            self._ensure_thread()
            self._claims[id(claim)] = claim

    def release(self, claim: Claim) -> None:
        """Stop renewing; call it before the commit that gives the lease back."""
        with self._lock:
            self._claims.pop(id(claim), None)

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
                claims = list(self._claims.items())
            for handle, claim in claims:
                try:
                    renewed = self.store.renew_lease(claim, self.lease_seconds)
                    with self._lock:
                        # A step that just committed released its lease itself: not lost.
                        still_running = handle in self._claims
                    if not renewed and still_running:
                        logger.warning(
                            "celery_romancy: lost the lease on %s while its step ran",
                            claim.instance.instance_id,
                        )
                except Exception:
                    logger.exception("celery_romancy: could not renew a lease")
