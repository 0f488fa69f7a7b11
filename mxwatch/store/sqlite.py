"""SQLite state: the current record of every tenant and domain, plus an append-only journal.

One file, written by one cycle at a time. Every cycle's writes are a single transaction, so a
crash leaves either the previous cycle's state or the new one, never a mix. The store never
deletes, resets or recreates a file it cannot understand: it refuses with a StoreError that
says what to do, because the journal is the operator's only record of what mxwatch did.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType

from ..lockfile import LockBusy, LockFile
from ..model import Intent, RememberedLookup, Transition
from .rows import (
    CREATE_DNS_LOOKUP,
    DELETE_EXPIRED_LOOKUPS,
    INSERT_DOMAIN,
    INSERT_JOURNAL,
    RECORD_CYCLE,
    SELECT_LOOKUPS,
    UPSERT_INTENT,
    UPSERT_LOOKUP,
    UPSERT_TENANT,
    CycleRun,
    StoreBusy,
    StoredTenant,
    StoreError,
    cycle_run_from_row,
    domain_row,
    intent_from_row,
    intent_row,
    journal_row,
    lookup_from_row,
    lookup_row,
    reject_duplicates,
    stored_tenant,
    tenant_row,
    time_to_db,
    transition_from_row,
)

# Written into the SQLite header so a foreign database is recognised instead of being
# migrated into ("MXwt").
APPLICATION_ID = 0x4D587774
DEFAULT_BUSY_TIMEOUT = 5.0

# _MIGRATIONS[i] upgrades the schema from version i to i + 1. Released entries are never
# edited; a schema change appends a new entry. Statements run one by one inside one
# transaction (executescript would commit behind our back).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE tenant (
            name TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            connector TEXT NOT NULL,
            state TEXT NOT NULL,
            since TEXT,
            reason TEXT NOT NULL,
            confirmations INTEGER NOT NULL CHECK (confirmations >= 0),
            eligible_at TEXT,
            eligible_reason TEXT NOT NULL,
            regressions INTEGER NOT NULL CHECK (regressions >= 0),
            connector_guid TEXT,
            connector_enabled INTEGER CHECK (connector_enabled IN (0, 1)),
            connector_checked_at TEXT
        )""",
        """CREATE TABLE domain (
            tenant TEXT NOT NULL REFERENCES tenant (name) ON DELETE CASCADE,
            domain TEXT NOT NULL,
            position INTEGER NOT NULL,
            verdict TEXT,
            mx TEXT NOT NULL,
            ttl INTEGER CHECK (ttl >= 0),
            checked_at TEXT,
            filtered_since TEXT,
            old_ttl INTEGER CHECK (old_ttl >= 0),
            PRIMARY KEY (tenant, domain)
        )""",
        """CREATE TABLE journal (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            tenant TEXT NOT NULL,
            domain TEXT,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL,
            evidence TEXT NOT NULL
        )""",
        "CREATE INDEX journal_by_tenant ON journal (tenant, id)",
        # The journal is the audit trail of what mxwatch did to mail flow; the database itself
        # refuses to rewrite it, whatever code (or person with sqlite3) tries.
        """CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
            BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END""",
        """CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
            BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END""",
    ),
    (
        # One row: when the last cycle finished, for `mxwatch health` and the metrics. It is
        # kept in the state file so a health check in another process (HEALTHCHECK, a timer
        # running --once) sees it.
        """CREATE TABLE cycle_run (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            finished_at TEXT NOT NULL,
            ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
            last_ok_at TEXT
        )""",
    ),
    (
        # Per-domain streaks (DESIGN.md §3): each covered domain counts its own filtered
        # observations, remembers the last one (a gap restarts the streak) and its not-filtered
        # ones (a regression), and keeps first-hand and resolver-seen old TTLs apart.
        "ALTER TABLE domain ADD COLUMN filtered_count INTEGER NOT NULL DEFAULT 0"
        " CHECK (filtered_count >= 0)",
        "ALTER TABLE domain ADD COLUMN filtered_at TEXT",
        "ALTER TABLE domain ADD COLUMN misses INTEGER NOT NULL DEFAULT 0 CHECK (misses >= 0)",
        "ALTER TABLE domain ADD COLUMN old_ttl_cached INTEGER CHECK (old_ttl_cached >= 0)",
        "ALTER TABLE domain ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0"
        " CHECK (accepted IN (0, 1))",
        # Earlier versions counted confirmations per tenant and could not tell a resolver's TTL
        # from the record's: every streak starts again, every old TTL counts as second-hand,
        # and every domain known so far stays covered until the next accepted-domain read.
        "UPDATE domain SET filtered_since = NULL, old_ttl_cached = old_ttl, old_ttl = NULL,"
        " accepted = 1",
        "ALTER TABLE tenant DROP COLUMN regressions",
        # How long the last cycle took: a cycle longer than the interval delays the next one,
        # and the allowed gap between two observations of a streak must cover that.
        "ALTER TABLE cycle_run ADD COLUMN duration_s REAL CHECK (duration_s >= 0)",
        "ALTER TABLE tenant ADD COLUMN waiting_for TEXT NOT NULL DEFAULT ''",
        # The write-ahead intent: committed before a connector write, removed when the cycle
        # that made the write (or a later one that read it back) records its outcome.
        """CREATE TABLE intent (
            tenant TEXT PRIMARY KEY,
            action TEXT NOT NULL CHECK (action IN ('enable', 'disable')),
            guid TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
    ),
    (CREATE_DNS_LOOKUP,),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class Store:
    """Current state plus journal in one SQLite file. Safe to share between threads."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, busy_timeout: float, *, readonly: bool
    ) -> None:
        # Use Store.open / Store.open_readonly; they validate the file first.
        self._conn = conn
        self._path = path
        self._busy_timeout = busy_timeout
        self._readonly = readonly
        # The daemon's scheduler runs cycles on worker threads; one connection, used serially.
        self._lock = threading.Lock()
        self._closed = False
        self._lease: LockFile | None = None

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Store:
        """Open (creating if needed) the state file for reading and writing.

        busy_timeout is how many seconds to wait for another process's write lock.
        """
        path = Path(path)
        _prepare_writable(path)
        conn = _connect(str(path), path, busy_timeout, uri=False)
        store = cls(conn, path, busy_timeout, readonly=False)
        with store._closing_on_error():
            version = store._check_identity()
            store._configure_writer()
            if version < SCHEMA_VERSION:
                store._migrate()
            store._quick_check()
        return store

    @classmethod
    def open_readonly(cls, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Store:
        """Open an existing state file without any right to change it (status, history)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no state yet at {path}: run mxwatch --once first", kind="empty")
        if not path.is_file():
            raise StoreError(f"{path} is not a regular file: point daemon.state at a file")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        conn = _connect(uri, path, busy_timeout, uri=True)
        store = cls(conn, path, busy_timeout, readonly=True)
        with store._closing_on_error():
            version = store._check_identity()
            if version == 0:
                raise StoreError(f"no state yet at {path}: run mxwatch --once first", kind="empty")
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{path} uses state schema {version}, this mxwatch reads {SCHEMA_VERSION}: "
                    "run mxwatch --once (or start the daemon) once to upgrade it"
                )
            store._quick_check()
        return store

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def load(self, tenant: str) -> StoredTenant | None:
        """The stored tenant with this name, or None if it has never been saved."""
        with self._using("reading tenant " + tenant):
            row = self._conn.execute("SELECT * FROM tenant WHERE name = ?", (tenant,)).fetchone()
            return None if row is None else self._stored_tenant(row)

    def load_intent(self, tenant: str) -> Intent | None:
        """A pending write of a tenant never saved yet (its first cycle was interrupted)."""
        with self._using("reading an intent of " + tenant):
            row = self._conn.execute("SELECT * FROM intent WHERE tenant = ?", (tenant,)).fetchone()
        if row is None:
            return None
        with self._decoding(f"the intent of tenant {tenant}"):
            return intent_from_row(row)

    def load_all(self) -> list[StoredTenant]:
        """Every stored tenant, ordered by name (including tenants no longer configured)."""
        with self._using("reading tenants"):
            rows = self._conn.execute("SELECT * FROM tenant ORDER BY name").fetchall()
            return [self._stored_tenant(row) for row in rows]

    def history(self, tenant: str | None = None, limit: int | None = None) -> list[Transition]:
        """Journal entries oldest first; with limit, the most recent `limit` of them."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        # Newest first so LIMIT keeps the most recent entries; SQLite reads LIMIT -1 as "all".
        # "? IS NULL OR" lets one fixed statement serve both the filtered and the full journal.
        query = "SELECT * FROM journal WHERE ? IS NULL OR tenant = ? ORDER BY id DESC LIMIT ?"
        params = (tenant, tenant, -1 if limit is None else limit)
        with self._using("reading the journal"):
            rows = self._conn.execute(query, params).fetchall()
            return [self._transition(row) for row in reversed(rows)]

    def last_cycle(self) -> CycleRun | None:
        """The last finished cycle, or None when no cycle has finished yet."""
        with self._using("reading the last cycle"):
            row = self._conn.execute("SELECT * FROM cycle_run WHERE id = 1").fetchone()
        if row is None:
            return None
        with self._decoding("the last cycle"):
            return cycle_run_from_row(row)

    def recall_lookups(self, now: datetime) -> list[RememberedLookup]:
        """The DNS lookups kept by earlier runs that are still good at `now`."""
        at = time_to_db(now, "now")
        with self._using("reading remembered DNS lookups"):
            rows = self._conn.execute(SELECT_LOOKUPS, (at,)).fetchall()
        with self._decoding("a remembered DNS lookup"):
            return [lookup_from_row(row) for row in rows]

    # -- the one writer ----------------------------------------------------------------------

    def acquire(self, wait: float, command: str) -> None:
        """Hold the state for one cycle: from its first read to its commit (DESIGN.md §3).

        Waits up to `wait` seconds for another process's cycle (blocking: call it from a
        thread in async code); StoreBusy names that process. While held, every write checks
        that it still is (the lock file may have been removed by hand), and refuses otherwise.
        """
        if self._readonly:
            raise StoreError(f"cannot lock {self._path}: this store was opened read-only")
        # Beside the file itself, whatever path named it: two configs reaching one state file
        # through a symlink or a relative path must meet at one lock.
        real = self._path.resolve()
        lease = LockFile(real.with_name(real.name + ".lock"))
        try:
            lease.acquire(wait, command)
        except LockBusy as busy:
            raise StoreBusy(
                f"the state {self._path} is in use by {busy.holder.describe()}: waited "
                f"{busy.waited:g}s for it; only one mxwatch may run a cycle on a state file "
                "(a daemon or a --once timer, not both)"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot lock {lease.path}: {exc.strerror or exc}") from None
        self._lease = lease

    def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    @contextmanager
    def exclusive(self, wait: float, command: str) -> Iterator[None]:
        self.acquire(wait, command)
        try:
            yield
        finally:
            self.release()

    # One file on one host: whoever runs a cycle locks the file for it; there is no lead to
    # hold between cycles, so every process may try each cycle.
    shared = False

    def lead(self, command: str) -> bool:
        return True

    def check_lead(self) -> bool:
        return True

    def leader(self) -> tuple[str, str] | None:
        return None

    def holds_exclusively(self) -> bool:
        """This process holds the state lock right now."""
        return self._lease is not None and self._lease.held()

    def record_intent(self, tenant: str, intent: Intent) -> None:
        """Commit a connector write before it is made, so that a crash cannot hide it."""
        self._check_writable()
        row = (tenant, intent.action.value, intent.guid, time_to_db(intent.at, "intent.at"))
        with self._using("recording a write intent"), self._transaction():
            self._conn.execute(UPSERT_INTENT, row)

    def _check_writable(self) -> None:
        if self._readonly:
            raise StoreError(f"cannot write {self._path}: this store was opened read-only")
        if self._lease is not None and not self._lease.held():
            raise StoreError(
                f"lost the lock on {self._path} ({self._lease.path} was removed or replaced); "
                "nothing was saved: is another mxwatch using this state?"
            )

    # -- writing -----------------------------------------------------------------------------

    def record_cycle(
        self, finished_at: datetime, *, ok: bool, duration: float | None = None
    ) -> None:
        """Remember that a cycle finished (ok: without errors) and how long it took (seconds);
        last_ok_at keeps the last ok."""
        if self._readonly:
            raise StoreError(f"cannot write {self._path}: this store was opened read-only")
        at = time_to_db(finished_at, "the cycle's finished_at")
        with self._using("recording a cycle"), self._transaction():
            self._conn.execute(RECORD_CYCLE, (at, int(ok), at if ok else None, duration))

    def save_cycle(
        self, tenants: Sequence[StoredTenant], transitions: Sequence[Transition]
    ) -> None:
        """Record one cycle in one transaction: all of it or none of it.

        Each tenant row is upserted and its domain rows replaced by exactly the given ones;
        every transition is appended to the journal. Values are converted before the write
        lock is taken, so a naive datetime (ValueError) or evidence that JSON cannot represent
        (TypeError) fails without touching the file.
        """
        self._check_writable()
        reject_duplicates(tenants)
        tenant_rows = [tenant_row(t) for t in tenants]
        domain_rows = [
            domain_row(t.record.name, i, d) for t in tenants for i, d in enumerate(t.domains)
        ]
        journal_rows = [journal_row(tr) for tr in transitions]
        intent_rows = [intent_row(t) for t in tenants if t.intent is not None]
        names = [(t.record.name,) for t in tenants]
        with self._using("saving a cycle"), self._transaction():
            self._conn.executemany(UPSERT_TENANT, tenant_rows)
            self._conn.executemany("DELETE FROM domain WHERE tenant = ?", names)
            self._conn.executemany(INSERT_DOMAIN, domain_rows)
            self._conn.executemany("DELETE FROM intent WHERE tenant = ?", names)
            self._conn.executemany(UPSERT_INTENT, intent_rows)
            self._conn.executemany(INSERT_JOURNAL, journal_rows)

    def remember_lookups(self, lookups: Sequence[RememberedLookup], now: datetime) -> None:
        """Keep DNS lookups for the next run, and drop those that expired by `now`."""
        if self._readonly:
            raise StoreError(f"cannot write {self._path}: this store was opened read-only")
        rows = [lookup_row(lookup) for lookup in lookups]
        at = time_to_db(now, "now")
        with self._using("remembering DNS lookups"), self._transaction():
            self._conn.execute(DELETE_EXPIRED_LOOKUPS, (at,))
            self._conn.executemany(UPSERT_LOOKUP, rows)

    def append_journal(self, transitions: Sequence[Transition]) -> None:
        """Append entries outside a cycle (`mxwatch provision`'s writes), in one transaction;
        tenant and domain rows are left as they are."""
        self._check_writable()
        rows = [journal_row(t) for t in transitions]
        with self._using("appending to the journal"), self._transaction():
            self._conn.executemany(INSERT_JOURNAL, rows)

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _using(self, action: str) -> Iterator[None]:
        """Serialise use of the connection and turn SQLite failures into StoreErrors."""
        with self._lock:
            if self._closed:
                raise StoreError(f"the state store {self._path} is already closed")
            try:
                yield
            except sqlite3.Error as exc:
                if self._readonly and _is_permission_error(exc):
                    raise _readonly_error(self._path, exc) from exc
                raise _classify(self._path, action, exc, self._busy_timeout) from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
        # from reader to writer can fail with SQLITE_BUSY without the busy handler waiting.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _closing_on_error(self) -> Iterator[None]:
        try:
            with self._using("opening"):
                yield
        except BaseException:
            self.close()
            raise

    def _check_identity(self) -> int:
        """The schema version, after making sure the file is ours and not from the future."""
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if app_id == 0 and version == 0:
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if objects == 0:
                return 0  # a new, empty file: ours to initialise
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{self._path} is an SQLite database but not an mxwatch state file: "
                "point daemon.state at another path; this file was left untouched"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path} was written by a newer mxwatch (state schema {version}; this "
                f"version understands up to {SCHEMA_VERSION}): upgrade mxwatch, or restore a "
                "backup made before the upgrade; the file was left untouched"
            )
        return version

    def _configure_writer(self) -> None:
        # WAL lets `status` read while a cycle writes; FULL makes a committed cycle survive
        # power loss, which matters because the journal records actions on real mail flow.
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"could not put {self._path} in WAL mode (SQLite kept {mode!r}): keep the "
                "state file on a local filesystem"
            )
        self._conn.execute("PRAGMA synchronous = FULL")
        # Off by default in SQLite; on, a domain row can never outlive or precede its tenant.
        self._conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self._transaction():
            # Read again under the write lock: another process may have just migrated it.
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _quick_check(self) -> None:
        result = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            raise StoreError(
                f"{self._path} is corrupted ({'; '.join(map(str, result[:3]))}): restore it from "
                "a backup or move it aside to start with empty state (the journal would be "
                "lost); the file was left untouched"
            )

    def _stored_tenant(self, row: sqlite3.Row) -> StoredTenant:
        name = row["name"]
        domain_rows = self._conn.execute(
            "SELECT * FROM domain WHERE tenant = ? ORDER BY position", (name,)
        ).fetchall()
        intent = self._conn.execute("SELECT * FROM intent WHERE tenant = ?", (name,)).fetchone()
        with self._decoding(f"tenant {name}"):
            return stored_tenant(row, domain_rows, intent)

    def _transition(self, row: sqlite3.Row) -> Transition:
        with self._decoding(f"journal entry {row['id']}"):
            return transition_from_row(row)

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        try:
            yield
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"{what} in {self._path} holds a value this mxwatch cannot read ({exc}): was "
                "the file written by a newer mxwatch or edited by hand?"
            ) from exc


# -- opening -----------------------------------------------------------------------------------


def _prepare_writable(path: Path) -> None:
    """Create the directory (0700) and an empty file (0600), or explain why they cannot be."""
    try:
        _make_private_dirs(path.parent)
        if path.exists() and not path.is_file():
            raise StoreError(f"{path} is not a regular file: point daemon.state at a file")
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StoreError(
            f"cannot create the state file {path}: {exc.strerror or exc}; create its directory "
            "and make it writable by this user, or set daemon.state"
        ) from exc
    # WAL needs to create PATH-wal and PATH-shm beside the file, so the directory must be
    # writable too. (As root these always pass; SQLite's own errors then cover the rest.)
    for target in (path.parent, path):
        if not os.access(target, os.W_OK):
            raise StoreError(
                f"{target} is not writable by this user, so the state file {path} cannot be "
                "updated: fix its ownership or permissions, or set daemon.state"
            )


def _make_private_dirs(directory: Path) -> None:
    # Path.mkdir(parents=True) applies the mode only to the last directory; state can name
    # tenants and domains, so every directory we create is private.
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def _connect(target: str, path: Path, busy_timeout: float, *, uri: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            target,
            timeout=busy_timeout,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # Store serialises access with its own lock
            uri=uri,
        )
    except sqlite3.Error as exc:
        if uri and _is_permission_error(exc):
            raise _readonly_error(path, exc) from exc
        raise _classify(path, "opening", exc, busy_timeout) from exc
    conn.row_factory = sqlite3.Row
    return conn


_PERMISSION_ERRORS = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")


def _is_permission_error(exc: sqlite3.Error) -> bool:
    return str(getattr(exc, "sqlite_errorname", "")).startswith(_PERMISSION_ERRORS)


def _readonly_error(path: Path, exc: sqlite3.Error) -> StoreError:
    # A reader of a WAL database still needs PATH-shm; after the last writer closes cleanly
    # that file is gone, and a user who may read but not write the directory cannot make it.
    return StoreError(
        f"cannot read {path} ({exc}): SQLite needs to create {path}-shm beside the database, "
        f"so run this as the user that owns {path.parent} (or root)"
    )


def _classify(path: Path, action: str, exc: sqlite3.Error, busy_timeout: float) -> StoreError:
    """A StoreError saying what happened to which file and who must do what about it."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(
            f"{path} is locked by another process (waited {busy_timeout:g}s while {action}): "
            "is another mxwatch (daemon or --once) using the same state file? Nothing was saved"
        )
    if name.startswith(_PERMISSION_ERRORS):
        return StoreError(
            f"cannot write {path} while {action} ({exc}): make the file and its directory "
            "writable by this user, or set daemon.state"
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return StoreError(
            f"{path} is not an mxwatch state database or is corrupted ({exc}): restore it from "
            "a backup or move it aside to start with empty state (the journal would be lost); "
            "the file was left untouched"
        )
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return StoreError(f"disk error on {path} while {action} ({exc}): check free space")
    if name.startswith("SQLITE_CONSTRAINT"):
        return StoreError(f"{path} refused a value while {action} ({exc}); nothing was saved")
    return StoreError(f"SQLite failed on {path} while {action}: {exc}")
