"""Fault matrix, the PostgreSQL store: unreachable, a refused login, a read-only database, a
serialization failure, a schema from a newer mxwatch. Each is a clear message (exit 1 for
`--once`, exit 2 for `check-config`) or a named log event in the daemon, and nothing recorded is
lost once the fault is gone. The faults are real: a port nobody listens on, a wrong password in
the passfile, the server's own settings, and a trigger raising SQLSTATE 40001."""

from __future__ import annotations

import signal

import pytest

from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    FaultRig,
    check_journal,
    frig_fixture,
)
from tests.fixtures.knot import free_port
from tests.fixtures.postgres import PASSWORD, PostgresServer
from tests.fixtures.rig import M365_MX, contoso
from tests.fixtures.service import Service


@pytest.fixture
def pgrig(frig: FaultRig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> FaultRig:
    monkeypatch.setenv("PGPASSFILE", str(postgres.passfile))
    frig.overrides[("daemon", "state")] = postgres.dsn()
    contoso(frig, mx=M365_MX)  # a waiting tenant: every cycle has something to record
    return frig


def test_unreachable_database(pgrig: FaultRig) -> None:
    pgrig.overrides[("daemon", "state")] = f"postgresql://mxwatch@127.0.0.1:{free_port()}/mxwatch"
    run = pgrig.mxwatch("--once")
    assert run.code == 1 and "cannot reach postgresql://mxwatch@127.0.0.1:" in run.stderr
    check = pgrig.mxwatch("check-config")
    assert check.code == 2 and "daemon.state: cannot reach" in check.stderr
    assert "Traceback" not in run.stderr + check.stderr


def test_refused_login(pgrig: FaultRig, postgres: PostgresServer) -> None:
    postgres.passfile.write_text(f"127.0.0.1:{postgres.port}:*:mxwatch:not-{PASSWORD}\n")
    run = pgrig.mxwatch("--once")
    assert run.code == 1 and "refused the login" in run.stderr
    check = pgrig.mxwatch("check-config")
    assert check.code == 2 and "daemon.state: PostgreSQL refused the login" in check.stderr
    assert PASSWORD not in run.stderr + run.stdout + check.stderr + check.stdout


def test_read_only_database_fails_the_cycle_by_name_and_loses_nothing(
    pgrig: FaultRig, postgres: PostgresServer
) -> None:
    first = pgrig.once()
    assert first.code == 0, first.stderr
    before = pgrig.journal()
    postgres.sql("ALTER DATABASE mxwatch SET default_transaction_read_only = on")

    run = pgrig.mxwatch("--once")
    assert run.code == 1 and "is read-only" in run.stderr
    svc = Service(pgrig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        (failed,) = daemon.wait_for("cycle_failed")[:1]
        assert failed["kind"] == "read_only"
        postgres.sql("ALTER DATABASE mxwatch SET default_transaction_read_only = off")
        daemon.wait_for("cycle_finished")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    journal = pgrig.journal()
    assert journal[: len(before)] == before


def test_serialization_failure_fails_the_cycle_by_name_and_saves_nothing(
    pgrig: FaultRig, postgres: PostgresServer
) -> None:
    assert pgrig.once().code == 0
    before = pgrig.journal()
    postgres.sql(
        """CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; END $$;
        CREATE TRIGGER conflict BEFORE INSERT OR UPDATE ON tenant
        FOR EACH ROW EXECUTE FUNCTION conflict();""",
        database="mxwatch",
    )
    pgrig.knot.set_mx("contoso.com", [(10, "mx1.inbound.emailservice.io.")])  # a change to save
    svc = Service(pgrig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        (failed,) = daemon.wait_for("cycle_failed")[:1]
        assert failed["kind"] == "conflict" and "nothing was saved" in failed["error"]
        assert pgrig.journal() == before  # the whole cycle rolled back
        postgres.sql("DROP TRIGGER conflict ON tenant", database="mxwatch")
        daemon.wait_for("cycle_finished")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        events = list(daemon.events)
    journal = check_journal(pgrig, events, exact=False)
    assert journal[: len(before)] == before and len(journal) > len(before)


def test_a_schema_from_a_newer_mxwatch_is_refused(
    pgrig: FaultRig, postgres: PostgresServer
) -> None:
    assert pgrig.once().code == 0
    postgres.sql("UPDATE mxwatch_schema SET version = 99", database="mxwatch")
    check = pgrig.mxwatch("check-config")
    assert check.code == 2 and "written by a newer mxwatch (state schema 99" in check.stderr
    run = pgrig.mxwatch("--once")
    assert run.code == 1 and "newer mxwatch" in run.stderr
