"""Two replicas, one actor (issue 12): daemons on one PostgreSQL state, against a real
PostgreSQL, Knot and the Exchange sandbox over HTTPS.

Each replica signs in with its own app (client ID), so the sandbox tells whose request each one
was: a standby must make no Exchange call at all.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from mxwatch.sandbox.exchange_api import Fault, RecordedRequest
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    eventually,
    frig_fixture,
    pending_faults,
    tenant_moves,
)
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rig import FILTER_MX, Tenant, enabled
from tests.fixtures.sandbox import CONNECTOR, SECRET
from tests.fixtures.service import Daemon, Service

CLIENT_A = "aaaaaaaa-1111-4111-8111-111111111111"
CLIENT_B = "bbbbbbbb-2222-4222-8222-222222222222"
SET = "Set-InboundConnector"


@dataclass
class Replicas:
    frig: FaultRig
    pg: PostgresServer
    guids: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (tenant id, guid)

    def add_tenants(self, count: int) -> None:
        for index in range(count):
            name = f"tenant{index}"
            tenant_id = f"{index:08d}-0000-4000-8000-000000000000"
            domain = f"{name}.example"
            self.frig.knot.add_zone(domain, mx=FILTER_MX, ttl=60)
            self.frig.sandbox.add_tenant(tenant_id, accepted_domains=[domain])
            for client in (CLIENT_A, CLIENT_B):
                self.frig.sandbox.register_app(tenant_id, client, secret=SECRET)
            guid = self.frig.sandbox.add_connector(tenant_id, CONNECTOR)
            self.frig.tenants.append(Tenant(name, tenant_id, [domain]))
            self.guids[name] = (tenant_id, guid)

    def daemon(self, client: str, name: str) -> Service:
        self.frig.overrides[("exchange", "client_id")] = client
        service = Service(self.frig, daemon={"interval": "1s", "jitter": "0s"}, name=name)
        service.write()  # now, while the overrides name this replica's app
        return service

    def all_enabled(self) -> bool:
        return all(enabled(self.frig, guid, tid) for tid, guid in self.guids.values())

    def api_calls(self, client: str) -> list[RecordedRequest]:
        return [r for r in self.frig.sandbox.requests_to("api") if r.client_id == client]

    def writes(self, client: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.frig.sandbox.requests_to("api")
            if r.cmdlet == SET and r.status == 200 and client in (None, r.client_id)
        ]


@pytest.fixture
def replicas(frig: FaultRig, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Replicas:
    monkeypatch.setenv("PGPASSFILE", str(postgres.passfile))
    frig.overrides[("daemon", "state")] = postgres.dsn()
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    return Replicas(frig, postgres)


@contextmanager
def running(replicas: Replicas) -> Iterator[tuple[Daemon, Daemon]]:
    """Replica A started first, so it leads; B stands by."""
    a, b = replicas.daemon(CLIENT_A, "a.toml"), replicas.daemon(CLIENT_B, "b.toml")
    with a.start(write=False) as leader:
        leader.wait_for("leader_acquired")
        with b.start(write=False) as standby:
            standby.wait_for("standby")
            yield leader, standby


def stop(*daemons: Daemon) -> None:
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.stderr


def chain(journal: list[Event]) -> None:
    last: dict[str, str] = {}
    for entry in journal:
        if entry["domain"] is None:
            assert entry["from"] == last.get(entry["tenant"], "waiting"), entry
            last[entry["tenant"]] = entry["to"]


def test_of_two_daemons_exactly_one_acts(replicas: Replicas) -> None:
    replicas.add_tenants(6)
    a, b = replicas.daemon(CLIENT_A, "a.toml"), replicas.daemon(CLIENT_B, "b.toml")
    with a.start(write=False) as leader:
        leader.wait_for("leader_acquired")
        with b.start(write=False) as standby:
            standby.wait_for("standby", count=3)
            eventually(replicas.all_enabled, timeout=40, what="every connector enabled")
            stop(leader, standby)
    assert len(replicas.writes()) == 6 == len(replicas.writes(CLIENT_A))
    assert replicas.api_calls(CLIENT_B) == []  # a standby makes no Exchange call at all
    (busy,) = standby.named("standby")[:1]
    assert busy["leader"].startswith("pid ") and "(mxwatch)" in busy["leader"]
    assert standby.named("cycle_started") == []
    journal = check_journal(replicas.frig, [*leader.events, *standby.events])
    chain(journal)


def test_kill9_of_the_leader_the_standby_takes_over_and_heals(replicas: Replicas) -> None:
    replicas.add_tenants(3)
    replicas.frig.sandbox.inject(Fault(delay=2.0, cmdlet=SET))  # the first write is held
    with running(replicas) as (leader, standby):
        eventually(lambda: pending_faults(replicas.frig.sandbox) == 0, what="the held write")
        leader.process.kill()  # in the middle of its cycle, with a write in flight
        killed_at = time.monotonic()
        assert leader.wait() == -signal.SIGKILL
        standby.wait_for("leader_acquired", timeout=20)
        took_over = time.monotonic() - killed_at
        eventually(replicas.all_enabled, timeout=40, what="every connector enabled")
        stop(standby)
    assert took_over < 2 * 1.0 + 1.5, took_over  # within two intervals (1 s each), and slack
    # The held write was made by A and confirmed by B's read-back, never made twice.
    assert len(replicas.writes()) == 3
    journal = check_journal(replicas.frig, [*leader.events, *standby.events], exact=False)
    chain(journal)
    for name in replicas.guids:
        moves = [to for _, to in tenant_moves(journal, name)]
        assert moves.count("enabled") == 1, (name, moves)
    healed = [e for e in journal if e["domain"] is None and e["to"] == "enabled"]
    assert any(e["reason"].startswith("enabled by mxwatch at ") for e in healed), healed


def test_a_leader_whose_lock_connection_is_cut_stops_before_the_standby_acts(
    replicas: Replicas,
) -> None:
    replicas.add_tenants(3)
    replicas.frig.policy["confirmations"] = 5  # still settling when the lock is cut
    with running(replicas) as (leader, standby):
        _cut_the_lead(replicas, leader, standby)


def _cut_the_lead(replicas: Replicas, leader: Daemon, standby: Daemon) -> None:
    leader.wait_for("cycle_finished", count=2)
    replicas.pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE 'mxwatch lock%'"
    )
    leader.wait_for("leader_lost", timeout=10)
    lost_seen = time.monotonic()
    standby.wait_for("leader_acquired", timeout=10)
    eventually(replicas.all_enabled, timeout=40, what="every connector enabled")
    stop(leader, standby)
    late = [r for r in replicas.writes(CLIENT_A) if r.at > lost_seen]
    assert late == [], "the old leader wrote after it lost the lead"
    b_calls = replicas.api_calls(CLIENT_B)
    assert b_calls and min(r.at for r in b_calls) > lost_seen
    assert len(replicas.writes()) == 3


def test_the_database_restarting_under_the_leader_loses_nothing(replicas: Replicas) -> None:
    replicas.add_tenants(2)
    replicas.frig.policy["confirmations"] = 4
    with running(replicas) as (leader, standby):
        leader.wait_for("cycle_finished", count=2)
        replicas.pg.restart()
        eventually(replicas.all_enabled, timeout=60, what="every connector enabled")
        stop(leader, standby)
        events = [*leader.events, *standby.events]
    assert [e for e in events if e.get("event") == "leader_lost"], "the restart was noticed"
    journal = check_journal(replicas.frig, events, exact=False)
    chain(journal)
    assert len(replicas.writes()) == 2
    for name in replicas.guids:
        assert [to for _, to in tenant_moves(journal, name)].count("enabled") == 1


def test_once_beside_a_leading_daemon_names_it_or_observes_only(replicas: Replicas) -> None:
    replicas.add_tenants(1)
    with running(replicas) as (leader, standby):
        leader.wait_for("cycle_finished")
        replicas.frig.overrides[("exchange", "client_id")] = CLIENT_B
        run = replicas.frig.mxwatch("--once", "--lock-wait", "0.5")
        assert run.code == 1
        assert "is in use by pid " in run.stderr and "(mxwatch)" in run.stderr
        observed = replicas.frig.once("--observe-only")
        assert observed.code == 0, observed.stderr
        (tenant,) = observed.named("observed")
        assert tenant["tenant"] == "tenant0"
        assert replicas.writes(CLIENT_B) == []
        health = replicas.frig.mxwatch("health")
        assert health.code == 0, health.stdout + health.stderr
        assert "healthy" in health.stdout and "leader: pid " in health.stdout
        stop(leader, standby)
