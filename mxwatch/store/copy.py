"""`mxwatch state copy`: the whole state and journal from one store to another, SQLite or
PostgreSQL either way, into a target that holds nothing yet."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ..settings import PostgresUri
from . import StoreError, open_store, open_store_readonly


def copy_state(source: Path | PostgresUri, target: Path | PostgresUri) -> tuple[int, int]:
    """Copy every tenant (domains and pending intents included), the journal in its order,
    and the last cycle's record, in one transaction, then the remembered DNS lookups;
    (tenants, journal entries) copied."""
    with open_store_readonly(source) as reader, open_store(target) as writer:
        if writer.load_all() or writer.history(limit=1) or writer.last_cycle():
            raise StoreError(
                f"{writer.path} holds state already; refusing to overwrite it (copy into a new "
                "file or an empty database)",
                kind="not_empty",
            )
        tenants, journal, last = reader.load_all(), reader.history(), reader.last_cycle()
        with writer.exclusive(0, "mxwatch state copy"):
            writer.save_cycle(tenants, journal)
            if last is not None:
                if last.last_ok_at is not None and not last.ok:
                    writer.record_cycle(last.last_ok_at, ok=True)
                writer.record_cycle(last.finished_at, ok=last.ok, duration=last.duration)
        now = datetime.now(UTC)
        writer.remember_lookups(reader.recall_lookups(now), now)
    return len(tenants), len(journal)
