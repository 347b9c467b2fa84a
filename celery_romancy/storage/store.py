"""The storage interface: every query the engine runs, written once in SQLAlchemy Core.

``Store`` is the one interface, composed of one query group per concern:

- ``instances.py``: create, read and find instances; their history, compensations,
  attempts; ``snapshot`` (instance + history + steps in flight, read together);
- ``steps.py``: the step protocol: ``claim``, ``commit`` (fenced by the instance's
  version and the step's lease), ``renew_lease``, ``release``;
- ``events.py``: events kept for waits; ``outbox.py``: the transactional outbox;
- ``sweeps.py``: what the beat jobs look for (lost steps, due timers, missed events);
- ``chains.py``: the runs of one chain (``ctx.continue_as_new``), followed forward.
- ``operators.py``: what operators did to an instance, and who.
- ``purge.py``: retention, finished workflow trees deleted a batch at a time.

Dialect differences (engine options, "insert or ignore", row locks, PostgreSQL's
one-statement hot path) live in the thin subclasses in ``sqlite.py`` and
``postgres.py``; ``open_store`` picks one from the URL. One contract suite
(``tests/test_storage.py``) runs against both.
"""

from __future__ import annotations

from .chains import ChainQueries
from .events import EventQueries
from .operators import OperatorQueries
from .outbox import OutboxQueries
from .purge import PurgeQueries
from .steps import StepProtocol
from .sweeps import SweepQueries


class Store(
    StepProtocol,
    EventQueries,
    OutboxQueries,
    SweepQueries,
    ChainQueries,
    OperatorQueries,
    PurgeQueries,
):
    """History storage. Subclasses set the dialect details; the SQL is in the mixins."""
