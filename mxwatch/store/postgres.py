"""PostgreSQL state, shared by replicas (issue 12): the tables, columns and guarantees of the
SQLite store, and the arbiter of which replica acts.

- The same schema versions and migrations (the logical version is SQLite's `SCHEMA_VERSION`),
  one transaction per cycle, a journal the database keeps append-only (triggers refuse UPDATE,
  DELETE and TRUNCATE), the write-ahead intent before an Exchange write.
- Leadership: a session-level advisory lock, held on a dedicated connection for as long as this
  process leads. Taking it increments `leadership.epoch`; every write transaction locks that row
  and checks the epoch is still ours, so a process that lost the lock (its connection dropped,
  another took over) can never commit after the takeover.
- The password is never in the URI: libpq's own means provide it (passfile, PGPASSFILE,
  PGPASSWORD, a systemd credential through `passfile=`).

Calls block; async callers run them in a thread where waiting matters (taking the lock).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

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
    LeaderLost,
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
from .sqlite import SCHEMA_VERSION

LOCK_KEY = 0x4D587774  # "MXwt": the advisory lock whose holder acts
_MIGRATION_LOCK_KEY = LOCK_KEY + 1
_POLL = 0.2  # seconds between tries of the lock while waiting for it
_CONNECT_TIMEOUT = 10  # seconds, for every connection


def _fn(statement: str) -> str:
    """The shared statements use `?`; psycopg wants `%s`."""
    return statement.replace("?", "%s")


# _MIGRATIONS[v] brings a database from the version before it to v. PostgreSQL support starts
# at the logical version 3, so its first step creates what SQLite's first three did.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: (
        "CREATE TABLE mxwatch_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER"
        " NOT NULL)",
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
            connector_guid TEXT,
            connector_enabled INTEGER CHECK (connector_enabled IN (0, 1)),
            connector_checked_at TEXT,
            waiting_for TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE domain (
            tenant TEXT NOT NULL REFERENCES tenant (name) ON DELETE CASCADE,
            domain TEXT NOT NULL,
            position INTEGER NOT NULL,
            verdict TEXT,
            mx TEXT NOT NULL,
            ttl BIGINT CHECK (ttl >= 0),
            checked_at TEXT,
            filtered_since TEXT,
            old_ttl BIGINT CHECK (old_ttl >= 0),
            filtered_count INTEGER NOT NULL DEFAULT 0 CHECK (filtered_count >= 0),
            filtered_at TEXT,
            misses INTEGER NOT NULL DEFAULT 0 CHECK (misses >= 0),
            old_ttl_cached BIGINT CHECK (old_ttl_cached >= 0),
            accepted INTEGER NOT NULL DEFAULT 0 CHECK (accepted IN (0, 1)),
            PRIMARY KEY (tenant, domain)
        )""",
        """CREATE TABLE journal (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
        # refuses to rewrite it, whatever code (or person with psql) tries.
        """CREATE FUNCTION mxwatch_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'journal is append-only'; END $$""",
        "CREATE TRIGGER journal_no_change BEFORE UPDATE OR DELETE ON journal"
        " FOR EACH ROW EXECUTE FUNCTION mxwatch_journal_append_only()",
        "CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal"
        " FOR EACH STATEMENT EXECUTE FUNCTION mxwatch_journal_append_only()",
        """CREATE TABLE cycle_run (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            finished_at TEXT NOT NULL,
            ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
            last_ok_at TEXT,
            duration_s DOUBLE PRECISION CHECK (duration_s >= 0)
        )""",
        """CREATE TABLE intent (
            tenant TEXT PRIMARY KEY,
            action TEXT NOT NULL CHECK (action IN ('enable', 'disable')),
            guid TEXT NOT NULL,
            at TEXT NOT NULL
        )""",
        # Who leads, since when, and the epoch every write is fenced with.
        """CREATE TABLE leadership (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            epoch BIGINT NOT NULL,
            holder TEXT NOT NULL,
            since TEXT NOT NULL
        )""",
        "INSERT INTO leadership VALUES (1, 0, '', '')",
    ),
    4: (CREATE_DNS_LOOKUP,),
}


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def redacted(uri: str) -> str:
    """The URI as it may be shown: without a password, should one have slipped in."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    """The state in a PostgreSQL database; the same interface as the SQLite `Store`."""

    def __init__(self, uri: str, conn: psycopg.Connection[Any], *, readonly: bool) -> None:
        # Use PostgresStore.open / open_readonly; they check the database first.
        self._uri = uri
        self._name = redacted(uri)
        self._conn = conn
        self._readonly = readonly
        self._lock = threading.Lock()  # one statement at a time on the data connection
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._epoch: int | None = None  # set while this process leads
        self._persistent = False  # taken by lead(): release() after a cycle keeps it
        self._has_led = False  # once it has led, every write must be fenced by its epoch
        self._closed = False

    @property
    def path(self) -> str:
        return self._name

    @classmethod
    def open(cls, uri: str) -> PostgresStore:
        """Connect, create or migrate the schema, and check it is ours and not too new."""
        store = cls(uri, _connect(uri, "mxwatch"), readonly=False)
        with store._closing_on_error():
            store._migrate()
        return store

    @classmethod
    def open_readonly(cls, uri: str) -> PostgresStore:
        """Connect for reading (status, history, health); the schema must be current."""
        store = cls(uri, _connect(uri, "mxwatch (read-only)"), readonly=True)
        with store._closing_on_error():
            version = store._version()
            if version == 0:
                raise StoreError(
                    f"no state yet in {store._name}: run mxwatch --once first", kind="empty"
                )
            store._check_version(version)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{store._name} uses state schema {version}, this mxwatch reads "
                    f"{SCHEMA_VERSION}: run mxwatch --once (or start the daemon) once"
                )
        return store

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_lock_connection()
            self._conn.close()

    def __enter__(self) -> PostgresStore:
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
        with self._using("reading tenant " + tenant), self._conn.transaction():
            row = self._one("SELECT * FROM tenant WHERE name = %s", (tenant,))
            return None if row is None else self._stored_tenant(row)

    def load_intent(self, tenant: str) -> Intent | None:
        with self._using("reading an intent of " + tenant):
            row = self._one("SELECT * FROM intent WHERE tenant = %s", (tenant,))
            return None if row is None else intent_from_row(row)

    def load_all(self) -> list[StoredTenant]:
        with self._using("reading tenants"), self._conn.transaction():
            rows = self._all("SELECT * FROM tenant ORDER BY name", ())
            return [self._stored_tenant(row) for row in rows]

    def history(self, tenant: str | None = None, limit: int | None = None) -> list[Transition]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        query = (
            "SELECT * FROM journal WHERE %s::text IS NULL OR tenant = %s ORDER BY id DESC LIMIT %s"
        )
        with self._using("reading the journal"):
            rows = self._all(query, (tenant, tenant, limit))
            return [transition_from_row(row) for row in reversed(rows)]

    def last_cycle(self) -> CycleRun | None:
        with self._using("reading the last cycle"):
            row = self._one("SELECT * FROM cycle_run WHERE id = 1", ())
            return None if row is None else cycle_run_from_row(row)

    def recall_lookups(self, now: datetime) -> list[RememberedLookup]:
        at = time_to_db(now, "now")
        with self._using("reading remembered DNS lookups"):
            rows = self._all(_fn(SELECT_LOOKUPS), (at,))
            return [lookup_from_row(row) for row in rows]

    def leader(self) -> tuple[str, str] | None:
        """The process that took the lead last (holder, since), or None if none ever did."""
        with self._using("reading the leadership"):
            row = self._one("SELECT holder, since FROM leadership WHERE id = 1", ())
        return (row["holder"], row["since"]) if row and row["holder"] else None

    # -- leadership: the one writer ------------------------------------------------------------

    shared = True  # replicas on several hosts: one leads, the others stand by

    def acquire(self, wait: float, command: str) -> None:
        """Hold the state for a cycle: take the lead, waiting up to `wait` seconds for the
        process that has it; StoreBusy names that process. A process that leads already (the
        daemon, `lead`) just checks it still does."""
        if self._readonly:
            raise StoreError(f"cannot lock {self._name}: this store was opened read-only")
        if self._epoch is not None:
            if not self.check_lead():
                raise LeaderLost(f"lost the lead on {self._name}: another mxwatch may take over")
            return
        deadline = time.monotonic() + max(0.0, wait)
        while not self._try_lead(command):
            if time.monotonic() >= deadline:
                raise StoreBusy(self._busy_message(wait))
            time.sleep(_POLL)

    def release(self) -> None:
        """After a cycle: give the lead back, unless `lead` took it for the process's life."""
        if not self._persistent:
            self._give_up()

    @contextmanager
    def exclusive(self, wait: float, command: str) -> Iterator[None]:
        self.acquire(wait, command)
        try:
            yield
        finally:
            self.release()

    def lead(self, command: str) -> bool:
        """Try once to take the lead for the life of this process (the daemon): True if it
        did or already had it."""
        if self._epoch is not None:
            return self.check_lead()
        self._persistent = self._try_lead(command)
        return self._persistent

    def holds_exclusively(self) -> bool:
        return self._epoch is not None

    def check_lead(self) -> bool:
        """Whether this process still leads: its lock connection answers and the epoch is still
        its own. A loss is final: the lead must be taken again, with a new epoch."""
        if self._epoch is None or self._lock_conn is None:
            return False
        try:
            row = self._lock_conn.execute("SELECT epoch FROM leadership WHERE id = 1").fetchone()
        except psycopg.Error:
            row = None
        if row is None or row["epoch"] != self._epoch:
            self._give_up()
            return False
        return True

    def _try_lead(self, command: str) -> bool:
        try:
            if self._lock_conn is None or self._lock_conn.closed or self._lock_conn.broken:
                self._lock_conn = _connect(self._uri, f"mxwatch lock pid {os.getpid()}")
            got = self._lock_conn.execute(
                "SELECT pg_try_advisory_lock(%s) AS locked", (LOCK_KEY,)
            ).fetchone()
            if not (got and got["locked"]):
                return False
            self._epoch = self._next_epoch(command)
        except psycopg.Error as exc:
            self._drop_lock_connection()  # closing it gives a lock taken back, if it was
            raise _classify(self._name, "taking the lead", exc) from exc
        self._has_led = True
        return True

    def _next_epoch(self, command: str) -> int:
        holder = f"pid {os.getpid()} on {socket.gethostname()} ({command})"
        since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        assert self._lock_conn is not None
        row = self._lock_conn.execute(
            "UPDATE leadership SET epoch = epoch + 1, holder = %s, since = %s WHERE id = 1"
            " RETURNING epoch",
            (holder, since),
        ).fetchone()
        assert row is not None
        return int(row["epoch"])

    def _give_up(self) -> None:
        self._epoch = None
        self._persistent = False
        if self._lock_conn is not None and not self._lock_conn.closed:
            try:
                self._lock_conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                self._drop_lock_connection()  # closing it releases the lock anyway

    def _drop_lock_connection(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._epoch = None
        if conn is not None:
            conn.close()

    def _busy_message(self, wait: float) -> str:
        holder = self.leader()
        who = f"{holder[0]} since {holder[1]}" if holder else "another mxwatch"
        return (
            f"the state {self._name} is in use by {who}: waited {wait:g}s for it; only one "
            "mxwatch acts on a state at a time (the others are standbys)"
        )

    # -- writing -------------------------------------------------------------------------------

    def record_intent(self, tenant: str, intent: Intent) -> None:
        row = (tenant, intent.action.value, intent.guid, time_to_db(intent.at, "intent.at"))
        with self._writing("recording a write intent"):
            self._conn.execute(_fn(UPSERT_INTENT), row)

    def record_cycle(
        self, finished_at: datetime, *, ok: bool, duration: float | None = None
    ) -> None:
        at = time_to_db(finished_at, "the cycle's finished_at")
        # The health record of a cycle whose own commit was fenced: written after the cycle
        # gave the lead back (`--once`), so it is not fenced itself.
        with self._writing("recording a cycle", fenced=False):
            self._conn.execute(_fn(RECORD_CYCLE), (at, int(ok), at if ok else None, duration))

    def save_cycle(
        self, tenants: Sequence[StoredTenant], transitions: Sequence[Transition]
    ) -> None:
        """Record one cycle in one transaction, fenced by this process's epoch."""
        reject_duplicates(tenants)
        tenant_rows = [tenant_row(t) for t in tenants]
        domain_rows = [
            domain_row(t.record.name, i, d) for t in tenants for i, d in enumerate(t.domains)
        ]
        journal_rows = [journal_row(tr) for tr in transitions]
        intent_rows = [intent_row(t) for t in tenants if t.intent is not None]
        names = [(t.record.name,) for t in tenants]
        with self._writing("saving a cycle"), self._conn.cursor() as cur:
            cur.executemany(_fn(UPSERT_TENANT), tenant_rows)
            cur.executemany("DELETE FROM domain WHERE tenant = %s", names)
            cur.executemany(_fn(INSERT_DOMAIN), domain_rows)
            cur.executemany("DELETE FROM intent WHERE tenant = %s", names)
            cur.executemany(_fn(UPSERT_INTENT), intent_rows)
            cur.executemany(_fn(INSERT_JOURNAL), journal_rows)

    def remember_lookups(self, lookups: Sequence[RememberedLookup], now: datetime) -> None:
        rows = [lookup_row(lookup) for lookup in lookups]
        at = time_to_db(now, "now")
        # A cache: what a process found in DNS stays true whoever leads, so it is not fenced.
        with self._writing("remembering DNS lookups", fenced=False), self._conn.cursor() as cur:
            cur.execute(_fn(DELETE_EXPIRED_LOOKUPS), (at,))
            cur.executemany(_fn(UPSERT_LOOKUP), rows)

    def append_journal(self, transitions: Sequence[Transition]) -> None:
        """Append entries outside a cycle (`mxwatch provision`'s writes), in one transaction."""
        rows = [journal_row(t) for t in transitions]
        with self._writing("appending to the journal"), self._conn.cursor() as cur:
            cur.executemany(_fn(INSERT_JOURNAL), rows)

    @contextmanager
    def _writing(self, action: str, *, fenced: bool = True) -> Iterator[None]:
        """One transaction that commits only while this process still leads (when it took the
        lead at all): the leadership row is locked and its epoch compared first."""
        if self._readonly:
            raise StoreError(f"cannot write {self._name}: this store was opened read-only")
        with self._using(action), self._conn.transaction():
            if fenced and self._has_led:
                self._fence()
            yield

    def _fence(self) -> None:
        row = self._one("SELECT epoch FROM leadership WHERE id = 1 FOR UPDATE", ())
        if self._epoch is None or row is None or row["epoch"] != self._epoch:
            self._epoch = None
            raise LeaderLost(
                f"lost the lead on {self._name} (another mxwatch took over): nothing was saved"
            )

    # -- internals -------------------------------------------------------------------------------

    def _one(self, query: str, params: Sequence[Any]) -> Any:
        return self._conn.execute(query, params).fetchone()

    def _all(self, query: str, params: Sequence[Any]) -> list[Any]:
        return self._conn.execute(query, params).fetchall()

    def _stored_tenant(self, row: Any) -> StoredTenant:
        name = row["name"]
        domains = self._all("SELECT * FROM domain WHERE tenant = %s ORDER BY position", (name,))
        intent = self._one("SELECT * FROM intent WHERE tenant = %s", (name,))
        return stored_tenant(row, domains, intent)

    @contextmanager
    def _using(self, action: str) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the state store {self._name} is already closed")
            try:
                if self._conn.broken or self._conn.closed:
                    # The server restarted or the network dropped: the failed statement was
                    # reported once; connect again for this one.
                    self._conn = _connect(self._uri, "mxwatch")
                yield
            except psycopg.Error as exc:
                if isinstance(exc, errors.ReadOnlySqlTransaction):
                    # A standby server, or a primary that was demoted: a new connection may
                    # reach the new primary (or the setting that made this one read-only).
                    self._conn.close()
                raise _classify(self._name, action, exc) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(
                    f"{self._name} holds a value this mxwatch cannot read while {action} ({exc})"
                ) from exc

    @contextmanager
    def _closing_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _version(self) -> int:
        with self._using("reading the schema version"):
            return self._read_version()

    def _read_version(self) -> int:
        present = self._one("SELECT to_regclass('mxwatch_schema') IS NOT NULL AS t", ())
        if present["t"]:
            row = self._one("SELECT version FROM mxwatch_schema WHERE id = 1", ())
            return int(row["version"]) if row else 0
        # pg_tables lists every table, also those this role may not read.
        tables = self._one(
            "SELECT count(*) AS n FROM pg_tables WHERE schemaname = current_schema()", ()
        )
        if tables["n"]:
            raise StoreError(
                f"{self._name} holds tables but is not an mxwatch state database: point "
                "daemon.state at another database; nothing was changed",
                kind="foreign",
            )
        return 0

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._name} was written by a newer mxwatch (state schema {version}; this "
                f"version understands up to {SCHEMA_VERSION}): upgrade mxwatch; nothing was "
                "changed",
                kind="schema_too_new",
            )

    def _migrate(self) -> None:
        with self._using("migrating the schema"), self._conn.transaction():
            # One process migrates at a time; the others wait here, then find it done.
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            version = self._read_version()
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return
            for target in sorted(v for v in _MIGRATIONS if v > version):
                for statement in _MIGRATIONS[target]:
                    self._conn.execute(statement.encode())  # constant SQL, no parameters
            self._conn.execute(
                "INSERT INTO mxwatch_schema VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )


def _connect(uri: str, application: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            uri,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=_CONNECT_TIMEOUT,
            application_name=application,
        )
    except psycopg.Error as exc:
        raise _classify(redacted(uri), "connecting", exc) from exc


def _classify(name: str, action: str, exc: psycopg.Error) -> StoreError:
    """A StoreError saying what happened to which database and who must do what."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # A refused login arrives as a failed connection; libpq's text is the one sign of it.
    refused = "authentication failed" in str(exc) or "no password supplied" in str(exc)
    if refused or isinstance(
        exc, errors.InvalidPassword | errors.InvalidAuthorizationSpecification
    ):
        return StoreError(
            f"PostgreSQL refused the login to {name} while {action} ({text}): check the "
            "password in the passfile (PGPASSFILE, passfile=) and the role",
            kind="auth_failed",
        )
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return StoreError(
            f"{name} is read-only while {action} ({text}): point daemon.state at the primary",
            kind="read_only",
        )
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return StoreError(
            f"{name} refused a concurrent write while {action} ({text}); nothing was saved, "
            "the next cycle tries again",
            kind="conflict",
        )
    if isinstance(exc, psycopg.OperationalError):
        return StoreError(
            f"cannot reach {name} while {action} ({text}): is PostgreSQL running, and does "
            "daemon.state name the right host and port?",
            kind="unreachable",
        )
    return StoreError(f"PostgreSQL failed on {name} while {action}: {text}", kind="database")
