"""Table tests for mxwatch.policy (DESIGN.md §3): every rule as a row."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mxwatch.model import (
    AcceptedDomains,
    Connector,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    Intent,
    TenantRecord,
    TenantState,
    Verdict,
    WriteAction,
)
from mxwatch.policy import (
    MAX_OLD_TTL,
    Decision,
    Disable,
    Enable,
    Outlook,
    Reads,
    Rules,
    after_action,
    allowed_gap,
    audit_connector,
    covered_domains,
    decide,
    eligible_at,
    may_enable,
    outlook,
    settle_for,
    update_domains,
)
from mxwatch.settings import DaemonConfig, PolicyConfig, Provider, TenantConfig
from tests.unit.policy_builders import (
    EIGHT_24S,
    GAP,
    GUID,
    IDENTITY,
    PROVIDER,
    PROVIDER_21,
    PROVIDER_NO_IPS,
    T0,
    TENANT,
    D,
    F,
    M,
    N,
    U,
    accepted,
    ambiguous,
    cfg,
    connector,
    dobs,
    domains,
    drec,
    failure,
    found,
    minutes,
    missing,
    moves,
    obs,
    reads,
    rules,
    tenant,
)

WAITING = TenantState.WAITING
SETTLING = TenantState.SETTLING
ENABLED = TenantState.ENABLED
REGRESSED = TenantState.REGRESSED
BLOCKED = TenantState.BLOCKED
HOUR = timedelta(hours=1)
EARLIER = T0 - minutes(5)

# ---------------------------------------------------------------------------------------------
# the allowed gap


def test_allowed_gap_is_one_and_a_half_intervals_plus_jitter_plus_the_last_cycle() -> None:
    daemon = DaemonConfig(interval=minutes(5), jitter=timedelta(seconds=30))
    assert allowed_gap(daemon) == minutes(8)
    # A 7-minute cycle pushes the next one to the tick after it: 10 minutes after its start.
    assert allowed_gap(daemon, minutes(7)) == minutes(15)


# ---------------------------------------------------------------------------------------------
# covered_domains


def tenant_config(domains: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> TenantConfig:
    return TenantConfig(
        name=TENANT,
        tenant_id="11111111-1111-1111-1111-111111111111",
        connector=IDENTITY,
        provider=PROVIDER,
        domains=domains,
        client_id="22222222-2222-2222-2222-222222222222",
        credential=None,  # type: ignore[arg-type]  # not used by the policy
        ignore_domains=ignore,
    )


@pytest.mark.parametrize(
    ("domains_", "ignore", "accepted_", "expected"),
    [
        pytest.param((), (), ("b.com", "a.com"), ("a.com", "b.com"), id="omitted-accepted"),
        pytest.param(("x.com",), (), ("x.com", "y.com"), ("x.com", "y.com"), id="given-plus-rest"),
        pytest.param(("x.com",), (), (), ("x.com",), id="given-nothing-read-yet"),
        pytest.param((), ("b.com",), ("a.com", "b.com"), ("a.com",), id="ignored-accepted-domain"),
        pytest.param(
            (),
            (),
            ("a.com", "contoso.onmicrosoft.com", "contoso.mail.onmicrosoft.com"),
            ("a.com",),
            id="onmicrosoft-never-covered",
        ),
        pytest.param(("x.com",), (), ("x.com",), ("x.com",), id="no-duplicates"),
    ],
)
def test_covered_domains(
    domains_: tuple[str, ...],
    ignore: tuple[str, ...],
    accepted_: tuple[str, ...],
    expected: tuple[str, ...],
) -> None:
    assert covered_domains(tenant_config(domains_, ignore), accepted_) == expected


# ---------------------------------------------------------------------------------------------
# update_domains: one streak per domain


@dataclass(frozen=True)
class DomainCase:
    before: DomainRecord | None
    observed: Verdict
    since: datetime | None
    count: int
    misses: int = 0
    old_ttl: int | None = None
    old_ttl_cached: int | None = None
    transition: tuple[str | None, str] | None = None
    restart: str = ""  # expected in the restart note
    authoritative: bool = False
    ttl: int | None = 300


STREAK = drec("contoso.com", F, since=T0 - HOUR, count=3, at=EARLIER)

DOMAIN_CASES = {
    "first-sight-filtered-starts-a-streak": DomainCase(
        None, F, T0, 1, transition=(None, "filtered")
    ),
    "first-sight-direct-resolver-ttl-is-second-hand": DomainCase(
        None, D, None, 0, misses=1, old_ttl_cached=300, transition=(None, "direct")
    ),
    "first-sight-direct-authoritative-ttl-is-first-hand": DomainCase(
        None, D, None, 0, misses=1, old_ttl=300, transition=(None, "direct"), authoritative=True
    ),
    "no-ttl-counts-as-second-hand-zero": DomainCase(
        None, N, None, 0, misses=1, old_ttl_cached=0, transition=(None, "no_mx"), ttl=None
    ),
    "first-sight-unknown": DomainCase(None, U, None, 0, transition=(None, "unknown")),
    "filtered-again-within-the-gap-counts": DomainCase(STREAK, F, T0 - HOUR, 4),
    "filtered-after-a-gap-restarts": DomainCase(
        replace(STREAK, filtered_at=T0 - GAP - timedelta(seconds=1)),
        F,
        T0,
        1,
        restart="more than the allowed gap",
    ),
    "filtered-exactly-at-the-gap-counts": DomainCase(
        replace(STREAK, filtered_at=T0 - GAP), F, T0 - HOUR, 4
    ),
    "clock-before-the-last-observation-restarts": DomainCase(
        replace(STREAK, filtered_at=T0 + minutes(1)), F, T0, 1, restart="clock"
    ),
    "unknown-keeps-the-streak": DomainCase(
        STREAK, U, T0 - HOUR, 3, transition=("filtered", "unknown")
    ),
    "unknown-then-filtered-after-a-gap-restarts": DomainCase(
        replace(STREAK, verdict=U, filtered_at=T0 - timedelta(days=3)),
        F,
        T0,
        1,
        transition=("unknown", "filtered"),
        restart="more than the allowed gap",
    ),
    "direct-ends-the-streak-and-counts-a-miss": DomainCase(
        STREAK, D, None, 0, misses=1, old_ttl_cached=300, transition=("filtered", "direct")
    ),
    "misses-add-up": DomainCase(
        drec("contoso.com", M, misses=2, old_ttl_cached=900),
        D,
        None,
        0,
        3,
        None,
        900,
        transition=("mixed", "direct"),
    ),
    "old-ttls-keep-the-largest": DomainCase(
        drec("contoso.com", D, misses=1, old_ttl=7200, old_ttl_cached=60),
        M,
        None,
        0,
        misses=2,
        old_ttl=7200,
        old_ttl_cached=300,
        transition=("direct", "mixed"),
    ),
    "filtered-resets-misses-keeps-old-ttls": DomainCase(
        drec("contoso.com", D, misses=4, old_ttl=3600),
        F,
        T0,
        1,
        old_ttl=3600,
        transition=("direct", "filtered"),
    ),
    "unknown-keeps-misses": DomainCase(
        drec("contoso.com", D, misses=1, old_ttl=3600),
        U,
        None,
        0,
        misses=1,
        old_ttl=3600,
        transition=("direct", "unknown"),
    ),
}


@pytest.mark.parametrize("case", DOMAIN_CASES.values(), ids=DOMAIN_CASES.keys())
def test_update_domains(case: DomainCase) -> None:
    known = {} if case.before is None else {"contoso.com": case.before}
    observed = dobs(case.observed, ttl=case.ttl, authoritative=case.authoritative)

    update = update_domains(TENANT, known, {"contoso.com": observed}, rules(), T0)

    (record,) = update.records
    assert record.verdict is case.observed
    assert record.checked_at == T0
    assert record.filtered_since == case.since
    assert record.filtered_count == case.count
    assert record.filtered_at == (
        T0 if case.observed is F else None if case.count == 0 else EARLIER
    )
    assert record.misses == case.misses
    assert (record.old_ttl, record.old_ttl_cached) == (case.old_ttl, case.old_ttl_cached)
    if case.restart:
        ((domain, why),) = update.restarts
        assert domain == "contoso.com" and case.restart in why
    else:
        assert update.restarts == ()
    if case.transition is None:
        assert update.transitions == ()
    else:
        (t,) = update.transitions
        assert (t.from_state, t.to_state) == case.transition
        assert (t.at, t.tenant, t.domain) == (T0, TENANT, "contoso.com")
        assert t.evidence["verdict"] == case.observed.value


def test_the_old_ttl_is_the_largest_of_every_not_filtered_answer() -> None:
    # mixed with TTL 86400 beside direct with TTL 300: a resolver may hold the mixed set a day.
    sources = (
        obs(M, source="ns1", ttl=86400, authoritative=True),
        obs(D, source="ns2", ttl=300, authoritative=True),
        obs(D, source="resolver", ttl=5),
        obs(F, source="ns3", ttl=999999, authoritative=True),
    )
    observed = replace(dobs(D), sources=sources)

    (record,) = update_domains(TENANT, {}, {"contoso.com": observed}, rules(), T0).records

    assert (record.old_ttl, record.old_ttl_cached) == (86400, 5)


def test_update_domains_one_transition_per_changed_domain() -> None:
    known = {
        "a.example": drec("a.example", F, at=EARLIER),
        "b.example": drec("b.example", D, old_ttl=600, at=EARLIER),
    }
    observed = {
        "a.example": dobs(F, domain="a.example"),
        "b.example": dobs(F, domain="b.example"),
        "c.example": dobs(U, domain="c.example"),
    }
    update = update_domains(TENANT, known, observed, rules(), T0)

    assert [r.domain for r in update.records] == ["a.example", "b.example", "c.example"]
    assert [(t.domain, t.from_state, t.to_state) for t in update.transitions] == [
        ("b.example", "direct", "filtered"),
        ("c.example", None, "unknown"),
    ]
    source = update.transitions[0].evidence["sources"][0]
    assert set(source) == {"source", "verdict", "mx", "ttl", "authoritative", "reason"}


# ---------------------------------------------------------------------------------------------
# outlook


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        pytest.param((F,), Outlook.ALL_FILTERED, id="one-filtered"),
        pytest.param((F, F, F), Outlook.ALL_FILTERED, id="all-filtered"),
        pytest.param((F, D), Outlook.NOT_CUT_OVER, id="one-direct"),
        pytest.param((M, F), Outlook.NOT_CUT_OVER, id="one-mixed"),
        pytest.param((F, N), Outlook.NOT_CUT_OVER, id="one-no_mx"),
        pytest.param((U, D), Outlook.NOT_CUT_OVER, id="direct-beats-unknown"),
        pytest.param((F, U), Outlook.INCONCLUSIVE, id="unknown-none-contradicting"),
        pytest.param((F, None), Outlook.INCONCLUSIVE, id="unobserved-domain"),
        pytest.param((), Outlook.INCONCLUSIVE, id="no-domains"),
    ],
)
def test_outlook(verdicts: tuple[Verdict | None, ...], expected: Outlook) -> None:
    assert outlook(domains(*verdicts)) is expected


# ---------------------------------------------------------------------------------------------
# settle_for / eligible_at


@pytest.mark.parametrize(
    ("policy", "old_ttl", "cached", "expected", "why"),
    [
        pytest.param(
            cfg(settle=minutes(30)), 86400, None, minutes(30), "settle", id="duration-wins"
        ),
        pytest.param(cfg(settle=minutes(1)), None, None, minutes(1), "settle", id="duration-low"),
        pytest.param(cfg(), 3600, None, HOUR, "old MX TTL 3600s", id="first-hand-above-min"),
        pytest.param(cfg(), 60, None, minutes(10), "min_settle", id="min-above-first-hand"),
        pytest.param(
            cfg(default_old_ttl=2 * HOUR), None, None, 2 * HOUR, "no old MX", id="none-seen"
        ),
        pytest.param(
            cfg(default_old_ttl=minutes(5)),
            None,
            None,
            minutes(10),
            "min_settle",
            id="none-seen-min-above-default",
        ),
        pytest.param(
            cfg(default_old_ttl=HOUR),
            None,
            300,
            HOUR,
            "a resolver's TTL for the old MX",
            id="second-hand-raised-to-default",
        ),
        pytest.param(
            cfg(default_old_ttl=HOUR),
            None,
            86400,
            timedelta(days=1),
            "at least, seen through a resolver",
            id="second-hand-above-default",
        ),
        pytest.param(
            cfg(default_old_ttl=HOUR),
            7200,
            300,
            2 * HOUR,
            "old MX TTL 7200s",
            id="largest-of-first-and-second-hand",
        ),
        pytest.param(
            cfg(), 2**31 - 1, None, MAX_OLD_TTL, "capped", id="absurd-ttl-capped-at-a-week"
        ),
    ],
)
def test_settle_for(
    policy: PolicyConfig, old_ttl: int | None, cached: int | None, expected: timedelta, why: str
) -> None:
    record = drec("contoso.com", F, old_ttl=old_ttl, old_ttl_cached=cached)
    wait, reason = settle_for(record, policy)
    assert wait == expected
    assert why in reason


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([drec("a.example", F, since=T0, old_ttl=3600)], T0 + HOUR, id="one"),
        pytest.param(
            [
                drec("a.example", F, since=T0, old_ttl=60),  # T0 + 10m
                drec("b.example", F, since=T0 - minutes(30), old_ttl=3600),  # T0 + 30m
                drec("c.example", F, since=T0 + minutes(5)),  # default 1h: T0 + 65m
            ],
            T0 + minutes(65),
            id="latest-over-domains",
        ),
        pytest.param(
            [drec("a.example", F, since=T0), drec("b.example", D)], None, id="one-not-filtered"
        ),
        pytest.param([], None, id="no-domains"),
    ],
)
def test_eligible_at(records: list[DomainRecord], expected: datetime | None) -> None:
    at, why = eligible_at(records, cfg())
    assert at == expected
    assert why


def test_eligible_at_names_the_deciding_domain() -> None:
    records = [
        drec("a.example", F, since=T0, old_ttl=60),
        drec("b.example", F, since=T0, old_ttl=7200),
    ]
    _, why = eligible_at(records, cfg())
    assert "b.example" in why
    assert "7200" in why


# ---------------------------------------------------------------------------------------------
# may_enable: the gate, one condition per row

READY = domains(F, F)  # filtered five times over two hours, observed now: eligible


@pytest.mark.parametrize(
    ("covered", "policy", "flags", "waits", "unread"),
    [
        pytest.param(READY, {}, {}, "", "", id="every-condition-holds"),
        pytest.param(
            (READY[0], drec("contoso.net", D)), {}, {}, "contoso.net is direct", "", id="direct"
        ),
        pytest.param(
            (READY[0], drec("contoso.net", U)), {}, {}, "contoso.net is unknown", "", id="unknown"
        ),
        pytest.param(
            (READY[0], DomainRecord("contoso.net")),
            {},
            {},
            "contoso.net is not yet observed",
            "",
            id="never-observed",
        ),
        pytest.param(
            (READY[0], drec("contoso.net", F, at=EARLIER)),
            {},
            {},
            "contoso.net is filtered this cycle",  # its filtered observation is not this one
            "",
            id="not-observed-this-cycle",
        ),
        pytest.param(
            (READY[0], drec("contoso.net", F, count=1)),
            {"confirmations": 2},
            {},
            "contoso.net filtered on 1 of 2 observations",
            "",
            id="confirmations-per-domain",
        ),
        pytest.param(
            (READY[0], drec("contoso.net", F, since=T0 - minutes(9))),
            {},
            {},
            "contoso.net settling until",
            "",
            id="settle-per-domain",
        ),
        pytest.param(
            (READY[0], drec("contoso.net", F, since=T0 - minutes(59), old_ttl=3600)),
            {},
            {},
            "old MX TTL 3600s",
            "",
            id="old-ttl-not-yet-out",
        ),
        pytest.param((), {}, {}, "no covered domains", "", id="no-covered-domains"),
        pytest.param(
            READY, {}, {"exclusive": False}, "does not hold the state", "", id="not-exclusive"
        ),
        pytest.param(
            READY, {}, {"covered_read": False}, "", "accepted domains", id="covered-set-unread"
        ),
        pytest.param(READY, {}, {"audit_passed": False}, "", "not read and audited", id="no-audit"),
    ],
)
def test_may_enable(
    covered: tuple[DomainRecord, ...],
    policy: dict[str, object],
    flags: dict[str, bool],
    waits: str,
    unread: str,
) -> None:
    given = {"covered_read": True, "audit_passed": True, "exclusive": True, **flags}
    gate = may_enable(covered, rules(**policy), T0, **given)

    assert gate.open is (not waits and not unread)
    assert (waits in "; ".join(gate.waits)) if waits else gate.waits == ()
    assert (unread in "; ".join(gate.unread)) if unread else gate.unread == ()
    assert gate.needs_read is (not waits and bool(unread))


def test_gate_opens_exactly_at_streak_start_plus_settle() -> None:
    covered = (drec("contoso.com", F, since=T0 - minutes(10), old_ttl=60),)
    flags = {"covered_read": True, "audit_passed": True, "exclusive": True}
    assert may_enable(covered, rules(), T0, **flags).open
    early = replace(covered[0], filtered_at=T0 - timedelta(seconds=1))
    assert not may_enable((early,), rules(), T0 - timedelta(seconds=1), **flags).open


# ---------------------------------------------------------------------------------------------
# audit_connector


@pytest.mark.parametrize(
    ("conn", "provider", "failing"),
    [
        pytest.param(connector(), PROVIDER, None, id="good-connector"),
        pytest.param(
            connector(connector_type="partner"), PROVIDER, None, id="type-case-insensitive"
        ),
        pytest.param(
            connector(connector_type="OnPremises"), PROVIDER, "ConnectorType", id="type-onpremises"
        ),
        pytest.param(connector(sender_domains=("*",)), PROVIDER, None, id="sender-domains-bare"),
        pytest.param(
            connector(sender_domains=("SMTP:*;1",)), PROVIDER, None, id="sender-domains-upper"
        ),
        pytest.param(
            connector(sender_domains=("smtp:contoso.com;1",)),
            PROVIDER,
            "SenderDomains",
            id="sender-domains-one-domain",
        ),
        pytest.param(
            connector(sender_domains=("smtp:*.contoso.com;1",)),
            PROVIDER,
            "SenderDomains",
            id="sender-domains-subdomain-wildcard",
        ),
        pytest.param(
            connector(sender_domains=()), PROVIDER, "SenderDomains", id="no-sender-domains"
        ),
        pytest.param(
            connector(sender_domains=("smtp:contoso.com;1", "smtp:*;1")),
            PROVIDER,
            None,
            id="sender-domains-star-among-others",
        ),
        pytest.param(
            connector(restrict_domains_to_ip_addresses=False),
            PROVIDER,
            "RestrictDomainsTo",
            id="not-restricted",
        ),
        pytest.param(
            connector(restrict_domains_to_ip_addresses=False, restrict_domains_to_certificate=True),
            PROVIDER,
            None,
            id="restricted-by-certificate",
        ),
        pytest.param(
            connector(sender_ip_addresses=()),
            PROVIDER_NO_IPS,
            "SenderIPAddresses is empty",
            id="no-sender-ips",
        ),
        pytest.param(
            connector(sender_ip_addresses=("192.0.2.0/24",)),
            PROVIDER_NO_IPS,
            None,
            id="provider-without-ranges-any-ips",
        ),
        pytest.param(
            connector(sender_ip_addresses=("192.0.2.0/24",)),
            PROVIDER,
            "198.51.100.0/24",
            id="provider-range-not-covered",
        ),
        pytest.param(
            connector(sender_ip_addresses=("198.51.100.0/25", "198.51.100.128/25")),
            PROVIDER,
            None,
            id="provider-24-covered-by-two-25s",
        ),
        pytest.param(
            connector(sender_ip_addresses=(*EIGHT_24S, "198.51.100.0/24")),
            PROVIDER_21,
            None,
            id="provider-21-covered-by-eight-24s",
        ),
        pytest.param(
            connector(sender_ip_addresses=(*EIGHT_24S[:3], *EIGHT_24S[4:], "198.51.100.0/24")),
            PROVIDER_21,
            "203.0.112.0/21",
            id="provider-21-one-24-missing",
        ),
        pytest.param(
            connector(sender_ip_addresses=(*EIGHT_24S, "198.51.101.0/24")),
            PROVIDER_21,
            "198.51.100.7/32",
            id="provider-single-ip-not-covered",
        ),
        pytest.param(
            connector(sender_ip_addresses=("2001:db8::/32", "198.51.100.0/24", "bogus")),
            PROVIDER,
            None,
            id="ipv6-and-odd-entries-ignored",
        ),
        pytest.param(
            connector(sender_ip_addresses=("2001:db8::/32",)),
            PROVIDER,
            "198.51.100.0/24",
            id="only-ipv6-covers-nothing",
        ),
    ],
)
def test_audit_connector(conn: Connector, provider: Provider, failing: str | None) -> None:
    audit = audit_connector(conn, provider)
    if failing is None:
        assert audit.passed, audit.failures
        assert audit.failures == ()
    else:
        assert not audit.passed
        assert len(audit.failures) == 1, audit.failures
        assert failing in audit.failures[0]


def test_audit_require_tls_false_is_a_warning_only() -> None:
    audit = audit_connector(connector(require_tls=False), PROVIDER)
    assert audit.passed
    assert audit.warnings == ("RequireTls is false",)
    assert audit_connector(connector(), PROVIDER).warnings == ()


def test_audit_reports_enhanced_filtering_info() -> None:
    conn = connector(ef_skip_last_ip=True, ef_skip_ips=("198.51.100.0/24",))
    (info,) = audit_connector(conn, PROVIDER).info
    assert "EFSkipLastIP=True" in info
    assert "198.51.100.0/24" in info


def test_audit_lists_every_failed_check() -> None:
    bad = connector(
        connector_type="OnPremises",
        sender_domains=("smtp:contoso.com;1",),
        restrict_domains_to_ip_addresses=False,
        sender_ip_addresses=(),
    )
    failures = audit_connector(bad, PROVIDER).failures
    assert len(failures) == 5
    for word in ("ConnectorType", "SenderDomains", "RestrictDomainsTo", "empty", "198.51.100"):
        assert any(word in f for f in failures), word


# ---------------------------------------------------------------------------------------------
# decide without reads: does this cycle need the connector?


def needs(record: TenantRecord, covered: tuple[DomainRecord, ...], **kw: object) -> str:
    policy = kw.pop("rules", rules())
    assert isinstance(policy, Rules)
    decision = decide(TENANT, record, covered, provider=PROVIDER, rules=policy, now=T0, **kw)  # type: ignore[arg-type]
    if decision.needs_connector:
        assert decision.transitions == () and decision.actions == ()
        assert decision.record == record  # nothing decided before the read
    return decision.needs_connector


@pytest.mark.parametrize(
    ("record", "covered", "policy", "expected"),
    [
        pytest.param(
            tenant(WAITING, connector_checked_at=None), domains(D), {}, "first sight", id="first"
        ),
        pytest.param(
            tenant(ENABLED, connector_checked_at=None), READY, {}, "first sight", id="first-any"
        ),
        pytest.param(tenant(BLOCKED), domains(D), {}, "retrying a blocked", id="blocked"),
        pytest.param(tenant(SETTLING), READY, {}, "audit before enabling", id="gate-ready"),
        pytest.param(
            tenant(WAITING), READY, {}, "audit before enabling", id="gate-ready-from-waiting"
        ),
        pytest.param(
            tenant(SETTLING),
            (READY[0], drec("contoso.net", F, count=1)),
            {"confirmations": 2},
            "",
            id="not-confirmed",
        ),
        pytest.param(
            tenant(SETTLING),
            (READY[0], drec("contoso.net", F, since=T0 - minutes(1))),
            {},
            "",
            id="not-settled",
        ),
        pytest.param(tenant(SETTLING), domains(F, U), {}, "", id="settling-inconclusive"),
        pytest.param(
            tenant(ENABLED),
            (READY[0], drec("contoso.net", D, misses=2)),
            {"on_regression": "disable"},
            "before disabling",
            id="disable-due-enabled",
        ),
        pytest.param(
            tenant(ENABLED),
            (READY[0], drec("contoso.net", D, misses=1)),
            {"on_regression": "disable"},
            "",
            id="regression-not-confirmed",
        ),
        pytest.param(
            tenant(REGRESSED),
            domains(F, D),
            {"on_regression": "disable"},
            "before disabling",
            id="disable-due-regressed",
        ),
        pytest.param(tenant(REGRESSED), domains(F, D), {}, "", id="regressed-alert-no-read"),
        pytest.param(tenant(ENABLED), READY, {}, "", id="steady-enabled"),
        pytest.param(tenant(WAITING), domains(D, D), {}, "", id="steady-waiting"),
        pytest.param(
            tenant(WAITING, connector_checked_at=T0 - timedelta(hours=6)),
            domains(D),
            {"recheck": timedelta(hours=6)},
            "periodic recheck",
            id="recheck-after-full-interval",
        ),
        pytest.param(
            tenant(ENABLED, connector_checked_at=T0 - timedelta(hours=4, minutes=29)),
            READY,
            {"recheck": timedelta(hours=6)},
            "",
            id="no-recheck-before-75-percent",
        ),
    ],
)
def test_needs_connector(
    record: TenantRecord,
    covered: tuple[DomainRecord, ...],
    policy: dict[str, object],
    expected: str,
) -> None:
    got = needs(record, covered, rules=rules(**policy))
    assert (expected in got) if expected else got == ""


def test_a_pending_intent_is_confirmed_by_a_read() -> None:
    intent = Intent(WriteAction.ENABLE, GUID, EARLIER)
    assert "interrupted enable" in needs(tenant(SETTLING), domains(F, D), intent=intent)


def test_not_exclusive_never_even_asks_to_enable() -> None:
    assert needs(tenant(SETTLING), READY, exclusive=False) == ""


def test_recheck_is_spread_over_75_to_100_percent_of_the_interval() -> None:
    recheck = timedelta(hours=4)
    names = [f"tenant-{i}" for i in range(200)]

    def read(elapsed: timedelta) -> set[str]:
        record = tenant(WAITING, connector_checked_at=T0 - elapsed)
        return {
            name
            for name in names
            if decide(
                name,
                replace(record, name=name),
                domains(D),
                provider=PROVIDER,
                rules=rules(recheck=recheck),
                now=T0,
            ).needs_connector
        }

    assert read(recheck * 0.75 - timedelta(seconds=1)) == set()
    assert read(recheck) == set(names)
    assert 0 < len(read(recheck * 0.875)) < len(names)


# ---------------------------------------------------------------------------------------------
# decide with this cycle's reads


@dataclass(frozen=True)
class DecideCase:
    record: TenantRecord
    covered: tuple[DomainRecord, ...]
    reads: Reads | None
    state: TenantState
    moves: list[tuple[str | None, str]] = field(default_factory=list)
    actions: tuple[object, ...] = ()
    policy: dict[str, object] = field(default_factory=dict)
    reason: str = ""  # expected in the final record's reason when moved
    waiting: str = ""  # expected in waiting_for


GOOD = reads()
GOOD_ENABLED = reads(found(enabled=True))
ENABLE = (Enable(GUID),)
DISABLE = (Disable(GUID),)
DISABLING = {"on_regression": "disable"}
REGRESSION = (READY[0], drec("contoso.net", D, misses=2))

DECIDE_CASES: dict[str, DecideCase] = {
    # waiting
    "waiting-all-filtered-to-settling-and-enable": DecideCase(
        tenant(WAITING), READY, GOOD, SETTLING, [("waiting", "settling")], ENABLE
    ),
    "waiting-all-filtered-not-confirmed-to-settling": DecideCase(
        tenant(WAITING),
        (READY[0], drec("contoso.net", F, count=1)),
        None,
        SETTLING,
        [("waiting", "settling")],
        policy={"confirmations": 2},
        waiting="1 of 2",
    ),
    "waiting-one-domain-direct-stays": DecideCase(tenant(WAITING), domains(F, D), GOOD, WAITING),
    "waiting-unknown-stays": DecideCase(tenant(WAITING), domains(F, U), GOOD, WAITING),
    # settling
    "settling-not-cut-over-to-waiting": DecideCase(
        tenant(SETTLING),
        domains(F, M),
        None,
        WAITING,
        [("settling", "waiting")],
        reason="contoso.net is mixed",
    ),
    "settling-unknown-neither-confirms-nor-resets": DecideCase(
        tenant(SETTLING), domains(F, U), None, SETTLING, waiting="contoso.net is unknown"
    ),
    "settling-enable": DecideCase(tenant(SETTLING), READY, GOOD, SETTLING, [], ENABLE),
    "settling-enable-with-tls-warning": DecideCase(
        tenant(SETTLING), READY, reads(found(require_tls=False)), SETTLING, [], ENABLE
    ),
    "settling-accepted-read-failed-no-enable": DecideCase(
        tenant(SETTLING),
        READY,
        reads(accepted_domains=failure(ErrorKind.TRANSIENT)),
        SETTLING,
        waiting="accepted domains read failed",
    ),
    "settling-accepted-name-unreadable-no-enable": DecideCase(
        tenant(SETTLING),
        READY,
        reads(accepted_domains=AcceptedDomains((), unreadable=("bad\\x00name",))),
        SETTLING,
        waiting="not valid domain names",
    ),
    "settling-connector-transient-no-enable": DecideCase(
        tenant(SETTLING),
        READY,
        Reads(failure(ErrorKind.TRANSIENT)),
        SETTLING,
        waiting="connector read failed",
    ),
    "settling-audit-fails-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        reads(found(connector_type="OnPremises")),
        BLOCKED,
        [("settling", "blocked")],
        reason="ConnectorType",
    ),
    "settling-uncovered-ranges-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        reads(found(sender_ip_addresses=("192.0.2.0/24",))),
        BLOCKED,
        [("settling", "blocked")],
        reason="198.51.100.0/24",
    ),
    "settling-missing-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        reads(missing()),
        BLOCKED,
        [("settling", "blocked")],
        reason="missing",
    ),
    "settling-ambiguous-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        reads(ambiguous()),
        BLOCKED,
        [("settling", "blocked")],
        reason="ambiguous",
    ),
    "settling-credentials-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        Reads(failure(ErrorKind.CREDENTIALS)),
        BLOCKED,
        [("settling", "blocked")],
        reason="credentials: AADSTS7000215",
    ),
    "settling-permission-blocked": DecideCase(
        tenant(SETTLING),
        READY,
        Reads(failure(ErrorKind.BLOCKED)),
        BLOCKED,
        [("settling", "blocked")],
        reason="blocked: HTTP 403",
    ),
    "enabled-credentials-blocked": DecideCase(
        tenant(ENABLED),
        READY,
        Reads(failure(ErrorKind.CREDENTIALS)),
        BLOCKED,
        [("enabled", "blocked")],
    ),
    # blocked
    "blocked-found-ok-to-waiting": DecideCase(
        tenant(BLOCKED, reason="audit failed: x"),
        domains(F, D),
        GOOD,
        WAITING,
        [("blocked", "waiting")],
    ),
    "blocked-found-ok-all-filtered-to-settling-and-enable": DecideCase(
        tenant(BLOCKED, reason="audit failed: x"),
        READY,
        GOOD,
        SETTLING,
        [("blocked", "waiting"), ("waiting", "settling")],
        ENABLE,
    ),
    "blocked-transient-stays": DecideCase(
        tenant(BLOCKED), READY, Reads(failure(ErrorKind.TRANSIENT)), BLOCKED
    ),
    "blocked-still-failing-audit": DecideCase(
        tenant(BLOCKED, reason="credentials: old"),
        READY,
        reads(found(sender_domains=("smtp:contoso.com;1",))),
        BLOCKED,
        [("blocked", "blocked")],
        reason="SenderDomains",
    ),
    # found enabled: audited first, then adopted
    "waiting-found-enabled-adopted": DecideCase(
        tenant(WAITING), READY, GOOD_ENABLED, ENABLED, [("waiting", "enabled")], reason="adopted"
    ),
    "settling-found-enabled-not-cut-over-regressed": DecideCase(
        tenant(SETTLING),
        domains(F, D),
        GOOD_ENABLED,
        REGRESSED,
        [("settling", "regressed")],
        reason="adopted",
    ),
    "blocked-found-enabled-adopted": DecideCase(
        tenant(BLOCKED), READY, GOOD_ENABLED, ENABLED, [("blocked", "enabled")]
    ),
    "found-enabled-failing-the-audit-is-blocked-not-adopted": DecideCase(
        tenant(WAITING),
        READY,
        reads(
            found(
                enabled=True,
                connector_type="OnPremises",
                restrict_domains_to_ip_addresses=False,
                sender_ip_addresses=(),
            )
        ),
        BLOCKED,
        [("waiting", "blocked")],
        policy=DISABLING,
        reason="inbound mail may be bouncing",
    ),
    "enabled-connector-now-failing-the-audit-is-blocked-no-disable": DecideCase(
        tenant(ENABLED),
        REGRESSION,
        reads(found(enabled=True, restrict_domains_to_ip_addresses=False)),
        BLOCKED,
        [("enabled", "blocked")],
        policy=DISABLING,
        reason="RestrictDomainsTo",
    ),
    "enabled-found-enabled-steady": DecideCase(tenant(ENABLED), READY, GOOD_ENABLED, ENABLED),
    # enabled / regressed
    "enabled-one-miss-is-not-yet-a-regression": DecideCase(
        tenant(ENABLED),
        (READY[0], drec("contoso.net", D, misses=1)),
        None,
        ENABLED,
        policy=DISABLING,
        waiting="not yet confirmed",
    ),
    "enabled-regressed-after-confirmations-alert": DecideCase(
        tenant(ENABLED),
        REGRESSION,
        None,
        REGRESSED,
        [("enabled", "regressed")],
        reason="contoso.net is direct",
    ),
    "enabled-regressed-after-confirmations-disable": DecideCase(
        tenant(ENABLED),
        REGRESSION,
        GOOD_ENABLED,
        REGRESSED,
        [("enabled", "regressed")],
        DISABLE,
        DISABLING,
    ),
    "enabled-regressed-not-read-no-disable": DecideCase(
        tenant(ENABLED),
        REGRESSION,
        Reads(failure(ErrorKind.TRANSIENT)),
        REGRESSED,
        [("enabled", "regressed")],
        policy=DISABLING,
    ),
    "enabled-accepted-domain-new-and-direct-is-watched": DecideCase(
        tenant(ENABLED),
        (READY[0], drec("legacy.example", D, misses=2, accepted=True)),
        None,
        REGRESSED,
        [("enabled", "regressed")],
        reason="legacy.example is direct",
    ),
    "enabled-unknown-neither-counts-nor-resets": DecideCase(
        tenant(ENABLED), domains(F, U), None, ENABLED, policy=DISABLING
    ),
    "regressed-filtered-again-to-enabled": DecideCase(
        tenant(REGRESSED), READY, None, ENABLED, [("regressed", "enabled")], policy=DISABLING
    ),
    "regressed-still-not-cut-over-disable": DecideCase(
        tenant(REGRESSED), domains(M, F), GOOD_ENABLED, REGRESSED, [], DISABLE, DISABLING
    ),
    "regressed-still-not-cut-over-alert": DecideCase(
        tenant(REGRESSED), domains(M, F), GOOD_ENABLED, REGRESSED
    ),
    "regressed-unknown-no-disable": DecideCase(
        tenant(REGRESSED), domains(U, F), GOOD_ENABLED, REGRESSED, policy=DISABLING
    ),
    "enabled-found-disabled-to-waiting-no-enable": DecideCase(
        tenant(ENABLED),
        READY,
        GOOD,
        WAITING,
        [("enabled", "waiting")],
        reason="turned off outside mxwatch",
    ),
    "regressed-found-disabled-to-waiting": DecideCase(
        tenant(REGRESSED), domains(D), GOOD, WAITING, [("regressed", "waiting")], policy=DISABLING
    ),
}


def check_decide(case: DecideCase, **kw: object) -> None:
    decision = decide(
        TENANT,
        case.record,
        case.covered,
        provider=PROVIDER,
        rules=rules(**case.policy),
        now=T0,
        reads=case.reads,
        **kw,  # type: ignore[arg-type]
    )

    assert decision.needs_connector == ""
    assert decision.record.state is case.state
    assert moves(decision.transitions) == case.moves
    assert decision.actions == case.actions
    if case.reason:
        assert case.reason in decision.record.reason
    if case.waiting:
        assert case.waiting in decision.waiting_for
    if case.moves:
        assert decision.record.since == T0
    else:
        assert decision.record.since == case.record.since
        assert decision.record.reason == case.record.reason


@pytest.mark.parametrize("case", DECIDE_CASES.values(), ids=DECIDE_CASES.keys())
def test_decide(case: DecideCase) -> None:
    check_decide(case)


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(reads(missing()), id="missing"),
        pytest.param(reads(ambiguous()), id="ambiguous"),
        pytest.param(Reads(failure(ErrorKind.CREDENTIALS)), id="credentials"),
        pytest.param(reads(found(connector_type="OnPremises")), id="audit"),
    ],
)
def test_blocked_again_for_the_same_reason_is_no_new_transition(read: Reads) -> None:
    first = decide(
        TENANT, tenant(WAITING), READY, provider=PROVIDER, rules=rules(), now=T0 - HOUR, reads=read
    )
    assert first.record.state is BLOCKED

    again = decide(
        TENANT, first.record, READY, provider=PROVIDER, rules=rules(), now=T0, reads=read
    )

    assert again.transitions == ()
    assert again.record.state is BLOCKED
    assert again.record.since == T0 - HOUR
    assert again.record.connector_checked_at == T0  # retried, and that is recorded


def test_decide_records_the_connector_it_read() -> None:
    record = tenant(WAITING, connector_guid=None, connector_enabled=None, connector_checked_at=None)
    decision = decide(
        TENANT, record, domains(D), provider=PROVIDER, rules=rules(), now=T0, reads=GOOD
    )
    assert decision.record.connector_guid == GUID
    assert decision.record.connector_enabled is False
    assert decision.record.connector_checked_at == T0
    assert decision.audit is not None and decision.audit.passed


def test_subdomain_matching_accepted_domains_are_an_audit_warning() -> None:
    read = reads(
        accepted_domains=accepted("contoso.com", "contoso.net", subdomains=("contoso.net",))
    )
    decision = decide(
        TENANT, tenant(SETTLING), READY, provider=PROVIDER, rules=rules(), now=T0, reads=read
    )
    assert decision.actions == ENABLE  # a warning, not a block
    assert decision.audit is not None
    (warning,) = decision.audit.warnings
    assert "contoso.net" in warning and "MatchSubDomains" in warning


def test_not_exclusive_never_enables_even_after_a_read() -> None:
    decision = decide(
        TENANT,
        tenant(SETTLING),
        READY,
        provider=PROVIDER,
        rules=rules(),
        now=T0,
        reads=GOOD,
        exclusive=False,
    )
    assert decision.actions == ()
    assert "does not hold the state" in decision.waiting_for


def test_settling_records_eligible_at_and_the_fewest_confirmations() -> None:
    covered = (drec("contoso.com", F, since=T0, count=1, old_ttl=3600), READY[1])
    decision = decide(TENANT, tenant(WAITING), covered, provider=PROVIDER, rules=rules(), now=T0)
    assert decision.record.eligible_at == T0 + HOUR
    assert "contoso.com" in decision.record.eligible_reason
    assert decision.record.confirmations == 1


def test_tenant_transition_carries_everything() -> None:
    decision = decide(
        TENANT, tenant(SETTLING), domains(F, D), provider=PROVIDER, rules=rules(), now=T0
    )
    (t,) = decision.transitions
    assert (t.at, t.tenant, t.domain) == (T0, TENANT, None)
    assert (t.from_state, t.to_state) == ("settling", "waiting")
    assert t.reason == decision.record.reason == "contoso.net is direct"
    assert t.evidence["domains"] == {"contoso.com": "filtered", "contoso.net": "direct"}
    assert t.evidence["mx"]["contoso.net"] == ["0 contoso-com.mail.protection.outlook.com"]
    assert t.evidence["connector"] == {"guid": GUID, "enabled": False}


# --- an interrupted write, confirmed by reading the connector back ------------------------------

ENABLE_INTENT = Intent(WriteAction.ENABLE, GUID, EARLIER)
DISABLE_INTENT = Intent(WriteAction.DISABLE, GUID, EARLIER)


def decide_with(
    record: TenantRecord, covered: tuple[DomainRecord, ...], read: Reads, intent: Intent
) -> Decision:
    return decide(
        TENANT,
        record,
        covered,
        provider=PROVIDER,
        rules=rules(**DISABLING),
        now=T0,
        reads=read,
        intent=intent,
    )


def test_an_interrupted_enable_found_done_is_mxwatchs_own() -> None:
    decision = decide_with(tenant(SETTLING), READY, GOOD_ENABLED, ENABLE_INTENT)
    assert decision.record.state is ENABLED
    assert decision.record.reason.startswith("enabled by mxwatch at")
    assert decision.confirmed == ENABLE_INTENT
    assert decision.intent_settled


def test_an_interrupted_enable_found_done_while_not_cut_over_is_a_regression() -> None:
    decision = decide_with(tenant(SETTLING), domains(F, D), GOOD_ENABLED, ENABLE_INTENT)
    assert decision.record.state is REGRESSED
    assert "enabled by mxwatch" in decision.record.reason
    assert decision.actions == ()  # never disabled in the same breath


def test_an_interrupted_enable_not_done_is_settled_and_may_be_made_again() -> None:
    decision = decide_with(tenant(SETTLING), READY, GOOD, ENABLE_INTENT)
    assert decision.intent_settled
    assert decision.confirmed is None
    assert decision.actions == ENABLE


def test_an_interrupted_disable_found_done_is_mxwatchs_own() -> None:
    decision = decide_with(tenant(REGRESSED), domains(F, D), GOOD, DISABLE_INTENT)
    assert decision.record.state is WAITING
    assert decision.record.reason.startswith("disabled by mxwatch at")
    assert decision.confirmed == DISABLE_INTENT


def test_an_intent_stays_pending_while_the_connector_cannot_be_read() -> None:
    decision = decide_with(
        tenant(SETTLING), READY, Reads(failure(ErrorKind.TRANSIENT)), ENABLE_INTENT
    )
    assert not decision.intent_settled
    assert decision.actions == ()


# ---------------------------------------------------------------------------------------------
# after_action


@dataclass(frozen=True)
class AfterCase:
    record: TenantRecord
    action: Enable | Disable
    outcome: Connector | ExchangeFailure
    state: TenantState
    moves: list[tuple[str | None, str]]
    settled: bool
    waiting_for: str = ""


AFTER_CASES = {
    "enable-read-back-enabled": AfterCase(
        tenant(SETTLING),
        Enable(GUID),
        connector(enabled=True),
        ENABLED,
        [("settling", "enabled")],
        True,
    ),
    "enable-read-back-disabled-stays": AfterCase(
        tenant(SETTLING),
        Enable(GUID),
        connector(enabled=False),
        SETTLING,
        [],
        True,
        "Enabled=False",
    ),
    "enable-transient-stays-and-keeps-the-intent": AfterCase(
        tenant(SETTLING),
        Enable(GUID),
        failure(ErrorKind.TRANSIENT),
        SETTLING,
        [],
        False,
        "next cycle",
    ),
    "enable-permission-blocked-keeps-the-intent": AfterCase(
        tenant(SETTLING),
        Enable(GUID),
        failure(ErrorKind.BLOCKED),
        BLOCKED,
        [("settling", "blocked")],
        False,
    ),
    "disable-read-back-disabled-to-waiting": AfterCase(
        tenant(REGRESSED),
        Disable(GUID),
        connector(enabled=False),
        WAITING,
        [("regressed", "waiting")],
        True,
    ),
    "disable-read-back-enabled-stays": AfterCase(
        tenant(REGRESSED),
        Disable(GUID),
        connector(enabled=True),
        REGRESSED,
        [],
        True,
        "Enabled=True",
    ),
}


@pytest.mark.parametrize("case", AFTER_CASES.values(), ids=AFTER_CASES.keys())
def test_after_action(case: AfterCase) -> None:
    covered = READY if isinstance(case.action, Enable) else domains(F, D)
    later = T0 + timedelta(seconds=5)

    decision = after_action(TENANT, case.record, covered, case.action, case.outcome, later)

    assert decision.record.state is case.state
    assert moves(decision.transitions) == case.moves
    assert decision.intent_settled is case.settled
    if case.waiting_for:
        assert case.waiting_for in decision.waiting_for
    for t in decision.transitions:
        assert (t.at, t.tenant) == (later, TENANT)
        assert t.reason == decision.record.reason
    if isinstance(case.outcome, Connector):
        assert decision.record.connector_enabled is case.outcome.enabled
        assert decision.record.connector_checked_at == later
    if case.state is ENABLED:
        assert decision.record.reason.startswith("enabled by mxwatch")


# ---------------------------------------------------------------------------------------------
# unknown is never evidence


@given(
    state=st.sampled_from(list(TenantState)),
    stored=st.lists(st.sampled_from([F, F, D, M, N, U]), min_size=1, max_size=4),
    unknown=st.sets(st.integers(0, 3), min_size=1),
    policy=st.fixed_dictionaries(
        {"confirmations": st.integers(1, 3), "on_regression": st.sampled_from(["alert", "disable"])}
    ),
)
def test_a_cycle_of_unknown_and_filtered_moves_nothing(
    state: TenantState, stored: list[Verdict], unknown: set[int], policy: dict[str, object]
) -> None:
    """Some covered domains unknown, the rest filtered: streaks, misses and old TTLs stand, and
    the tenant neither moves nor acts (no connector read is due)."""
    # Misses stay below any confirmations: a confirmed regression would have moved already.
    before = {
        d.domain: replace(d, filtered_at=EARLIER, checked_at=EARLIER, misses=0)
        for d in domains(*stored, old_ttl=600)
    }
    answers = {name: dobs(U if i in unknown else F, domain=name) for i, name in enumerate(before)}
    assume(any(a.verdict is U for a in answers.values()))
    update = update_domains(TENANT, before, answers, rules(**policy), T0)
    for record in update.records:
        if answers[record.domain].verdict is U:
            old = before[record.domain]
            assert (record.filtered_since, record.filtered_count, record.misses) == (
                old.filtered_since,
                old.filtered_count,
                old.misses,
            )
            assert (record.old_ttl, record.old_ttl_cached) == (old.old_ttl, old.old_ttl_cached)
    decision = decide(
        TENANT, tenant(state), update.records, provider=PROVIDER, rules=rules(**policy), now=T0
    )
    if state is not BLOCKED and decision.needs_connector == "":
        assert decision.record.state is state
        assert decision.transitions == () and decision.actions == ()
