"""Upgrading workflow code while instances run: patch markers and code versions.

``ctx.patched(id)`` decides, once per instance and patch, whether this run takes the
new path. The rule, pure like the rest of replay:

- history holds the patch's marker at the position reached: True (the marker is
  consumed, like any step);
- history records anything at or after that position, or a step the body has not
  reached yet is in flight (an activity, a child, a timer or an event wait sent from
  further on): old code got here first without the marker, so False, and nothing is
  recorded or consumed;
- otherwise this run is the first to get here: a marker is recorded at this position
  (committed with the next transition, like a compensation registration) and True.

A workflow that asks about the same patch again in one run gets the same answer.

The marker takes a position, as a step does: replays of a history that has it line up
(the steps after it sit one further on), and code that does not ask about the patch
meets the marker where it expects a step, a divergence that parks the instance. Steps
in flight are known by step id only (``<key>:<n>``), so "not reached yet" means: the
body has not made its n-th call of that key.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentsError, NonDeterminismError
from .states import HistoryKind
from .storage.records import HistoryEvent
from .validation import MAX_NAME_LENGTH, check_identifier

MARKER_PREFIX = "patch:"
# instances.workflow_version is a String(64).
MAX_VERSION_LENGTH = 64


# A step's id ends in ":<n>"; a marker's must not look like one ("patch:2" would be the
# second call of an activity named "patch").
_LIKE_A_STEP = re.compile(r"(?:^|:)[0-9]+$")


def checked_patch_id(patch_id: object) -> str:
    """A patch id as a history row names it: 1 to 200 characters, no control ones, not
    a number and not ending in ``:<number>``."""
    checked = check_identifier(patch_id, "a patch id", MAX_NAME_LENGTH)
    if _LIKE_A_STEP.search(checked):
        raise InvalidArgumentsError(
            f"a patch id must not be a number or end in ':<number>', not {checked!r}: "
            "name the change, e.g. 'fraud-check'"
        )
    return checked


def marker_step_id(patch_id: str) -> str:
    return f"{MARKER_PREFIX}{patch_id}"


def marker(seq: int, patch_id: str) -> HistoryEvent:
    """The record of ``ctx.patched(patch_id)`` taking the new path at ``seq``."""
    return HistoryEvent(seq, marker_step_id(patch_id), HistoryKind.MARKER, patch_id)


def is_marker_of(event: HistoryEvent | None, patch_id: str) -> bool:
    return event is not None and event.kind == HistoryKind.MARKER and event.name == patch_id


def unreached(step_id: str, name_counts: dict[str, int]) -> bool:
    """A step id (``<key>:<n>``) this replay has not taken yet, given how many calls of
    each key it made."""
    key, _, number = step_id.rpartition(":")
    return not number.isdigit() or name_counts.get(key, 0) < int(number)


def checked_version(version: object) -> str | None:
    """A workflow's code version: None, or 1 to 64 characters (``"3"``, ``"2024-06"``)."""
    if version is None:
        return None
    return check_identifier(version, "a workflow version", MAX_VERSION_LENGTH)


def explained(
    error: NonDeterminismError,
    history: list[HistoryEvent],
    started_under: str | None,
    running: str | None,
) -> NonDeterminismError:
    """A divergence told in deploy terms: the code version that started the instance,
    the one this worker runs, and the patch marker it does not know, if that is what
    it met."""
    met = next((e for e in history if e.seq == error.position), None)
    notes = [
        f"it was started under version {_shown(started_under)}; "
        f"this worker runs version {_shown(running)}"
    ]
    if met is not None and met.kind == HistoryKind.MARKER:
        notes.append(
            f"its history took patch {met.name!r} (ctx.patched), which this code does not "
            "know: let workers with the code that has that patch run it"
        )
    else:
        notes.append(
            "keep old instances on their old path with ctx.patched, or let them drain on "
            "workers with the old code"
        )
    return NonDeterminismError(
        error.instance_id, error.position, error.recorded, error.called, note="; ".join(notes)
    )


def _shown(version: str | None) -> str:
    return "(none)" if version is None else repr(version)
