"""Fault matrix, the process: kill -9 in the middle of a cycle and of an enable.

A crash between the Exchange write and the store record is healed on restart: the intent
committed before the write makes the next cycle read the connector back (DESIGN.md §3), and
the tenant ends enabled, with exactly one transition into enabled in the journal, which says
mxwatch made it, and nothing lost from before the crash.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.bad_dns import BadDns
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    eventually,
    frig_fixture,
    kill9,
    pending_faults,
    popen_once,
    tenant_moves,
)
from tests.fixtures.rig import contoso, enabled
from tests.fixtures.service import Service

GET = "Get-InboundConnector"
SET = "Set-InboundConnector"


@pytest.fixture
def bad_dns(frig: FaultRig) -> Iterator[BadDns]:
    with BadDns(upstream=("127.0.0.1", frig.knot.port)) as server:
        yield server


def into_enabled(journal: list[Event]) -> int:
    return [to for _, to in tenant_moves(journal)].count("enabled")


@pytest.mark.parametrize("stage", ["set-in-flight", "read-back-in-flight"])
def test_kill9_of_once_during_the_enable_heals_on_the_next_run(frig: FaultRig, stage: str) -> None:
    guid = contoso(frig)  # confirmations = 2: the first run settles, the second enables
    first = frig.once()
    assert first.code == 0, first.stdout
    assert frig.status()["contoso"]["state"] == "settling"
    before = frig.journal()

    if stage == "set-in-flight":
        frig.sandbox.inject(Fault(delay=1.0, cmdlet=SET))  # the server applies it afterwards
    else:
        frig.sandbox.inject(Fault(cmdlet=GET))  # the audit read passes untouched ...
        frig.sandbox.inject(Fault(delay=1.5, cmdlet=GET))  # ... the read-back is held
    process = popen_once(frig)
    eventually(lambda: pending_faults(frig.sandbox) == 0, what="the held request to arrive")
    killed = kill9(process)
    assert [e for e in killed if e["event"] == "connector_enabled"] == []
    eventually(lambda: enabled(frig, guid), what="the server to apply the Set")

    # Nothing of the killed run was recorded, and nothing from before was lost.
    assert frig.journal() == before
    assert frig.status()["contoso"]["state"] == "settling"

    heal = frig.once()
    assert heal.code == 0, heal.stdout
    assert frig.status()["contoso"]["state"] == "enabled"
    journal = check_journal(frig, [*first.events, *killed, *heal.events])
    assert journal[: len(before)] == before
    assert into_enabled(journal) == 1
    assert len([r for r in frig.set_calls() if r.status == 200]) == 1  # no second write
    # The intent committed before the Set says who made it.
    (into,) = [e for e in journal if e["domain"] is None and e["to"] == "enabled"]
    assert into["reason"].startswith("enabled by mxwatch at "), into
    (confirmed,) = heal.named("connector_enabled")
    assert confirmed["recovered"] is True


def test_kill9_of_the_daemon_during_the_enable_heals_on_restart(frig: FaultRig) -> None:
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    frig.sandbox.inject(Fault(delay=1.0, cmdlet=SET))
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        daemon.wait_for("cycle_started")
        eventually(lambda: pending_faults(frig.sandbox) == 0, what="the Set to arrive")
        daemon.process.kill()
        assert daemon.wait() == -signal.SIGKILL
        first = list(daemon.events)
    assert [e for e in first if e["event"] == "connector_enabled"] == []
    eventually(lambda: enabled(frig, guid), what="the server to apply the Set")

    with svc.start() as daemon:
        daemon.wait_for("cycle_finished", count=2)
        assert daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        second = list(daemon.events)
    status = frig.status()["contoso"]
    assert (status["state"], status["connector"]["enabled"]) == ("enabled", True)
    journal = check_journal(frig, [*first, *second])
    assert into_enabled(journal) == 1
    assert len([r for r in frig.set_calls() if r.status == 200]) == 1
    (into,) = [e for e in journal if e["domain"] is None and e["to"] == "enabled"]
    assert into["reason"].startswith("enabled by mxwatch at "), into


def test_kill9_during_the_dns_phase_keeps_the_recorded_state(
    frig: FaultRig, bad_dns: BadDns
) -> None:
    guid = contoso(frig)
    frig.resolvers = [bad_dns.spec]
    first = frig.once()
    assert frig.status()["contoso"]["state"] == "settling", first.stdout
    before = frig.journal()

    bad_dns.mode = "drop"  # the next cycle hangs on DNS until its timeout
    process = popen_once(frig)
    eventually(lambda: bad_dns.count("drop") > 0, what="the DNS query")
    killed = kill9(process)
    assert frig.journal() == before
    assert frig.status()["contoso"]["state"] == "settling"

    bad_dns.mode = "forward"
    second = frig.once()
    assert second.code == 0, second.stdout
    assert enabled(frig, guid)
    journal = check_journal(frig, [*first.events, *killed, *second.events])
    assert tenant_moves(journal) == [("waiting", "settling"), ("settling", "enabled")]
