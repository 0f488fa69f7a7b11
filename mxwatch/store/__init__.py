"""The state: every tenant's and domain's current record, the pending write intents, and the
append-only journal, in SQLite (the default, one file) or PostgreSQL (shared by replicas)."""

from .rows import CycleRun, StoreBusy, StoredTenant, StoreError
from .sqlite import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "CycleRun", "Store", "StoreBusy", "StoreError", "StoredTenant"]
