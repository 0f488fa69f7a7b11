"""The state: every tenant's and domain's current record, the pending write intents, and the
append-only journal, in SQLite (the default, one file) or PostgreSQL (shared by replicas,
`mxwatch[postgres]`). Both backends keep the same tables, columns and guarantees."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from ..model import Intent, RememberedLookup, Transition
from ..settings import PostgresUri
from .rows import CycleRun, LeaderLost, StoreBusy, StoredTenant, StoreError
from .sqlite import SCHEMA_VERSION, Store

if TYPE_CHECKING:  # imported when used: see _postgres
    from .postgres import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "CycleRun",
    "LeaderLost",
    "StateStore",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoredTenant",
    "open_store",
    "open_store_readonly",
]


class StateStore(Protocol):
    """What the cycle, the daemon and the commands use of a state store, whichever backend."""

    @property
    def path(self) -> object: ...  # the file or the database, as it may be shown

    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def load(self, tenant: str) -> StoredTenant | None: ...
    def load_intent(self, tenant: str) -> Intent | None: ...
    def load_all(self) -> list[StoredTenant]: ...
    def history(self, tenant: str | None = None, limit: int | None = None) -> list[Transition]: ...
    def last_cycle(self) -> CycleRun | None: ...
    def recall_lookups(self, now: datetime) -> list[RememberedLookup]: ...
    def acquire(self, wait: float, command: str) -> None: ...
    def release(self) -> None: ...
    def exclusive(self, wait: float, command: str) -> AbstractContextManager[None]: ...
    def holds_exclusively(self) -> bool: ...

    # Leadership, for replicas sharing one state: `shared` stores elect one process to act for
    # as long as it lives (`lead`), and tell whether it still does (`check_lead`) and who does.
    shared: bool

    def lead(self, command: str) -> bool: ...
    def check_lead(self) -> bool: ...
    def leader(self) -> tuple[str, str] | None: ...
    def record_intent(self, tenant: str, intent: Intent) -> None: ...
    def record_cycle(
        self, finished_at: datetime, *, ok: bool, duration: float | None = None
    ) -> None: ...
    def save_cycle(
        self, tenants: Sequence[StoredTenant], transitions: Sequence[Transition]
    ) -> None: ...
    def append_journal(self, transitions: Sequence[Transition]) -> None: ...
    def remember_lookups(self, lookups: Sequence[RememberedLookup], now: datetime) -> None: ...


def open_store(location: Path | PostgresUri) -> StateStore:
    """The state for reading and writing: an SQLite file (created if needed) or a database."""
    if isinstance(location, PostgresUri):
        return _postgres().open(location.uri)
    return Store.open(location)


def open_store_readonly(location: Path | PostgresUri) -> StateStore:
    """The state for reading only (status, history, health)."""
    if isinstance(location, PostgresUri):
        return _postgres().open_readonly(location.uri)
    return Store.open_readonly(location)


def _postgres() -> type[PostgresStore]:
    # Imported when used: SQLite, the default, needs nothing more installed.
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"daemon.state names a PostgreSQL database, but psycopg is not installed ({exc}): "
            "pip install 'mxwatch[postgres]'"
        ) from None
    return PostgresStore
