"""The gate holds on every timeline (issue 8): each early enable a hostile review reproduced,
reproduced again through the real CLI against Knot and the sandbox.

Each test is the review's timeline; on the code before the fix each one enabled the connector
(or recorded the enable as someone else's). The policy-level proof of the whole class is the
model-based test in tests/unit/test_policy_model.py.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime

from mxwatch.sandbox.exchange_api import Fault
from tests.fixtures.bad_dns import BadDns, silent_servers
from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    events_of,
    eventually,
    frig_fixture,
    pending_faults,
    popen_once,
    tenant_moves,
)
from tests.fixtures.knot import AuthLab, KnotFactory
from tests.fixtures.rig import FILTER_MX, M365_MX, TENANT_B, Tenant, contoso, enabled
from tests.fixtures.sandbox import CLIENT_ID, CONNECTOR, SECRET, TENANT_ID
from tests.fixtures.service import Service

GET = "Get-InboundConnector"
SET = "Set-InboundConnector"
MIXED_MX = [FILTER_MX[0], M365_MX[0]]
FILTER = FILTER_MX[0][1]


def successful_sets(rig: FaultRig) -> list[object]:
    return [r for r in rig.set_calls() if r.status == 200]


def chain_per_tenant(journal: list[Event]) -> None:
    """The journal's tenant transitions form one chain per tenant: each starts where the
    previous one ended."""
    last: dict[str, str] = {}
    for entry in journal:
        if entry["domain"] is None:
            tenant = entry["tenant"]
            assert entry["from"] == last.get(tenant, "waiting"), (entry, last.get(tenant))
            last[tenant] = entry["to"]


# --- 1. accepted domains outside `domains` ---------------------------------------------------


def test_an_accepted_domain_outside_domains_waits_out_its_old_ttl_too(frig: FaultRig) -> None:
    frig.policy = {
        "confirmations": 1,
        "settle": "auto",
        "min_settle": "0s",
        "default_old_ttl": "2s",
    }
    guid = contoso(frig)  # contoso.com: filtered from the start, waits default_old_ttl (2 s)
    frig.knot.add_zone("legacy-contoso.com")
    frig.knot.set_mx("legacy-contoso.com", M365_MX, ttl=3600)
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "legacy-contoso.com"])
    assert frig.once().code == 0

    frig.knot.set_mx("legacy-contoso.com", FILTER_MX)
    frig.once()
    time.sleep(3)  # contoso.com has settled; legacy-contoso.com's old MX lives another hour
    run = frig.once()

    assert run.code == 0 and not enabled(frig, guid) and successful_sets(frig) == []
    status = frig.status()["contoso"]
    assert status["state"] == "settling"
    assert "legacy-contoso.com settling until" in status["waiting_for"]
    assert "old MX TTL 3600s" in status["eligible_reason"]


def test_an_accepted_domain_outside_domains_that_regresses_is_a_regression(
    frig: FaultRig,
) -> None:
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    guid = contoso(frig, Enabled=True)
    frig.knot.add_zone("legacy-contoso.com", mx=FILTER_MX)
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com", "legacy-contoso.com"])
    assert frig.once().code == 0
    assert frig.status()["contoso"]["state"] == "enabled"

    frig.knot.set_mx("legacy-contoso.com", M365_MX)
    runs = [frig.once() for _ in range(3)]

    assert [r.code for r in runs] == [0, 1, 1]
    (moved,) = [e for r in runs for e in r.named("tenant_transition") if e["to"] == "regressed"]
    assert moved["level"] == "error" and "legacy-contoso.com is direct" in moved["reason"]
    assert enabled(frig, guid)  # on_regression = "alert": left alone, and said loudly


# --- 2. two runs on one state --------------------------------------------------------------


def test_a_second_run_waits_for_the_first_then_sees_its_record(frig: FaultRig) -> None:
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    guid = contoso(frig)
    first = frig.once()
    assert frig.status()["contoso"]["state"] == "settling"

    # The review's timeline: a slow read holds run A; meanwhile the MX goes back to
    # Microsoft 365 and run B starts. B must not interleave with A.
    frig.sandbox.inject(Fault(delay=2.0, cmdlet=GET))
    slow = popen_once(frig)
    eventually(lambda: pending_faults(frig.sandbox) == 0, what="run A's slow read")
    frig.knot.set_mx("contoso.com", M365_MX)
    waiting = popen_once(frig, "--lock-wait", "30")
    outputs = [p.communicate(timeout=60) for p in (slow, waiting)]
    events = [*first.events, *(e for out, _ in outputs for e in events_of(out))]

    assert (slow.returncode, waiting.returncode) == (0, 0), outputs
    assert enabled(frig, guid) and len(successful_sets(frig)) == 1
    journal = check_journal(frig, events)
    chain_per_tenant(journal)
    assert tenant_moves(journal) == [("waiting", "settling"), ("settling", "enabled")]
    # B ran after A's commit: it saw the enabled tenant and counted one regression cycle.
    assert frig.status()["contoso"]["state"] == "enabled"
    assert [d["verdict"] for d in frig.status()["contoso"]["domains"]] == ["direct"]


def test_a_run_that_cannot_wait_names_the_holder_and_changes_nothing(frig: FaultRig) -> None:
    contoso(frig)
    frig.sandbox.inject(Fault(delay=3.0, cmdlet=GET))
    holder = popen_once(frig)
    eventually(lambda: pending_faults(frig.sandbox) == 0, what="the holder's slow read")

    run = frig.mxwatch("--once", "--lock-wait", "0.5")
    holder.communicate(timeout=60)

    assert run.code == 1
    assert f"is in use by pid {holder.pid} (mxwatch --once) since " in run.stderr
    assert "waited 0.5s" in run.stderr
    assert run.stdout == ""  # no cycle ran


def test_two_once_runs_and_a_daemon_together_keep_one_chain(frig: FaultRig) -> None:
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    guid = contoso(frig)
    frig.knot.add_zone("fabrikam.com", mx=M365_MX, ttl=60)
    frig.sandbox.add_tenant(TENANT_B, accepted_domains=["fabrikam.com"])
    frig.sandbox.register_app(TENANT_B, CLIENT_ID, secret=SECRET)
    guid_b = frig.sandbox.add_connector(TENANT_B, CONNECTOR)
    frig.tenants.append(Tenant("fabrikam", TENANT_B, ["fabrikam.com"]))
    for _ in range(4):  # slow reads make the three overlap
        frig.sandbox.inject(Fault(delay=0.5, cmdlet=GET))
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        runs = [popen_once(frig, "--lock-wait", "60") for _ in range(2)]
        frig.knot.set_mx("fabrikam.com", FILTER_MX)
        outputs = [p.communicate(timeout=90) for p in runs]
        eventually(lambda: enabled(frig, guid) and enabled(frig, guid_b, TENANT_B), what="both")
        daemon.wait_for("cycle_finished", count=2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        events = [*daemon.events, *(e for out, _ in outputs for e in events_of(out))]

    assert all(p.returncode in (0, 1) for p in runs), outputs
    journal = check_journal(frig, events)
    chain_per_tenant(journal)
    for tenant in ("contoso", "fabrikam"):
        assert [to for _, to in tenant_moves(journal, tenant)].count("enabled") == 1
    assert len(successful_sets(frig)) == 2  # one write per tenant, whoever made it


# --- 3. names spelled two ways --------------------------------------------------------------


def test_an_idn_is_watched_under_its_idna_2008_name(frig: FaultRig) -> None:
    frig.knot.add_zone("xn--strae-oqa.de", mx=M365_MX)  # straße.de: still on Microsoft 365
    frig.knot.add_zone("strasse.de", mx=FILTER_MX)  # what IDNA 2003 would have watched
    frig.sandbox.set_accepted_domains(TENANT_ID, ["xn--strae-oqa.de"])
    guid = frig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    frig.tenants.append(Tenant("contoso", TENANT_ID, ["straße.de"]))

    runs = [frig.once() for _ in range(3)]

    assert [r.code for r in runs] == [0, 0, 0] and not enabled(frig, guid)
    domains = {d["domain"]: d["verdict"] for d in frig.status()["contoso"]["domains"]}
    assert domains == {"xn--strae-oqa.de": "direct"}


# --- 5. confirmations per domain --------------------------------------------------------------


def test_a_domain_added_to_a_settling_tenant_earns_its_own_confirmations(frig: FaultRig) -> None:
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    guid = contoso(frig)
    frig.once()
    assert frig.status()["contoso"]["state"] == "settling"

    frig.knot.add_zone("contoso.net", mx=FILTER_MX, ttl=60)
    frig.tenants[0] = Tenant("contoso", TENANT_ID, ["contoso.com", "contoso.net"])
    second = frig.once()
    assert not enabled(frig, guid), "contoso.net was observed once"
    assert "contoso.net filtered on 1 of 2 observations" in frig.status()["contoso"]["waiting_for"]

    third = frig.once()
    assert enabled(frig, guid), (second.stdout, third.stdout)


# --- 6. a gap in observation -------------------------------------------------------------------


def test_a_gap_in_observation_restarts_the_streak(frig: FaultRig) -> None:
    # An interval of 4 s allows 6 s between two observations of one streak.
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    frig.overrides[("daemon", "interval")] = "4s"
    frig.overrides[("daemon", "jitter")] = "0s"
    guid = contoso(frig)
    frig.once()
    assert frig.status()["contoso"]["state"] == "settling"

    # Stopped: the MX goes back to Microsoft 365 and returns while nobody looks.
    frig.knot.set_mx("contoso.com", M365_MX)
    frig.knot.set_mx("contoso.com", FILTER_MX)
    time.sleep(7)
    back = frig.once()

    assert not enabled(frig, guid)
    (restart,) = back.named("domain_streak_restarted")
    assert (
        restart["domain"] == "contoso.com" and "more than the allowed gap of 6s" in restart["why"]
    )
    assert "contoso.com filtered on 1 of 2" in frig.status()["contoso"]["waiting_for"]
    frig.once()
    assert enabled(frig, guid)


# --- 7. the old TTL ----------------------------------------------------------------------------


def test_the_old_ttl_is_the_longest_of_every_not_filtered_answer(
    frig: FaultRig, knot_factory: KnotFactory
) -> None:
    frig.policy = {
        "confirmations": 1,
        "settle": "auto",
        "min_settle": "0s",
        "default_old_ttl": "0s",
    }
    other = knot_factory()
    frig.knot.add_zone("contoso.com")
    other.add_zone("contoso.com")
    frig.knot.set_mx("contoso.com", MIXED_MX, ttl=86400)  # one resolver: mixed, for a day
    other.set_mx("contoso.com", M365_MX, ttl=300)  # the other: direct, for five minutes
    frig.resolvers = [f"127.0.0.1:{frig.knot.port}", f"127.0.0.1:{other.port}"]
    frig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com"])
    guid = frig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    assert frig.once().named("domain_verdict_changed")[0]["to"] == "direct"

    for server in (frig.knot, other):
        server.set_mx("contoso.com", FILTER_MX)
    frig.once()

    status = frig.status()["contoso"]
    (domain,) = status["domains"]
    wait = _seconds(status["eligible_at"]) - _seconds(domain["filtered_since"])
    assert wait == 86400 and "86400s" in status["eligible_reason"]
    assert not enabled(frig, guid)


def test_a_ttl_seen_only_through_a_resolver_counts_as_at_least_default_old_ttl(
    frig: FaultRig,
) -> None:
    frig.policy = {
        "confirmations": 1,
        "settle": "auto",
        "min_settle": "0s",
        "default_old_ttl": "1h",
    }
    frig.knot.add_zone("contoso.com")
    frig.knot.set_mx("contoso.com", M365_MX, ttl=5)  # what a cache had left: 5 s
    frig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com"])
    guid = frig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    frig.once()
    frig.knot.set_mx("contoso.com", FILTER_MX)
    frig.once()
    time.sleep(6)
    frig.once()

    status = frig.status()["contoso"]
    (domain,) = status["domains"]
    assert _seconds(status["eligible_at"]) - _seconds(domain["filtered_since"]) == 3600
    assert "a resolver's TTL for the old MX" in status["eligible_reason"]
    assert not enabled(frig, guid)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- 8. an enabled connector that fails the audit ----------------------------------------------


def test_an_enabled_connector_failing_the_audit_is_blocked_and_never_written(
    frig: FaultRig,
) -> None:
    frig.policy = {
        "confirmations": 1,
        "settle": "0s",
        "min_settle": "0s",
        "on_regression": "disable",
    }
    frig.knot.add_zone("contoso.com", mx=M365_MX)
    frig.sandbox.set_accepted_domains(TENANT_ID, ["contoso.com"])
    guid = frig.sandbox.add_on_premises_connector(TENANT_ID, CONNECTOR)
    frig.tenants.append(Tenant("contoso", TENANT_ID, ["contoso.com"]))

    runs = [frig.once() for _ in range(3)]

    assert [r.code for r in runs] == [1, 1, 1]
    assert frig.set_calls() == [] and enabled(frig, guid)
    status = frig.status()["contoso"]
    assert status["state"] == "blocked"
    assert "ConnectorType is 'OnPremises'" in status["reason"]
    assert "inbound mail may be bouncing" in status["reason"]
    assert not any(r.named("connector_disabled") for r in runs)


# --- 9. the journal says who turned it on ------------------------------------------------------


def test_a_failed_read_back_after_a_set_is_still_recorded_as_mxwatchs_enable(
    frig: FaultRig,
) -> None:
    frig.policy = {"confirmations": 1, "settle": "0s", "min_settle": "0s"}
    frig.overrides[("exchange", "timeout")] = "3s"
    guid = contoso(frig)
    frig.sandbox.inject(Fault(cmdlet=GET))  # the audit read passes ...
    frig.sandbox.inject(Fault(status=503, retry_after="0", cmdlet=GET, times=None))  # read-back
    first = frig.once()
    assert enabled(frig, guid) and len(successful_sets(frig)) == 1
    assert first.named("exchange_error") and not first.named("connector_enabled")
    assert frig.status()["contoso"]["state"] == "settling"

    frig.sandbox.clear_faults()
    second = frig.once()

    (confirmed,) = second.named("connector_enabled")
    assert confirmed["recovered"] is True and confirmed["guid"] == guid
    journal = check_journal(frig, [*first.events, *second.events])
    (into,) = [e for e in journal if e["domain"] is None and e["to"] == "enabled"]
    assert into["reason"].startswith("enabled by mxwatch at ")
    assert len(successful_sets(frig)) == 1  # confirmed by reading, not by writing again


# --- what mxwatch cannot see -------------------------------------------------------------------


def test_an_accepted_domain_matching_subdomains_is_an_audit_warning(frig: FaultRig) -> None:
    frig.policy = {"confirmations": 1, "settle": "0s", "min_settle": "0s"}
    guid = contoso(frig)
    frig.sandbox.add_accepted_domain(TENANT_ID, "contoso.com", match_subdomains=True)

    run = frig.once()

    warnings = [e["warning"] for e in run.named("audit_warning")]
    assert any("contoso.com has MatchSubDomains" in w for w in warnings), warnings
    assert enabled(frig, guid)  # a warning: mxwatch says what it cannot see, and goes on


def test_a_daemon_waiting_for_the_state_says_so_and_goes_on(frig: FaultRig) -> None:
    contoso(frig)
    frig.sandbox.inject(Fault(delay=4.0, cmdlet=GET))
    holder = popen_once(frig)
    eventually(lambda: pending_faults(frig.sandbox) == 0, what="the holder's slow read")
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    with svc.start() as daemon:
        (busy,) = daemon.wait_for("state_busy")[:1]
        assert f"pid {holder.pid}" in busy["detail"]
        holder.communicate(timeout=60)
        daemon.wait_for("cycle_finished")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert holder.returncode == 0


# --- 10. one hostile zone ------------------------------------------------------------------------


def test_one_hostile_zone_delays_only_its_own_tenant(frig: FaultRig, auth_lab: AuthLab) -> None:
    silent = [f"127.0.4.{i}" for i in range(1, 11)]
    auth_lab.add_delegated_zone(
        "hostile.test", [(f"ns{i:03d}", silent[i % 10]) for i in range(100)], mx=[(10, FILTER)]
    )
    auth_lab.add_zone("quick.test", mx=[(10, FILTER)])
    frig.resolvers = [f"127.0.0.1:{auth_lab.resolver.port}"]
    frig.overrides[("dns", "authoritative")] = True
    frig.overrides[("dns", "authoritative_port")] = auth_lab.port
    frig.overrides[("dns", "timeout")] = "4s"  # each silent server: two tries of 2 s
    frig.policy = {"confirmations": 1, "settle": "0s", "min_settle": "0s"}
    frig.sandbox.set_accepted_domains(TENANT_ID, ["quick.test"])
    quick = frig.sandbox.add_connector(TENANT_ID, CONNECTOR)
    frig.sandbox.add_tenant(TENANT_B, accepted_domains=["hostile.test"])
    frig.sandbox.register_app(TENANT_B, CLIENT_ID, secret=SECRET)
    frig.sandbox.add_connector(TENANT_B, CONNECTOR)
    frig.tenants += [
        Tenant("quick", TENANT_ID, ["quick.test"]),
        Tenant("slow", TENANT_B, ["hostile.test"]),
    ]

    with silent_servers(silent, auth_lab.port) as servers:
        run = frig.once()
        finished = time.monotonic()
        received = sum(server.count() for server in servers.values())

    assert enabled(frig, quick)
    (write,) = [r for r in frig.set_calls() if r.tenant == TENANT_ID]
    # The quick tenant was decided and written while the hostile zone's lookups went on.
    assert write.at < finished - 2, (write.at, finished)
    (hostile,) = [e for e in run.named("dns_inconclusive") if e["domain"] == "hostile.test"]
    assert "name servers; mxwatch asks at most 16" in hostile["reason"]
    assert received <= len(silent) * 2  # one source per address, two tries each


# --- a cycle longer than the interval ------------------------------------------------------------


def test_a_daemon_whose_cycle_outlasts_the_interval_still_completes_a_streak(
    frig: FaultRig,
) -> None:
    """The scheduler skips the ticks that fall inside a running cycle, so cycles come a whole
    interval late; that is not a gap in observation, and must not restart every streak."""
    frig.policy = {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    frig.overrides[("dns", "timeout")] = "8s"
    guid = contoso(frig)
    with BadDns(upstream=("127.0.0.1", frig.knot.port)) as slow:
        slow.delay = 2.5  # every cycle takes longer than the 1 s interval
        frig.resolvers = [slow.spec]
        svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
        with svc.start() as daemon:
            daemon.wait_for("connector_enabled", timeout=40)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.stderr
    assert enabled(frig, guid)
    assert daemon.named("domain_streak_restarted") == []
    assert daemon.named("cycle_slow"), "an operator is told the interval is too short"
