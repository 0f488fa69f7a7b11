"""`mxwatch state copy FROM TO` through the real CLI: SQLite to PostgreSQL and back, with
everything (tenants, domains, a pending intent, the journal in order, the last cycle), and
never over a target that holds state."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mxwatch.model import Intent, WriteAction
from mxwatch.store import Store
from tests.fixtures.postgres import PASSWORD, PostgresServer
from tests.fixtures.rig import Rig, contoso


def mxwatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mxwatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def history(env: dict[str, str], config: Path) -> list[dict[str, object]]:
    done = mxwatch(env, "history", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def sqlite_state(rig: Rig) -> Path:
    """A state made by two real cycles, plus a pending intent; the filter's MX hosts exist,
    so the cycles keep the answer to whether they are aliases."""
    contoso(rig)
    rig.knot.add_zone("inbound.emailservice.io", ["mx1 A 192.0.2.25"])
    rig.knot.add_zone("inbound.emailservice.cc", ["mx2 A 192.0.2.26"])
    assert rig.once().code == 0 and rig.once().code == 0
    state = rig.tmp / "state.db"
    intent = Intent(WriteAction.DISABLE, "aaaaaaaa-0000-4000-8000-000000000001", datetime.now(UTC))
    with Store.open(state) as store, store.exclusive(0, "test"):
        store.record_intent("contoso", intent)
    return state


def test_sqlite_to_postgres_and_back_keeps_everything(
    rig: Rig, sqlite_state: Path, postgres: PostgresServer
) -> None:
    env = postgres.client_env()
    dsn = postgres.dsn()
    there = mxwatch(env, "state", "copy", str(sqlite_state), dsn)
    assert there.returncode == 0, there.stderr
    assert "copied 1 tenants and" in there.stdout
    back_file = rig.tmp / "back.db"
    back = mxwatch(env, "state", "copy", dsn, str(back_file))
    assert back.returncode == 0, back.stderr

    with Store.open_readonly(sqlite_state) as a, Store.open_readonly(back_file) as b:
        assert b.load_all() == a.load_all()
        assert b.history() == a.history()
        assert b.last_cycle() == a.last_cycle()
        now = datetime.now(UTC)  # the DNS lookups the --once runs kept came along too
        assert {x.name for x in a.recall_lookups(now)} == {
            "mx1.inbound.emailservice.io",
            "mx2.inbound.emailservice.cc",
        }
        assert b.recall_lookups(now) == a.recall_lookups(now)
        loaded = b.load("contoso")
        assert loaded is not None and loaded.intent is not None  # the pending write came along
    assert PASSWORD not in there.stdout + there.stderr + back.stdout + back.stderr


def test_a_target_holding_state_is_refused_and_left_alone(
    rig: Rig, sqlite_state: Path, postgres: PostgresServer
) -> None:
    env = postgres.client_env()
    assert mxwatch(env, "state", "copy", str(sqlite_state), postgres.dsn()).returncode == 0
    again = mxwatch(env, "state", "copy", str(sqlite_state), postgres.dsn())
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    onto_file = mxwatch(env, "state", "copy", postgres.dsn(), str(sqlite_state))
    assert onto_file.returncode == 1 and "refusing to overwrite" in onto_file.stderr


def test_a_uri_with_a_password_is_refused_unechoed(tmp_path: Path) -> None:
    uri = "postgresql://mxwatch:hunter2-Secret@127.0.0.1/mxwatch"
    done = mxwatch({"PATH": "/usr/bin:/bin"}, "state", "copy", str(tmp_path / "a.db"), uri)
    assert done.returncode == 2 and "must not hold a password" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
