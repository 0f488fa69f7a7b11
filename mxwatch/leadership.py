"""Which replica acts (issue 12). With a shared state (PostgreSQL), the daemon that holds the
state's lead acts; the others stand by and make no Exchange call at all. With SQLite every
process may try each cycle, and the file's lock keeps cycles apart.

A leader checks its lead every LEAD_CHECK seconds and, the moment it is lost (its lock
connection dropped, another took over), stops: the running cycle is cancelled, and every write
it might still attempt is refused by the store's epoch fence. It then stays back for two
intervals, so that a standby (which looks every interval) takes over rather than the process
whose connection just failed. A process that takes the lead waits TAKEOVER_GRACE before it
acts, long enough for a former leader to have noticed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .logs import get_logger
from .store import StateStore

log = get_logger("mxwatch.leadership")

LEAD_CHECK = 1.0  # seconds between a leader's checks that it still leads
TAKEOVER_GRACE = 3 * LEAD_CHECK  # a new leader waits this long before its first action


class Lead:
    def __init__(
        self, store: StateStore, on_change: Callable[[bool], None], backoff: float
    ) -> None:
        self._store = store
        self._on_change = on_change  # told True/False when this process starts/stops leading
        self._backoff = backoff  # seconds a process that lost the lead stays back
        self.leading = False
        self.last_look = 0.0  # monotonic time of the last look at the lead (health)
        self._lost_at: float | None = None

    @property
    def role(self) -> str:
        if not self._store.shared:
            return "single"
        return "leader" if self.leading else "standby"

    async def may_act(self, command: str) -> bool:
        """Before a cycle: whether this process leads (taking the lead if it is free). A store
        that cannot be reached raises its StoreError, which the daemon logs as the cycle's."""
        self.last_look = time.monotonic()
        if not self._store.shared:
            return True
        if self.leading:
            if await asyncio.to_thread(self._store.check_lead):
                return True
            self.lost()
        if self._lost_at is not None and time.monotonic() - self._lost_at < self._backoff:
            log.info("standby", reason="staying back after losing the lead")
            return False
        taken = await asyncio.to_thread(self._store.lead, command)  # StoreError: the caller's
        if taken:
            return await self._took_over()
        await self._stand_by()
        return False

    async def watch(self, cancel: Callable[[], None]) -> None:
        """While leading, check the lead every LEAD_CHECK seconds; on a loss, stop at once."""
        while True:
            await asyncio.sleep(LEAD_CHECK)
            if self.leading and not await asyncio.to_thread(self._store.check_lead):
                self.lost()
                cancel()

    def lost(self) -> None:
        if self.leading:
            self.leading = False
            self._lost_at = time.monotonic()
            log.error(
                "leader_lost",
                state=str(self._store.path),
                detail="another mxwatch may take over; this one stops acting",
            )
            self._on_change(False)

    async def _took_over(self) -> bool:
        self.leading = True
        log.info("leader_acquired", state=str(self._store.path), grace_s=TAKEOVER_GRACE)
        self._on_change(True)
        await asyncio.sleep(TAKEOVER_GRACE)
        return self.leading  # a loss during the grace: still no action

    async def _stand_by(self) -> None:
        holder = await asyncio.to_thread(self._store.leader)
        log.info(
            "standby",
            state=str(self._store.path),
            leader=holder[0] if holder else None,
            since=holder[1] if holder else None,
        )
        self._on_change(False)
