"""Is the watcher alive? The last cycle must have finished within 3 x the interval."""

from __future__ import annotations

from datetime import datetime, timedelta

from .store import CycleRun

STALE_AFTER = 3  # intervals without a finished cycle before mxwatch counts as unhealthy


def check(last: CycleRun | None, interval: timedelta, now: datetime) -> tuple[bool, str]:
    """(healthy, reason); the reason is one line for a person or a container runtime."""
    limit = interval * STALE_AFTER
    if last is None:
        return False, "no cycle has finished yet"
    age = now - last.finished_at
    seconds = max(age.total_seconds(), 0.0)
    if age > limit:
        return False, (
            f"the last cycle finished {seconds:.0f}s ago, more than 3 x interval "
            f"({limit.total_seconds():g}s): is the daemon running?"
        )
    note = "" if last.ok else " (with errors; see the logs)"
    return True, f"the last cycle finished {seconds:.0f}s ago{note}"


def check_standby(last_look: float, interval: timedelta, now: float) -> tuple[bool, str]:
    """A standby replica is healthy while it keeps looking at the lead, ready to take over."""
    age = now - last_look
    limit = (interval * STALE_AFTER).total_seconds()
    if age > limit:
        return False, f"standby: last looked at the lead {age:.0f}s ago, more than {limit:g}s"
    return True, f"standby: another mxwatch leads; last looked {age:.0f}s ago"
