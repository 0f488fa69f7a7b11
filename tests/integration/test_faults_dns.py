"""Fault matrix, DNS: the real CLI (`--once`, the daemon) against broken or hostile DNS.

Every case checks that nothing is enabled early, that no transition is lost (the logged
transitions are the journal, and `status` agrees with it), and that a log event names the fault.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.fixtures.bad_dns import BadDns
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    frig_fixture,
    tenant_moves,
)
from tests.fixtures.knot import REFUSED_DOMAIN, free_port
from tests.fixtures.rig import M365_MX, Tenant, contoso, enabled
from tests.fixtures.sandbox import TENANT_ID
from tests.fixtures.service import Service


@pytest.fixture
def bad_dns(frig: FaultRig) -> Iterator[BadDns]:
    with BadDns(upstream=("127.0.0.1", frig.knot.port)) as server:
        yield server


def inconclusive(events: list[Event], domain: str) -> list[str]:
    return [
        e["reason"]
        for e in events
        if e.get("event") == "dns_inconclusive" and e["domain"] == domain
    ]


# --- authoritative-server failures, from Knot itself ----------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("down", "timeout after 1s"), ("servfail", "SERVFAIL from"), ("refused", "REFUSED from")],
)
def test_failing_dns_is_unknown_and_never_enables(
    frig: FaultRig, fault: str, expected: str
) -> None:
    """One domain filtered, the other unknown: the tenant waits, however often it is asked."""
    frig.policy["confirmations"] = 1
    guid = contoso(frig)
    if fault == "servfail":
        frig.knot.add_broken_zone("contoso.net")
        bad = "contoso.net"
    elif fault == "refused":
        bad = REFUSED_DOMAIN
    else:
        bad = "contoso.com"
        frig.resolvers = [f"127.0.0.1:{free_port()}"]  # nothing listens
    if bad != "contoso.com":
        frig.tenants[0] = Tenant("contoso", TENANT_ID, ["contoso.com", bad])
    events: list[Event] = []
    for _ in range(1 if fault == "down" else 2):  # "down" costs the 1 s timeout per run
        run = frig.once()
        events += run.events
        assert run.code == 0, run.stderr  # unknown is no error: nothing to act on yet
        reasons = inconclusive(run.events, bad)
        assert reasons and expected in reasons[0], reasons
    assert not enabled(frig, guid)
    assert frig.set_calls() == []
    status = frig.status()["contoso"]
    assert status["state"] == "waiting"
    assert {d["domain"]: d["verdict"] for d in status["domains"]}[bad] == "unknown"
    check_journal(frig, events)


# --- answers too big for UDP ----------------------------------------------------------------


def many_filter_mx(count: int) -> list[tuple[int, str]]:
    # Distinct suffixes defeat name compression: about 3 kB, over both 512 and 1232 bytes.
    return [(10 + i, f"mx{i}.pool{i}.inbound.emailservice.io.") for i in range(count)]


@pytest.mark.parametrize(
    ("label", "extra", "verdict"),
    [("filter only", [], "filtered"), ("one Microsoft MX last", M365_MX, "mixed")],
)
def test_truncated_answer_is_read_in_full_over_tcp(
    frig: FaultRig, label: str, extra: list[tuple[int, str]], verdict: str
) -> None:
    """The last record only fits in the TCP answer: a verdict from the truncated UDP answer
    would say filtered for a domain still partly on Microsoft 365."""
    frig.policy["confirmations"] = 1
    records = [*many_filter_mx(100), *((999, host) for _, host in extra)]
    guid = contoso(frig, mx=records)
    run = frig.once()
    assert run.code == 0, run.stderr
    domain = frig.status()["contoso"]["domains"][0]
    assert domain["verdict"] == verdict, label
    assert len(domain["mx"]) == len(records)
    assert enabled(frig, guid) is (verdict == "filtered")
    assert run.named("dns_inconclusive") == []
    check_journal(frig, run.events)


# --- a misbehaving server: garbage, spoofed IDs, short headers ------------------------------


@pytest.mark.parametrize("mode", ["drop", "garbage", "wrong_id", "short"])
def test_no_answer_garbage_or_spoofed_answers_time_out(
    frig: FaultRig, bad_dns: BadDns, mode: str
) -> None:
    """The zone says Microsoft 365; the wrong-ID answer says the filter. Neither garbage nor
    a spoofed answer may be believed: the lookup times out, the domain is unknown."""
    frig.policy["confirmations"] = 1
    guid = contoso(frig, mx=M365_MX)
    bad_dns.mode = mode
    frig.resolvers = [bad_dns.spec]
    run = frig.once()
    assert run.code == 0, run.stderr
    assert inconclusive(run.events, "contoso.com") == [f"{bad_dns.spec}: timeout after 1s"]
    assert bad_dns.count(mode) >= 2  # asked twice within the lifetime, answered never
    events = run.events
    assert not enabled(frig, guid) and frig.set_calls() == []
    status = frig.status()["contoso"]
    assert (status["state"], status["domains"][0]["verdict"]) == ("waiting", "unknown")
    assert status["domains"][0]["mx"] == []  # nothing from the spoofed answer was kept
    check_journal(frig, events)


# --- the daemon through all of it -----------------------------------------------------------


def test_daemon_keeps_running_through_dns_faults_and_enables_only_after(
    frig: FaultRig, bad_dns: BadDns
) -> None:
    """Filtered once, then two cycles of each fault, then filtered again: unknown cycles
    neither count as confirmations nor reset them, and the daemon never stops."""
    frig.policy["confirmations"] = 3
    guid = contoso(frig)
    frig.resolvers = [bad_dns.spec]
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        daemon.wait_for("cycle_finished")
        # Each --once case above has its own test; here the daemon lives through a few.
        expected = {
            "servfail": "SERVFAIL from",
            "wrong_id": "timeout after 1s",
        }
        for mode, reason in expected.items():
            started = len(daemon.named("cycle_started"))
            bad_dns.mode = mode
            daemon.wait_for("cycle_finished", count=started + 2)
            assert daemon.process.poll() is None, daemon.stderr
            seen = inconclusive(daemon.events, "contoso.com")
            assert seen and reason in seen[-1], (mode, seen[-1:])
            assert frig.set_calls() == [], mode
            assert not enabled(frig, guid)
        assert frig.status()["contoso"]["state"] == "settling"
        bad_dns.mode = "forward"
        daemon.wait_for("connector_enabled", timeout=30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        events = list(daemon.events)
    assert enabled(frig, guid)
    assert len(frig.set_calls()) == 1
    journal = check_journal(frig, events)
    assert tenant_moves(journal) == [("waiting", "settling"), ("settling", "enabled")]
    verdicts = [e["to"] for e in journal if e["domain"] == "contoso.com"]
    assert verdicts[0] == "filtered" and verdicts[-1] == "filtered"
    assert "unknown" in verdicts
