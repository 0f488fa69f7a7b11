"""Table tests for mxwatch.policy (DESIGN.md §3): every rule as a row."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from mxwatch.model import (
    Connector,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    TenantRecord,
    TenantState,
    Verdict,
)
from mxwatch.policy import (
    ConnectorRead,
    Disable,
    Enable,
    Outlook,
    after_action,
    audit_connector,
    connector_read_reason,
    decide,
    eligible_at,
    outlook,
    settle_for,
    update_domains,
)
from mxwatch.providers import Provider
from mxwatch.settings import PolicyConfig
from mxwatch.verdicts import combine_observations
from tests.unit.policy_builders import (
    GUID,
    IDENTITY,
    PROVIDER,
    PROVIDER_NO_IPS,
    T0,
    TENANT,
    D,
    F,
    M,
    N,
    U,
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
    tenant,
)

WAITING = TenantState.WAITING
SETTLING = TenantState.SETTLING
ENABLED = TenantState.ENABLED
REGRESSED = TenantState.REGRESSED
BLOCKED = TenantState.BLOCKED
HOUR = timedelta(hours=1)

# ---------------------------------------------------------------------------------------------
# combine_observations


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        pytest.param([], U, id="no-observations-unknown"),
        pytest.param([F], F, id="one-source-filtered"),
        pytest.param([F, F, F], F, id="all-filtered"),
        pytest.param([F, D], D, id="filtered+direct-direct"),
        pytest.param([F, M], M, id="filtered+mixed-mixed"),
        pytest.param([F, N], N, id="filtered+no_mx-no_mx"),
        pytest.param([N, M, D], D, id="direct-worst-of-all"),
        pytest.param([N, M], M, id="mixed-worse-than-no_mx"),
        pytest.param([U, N], N, id="no_mx-beats-unknown"),
        pytest.param([D, U, F], D, id="direct-beats-unknown-and-filtered"),
        pytest.param([F, U], U, id="filtered+unknown-unknown"),
        pytest.param([U, U], U, id="all-unknown"),
    ],
)
def test_combine_observations(verdicts: list[Verdict], expected: Verdict) -> None:
    answers = [
        obs(v, source=f"src{i}", ttl=None if v is U else 300) for i, v in enumerate(verdicts)
    ]

    combined = combine_observations("contoso.com", answers, T0)

    assert combined.verdict is expected
    assert combined.domain == "contoso.com"
    assert combined.checked_at == T0
    assert combined.sources == tuple(answers)
    assert combined.reason


def test_combine_reports_the_worst_source_and_its_mx() -> None:
    answers = [
        obs(M, source="resolver-a", ttl=600),
        obs(D, source="resolver-b", ttl=3600),
        obs(F, source="resolver-c"),
    ]
    combined = combine_observations("contoso.com", answers, T0)
    assert combined.verdict is D
    assert combined.mx == answers[1].mx
    assert combined.ttl == 3600
    assert "resolver-b" in combined.reason


def test_combine_unknown_keeps_each_source_reason_and_has_no_mx() -> None:
    answers = [obs(U, source="r1", ttl=None), obs(F, source="r2")]
    combined = combine_observations("contoso.com", answers, T0)
    assert combined.verdict is U
    assert combined.mx == ()
    assert combined.ttl is None
    assert "r1" in combined.reason


# ---------------------------------------------------------------------------------------------
# update_domains

EARLIER = T0 - HOUR


@dataclass(frozen=True)
class DomainCase:
    before: DomainRecord | None
    observed: Verdict
    ttl: int | None
    filtered_since: datetime | None
    old_ttl: int | None
    transition: tuple[str | None, str] | None


DOMAIN_CASES = {
    "first-sight-filtered-starts-streak": DomainCase(None, F, 300, T0, None, (None, "filtered")),
    "first-sight-direct-records-old-ttl": DomainCase(None, D, 3600, None, 3600, (None, "direct")),
    "first-sight-unknown": DomainCase(None, U, None, None, None, (None, "unknown")),
    "filtered-again-keeps-since": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER, old_ttl=3600), F, 300, EARLIER, 3600, None
    ),
    "direct-to-filtered-starts-streak-keeps-old-ttl": DomainCase(
        drec("contoso.com", D, old_ttl=3600), F, 300, T0, 3600, ("direct", "filtered")
    ),
    "filtered-to-direct-resets": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER), D, 1800, None, 1800, ("filtered", "direct")
    ),
    "filtered-to-mixed-resets": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER), M, 900, None, 900, ("filtered", "mixed")
    ),
    "filtered-to-no_mx-resets": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER), N, 60, None, 60, ("filtered", "no_mx")
    ),
    "filtered-to-unknown-keeps-streak-and-old-ttl": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER, old_ttl=3600),
        U,
        None,
        EARLIER,
        3600,
        ("filtered", "unknown"),
    ),
    "unknown-to-filtered-keeps-streak": DomainCase(
        drec("contoso.com", U, filtered_since=EARLIER, old_ttl=3600),
        F,
        300,
        EARLIER,
        3600,
        ("unknown", "filtered"),
    ),
    "direct-then-unknown-keeps-old-ttl-no-streak": DomainCase(
        drec("contoso.com", D, old_ttl=7200), U, None, None, 7200, ("direct", "unknown")
    ),
    "direct-again-updates-old-ttl-no-transition": DomainCase(
        drec("contoso.com", D, old_ttl=7200), D, 300, None, 300, None
    ),
    "non-filtered-without-ttl-keeps-old-ttl": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER, old_ttl=3600),
        N,
        None,
        None,
        3600,
        ("filtered", "no_mx"),
    ),
    "filtered-ttl-is-not-an-old-ttl": DomainCase(
        drec("contoso.com", F, filtered_since=EARLIER, old_ttl=3600), F, 60, EARLIER, 3600, None
    ),
}


@pytest.mark.parametrize("case", DOMAIN_CASES.values(), ids=DOMAIN_CASES.keys())
def test_update_domains(case: DomainCase) -> None:
    known = {} if case.before is None else {"contoso.com": case.before}
    observed = dobs(case.observed, ttl=case.ttl)

    records, transitions = update_domains(TENANT, known, {"contoso.com": observed}, T0)

    (record,) = records
    assert record.domain == "contoso.com"
    assert record.verdict is case.observed
    assert record.checked_at == T0
    assert record.filtered_since == case.filtered_since
    assert record.old_ttl == case.old_ttl
    if case.transition is None:
        assert transitions == ()
    else:
        (t,) = transitions
        assert (t.from_state, t.to_state) == case.transition
        assert t.at == T0
        assert t.tenant == TENANT
        assert t.domain == "contoso.com"
        assert t.reason == observed.reason
        assert t.evidence["verdict"] == case.observed.value
        assert {"mx", "ttl", "sources"} <= set(t.evidence)


def test_update_domains_one_transition_per_changed_domain() -> None:
    known = {
        "a.example": drec("a.example", F, filtered_since=EARLIER),
        "b.example": drec("b.example", D, old_ttl=600),
        "c.example": drec("c.example", F, filtered_since=EARLIER),
    }
    observed = {
        "a.example": dobs(F, domain="a.example"),
        "b.example": dobs(F, domain="b.example"),
        "c.example": dobs(U, domain="c.example"),
    }
    records, transitions = update_domains(TENANT, known, observed, T0)

    assert [r.domain for r in records] == ["a.example", "b.example", "c.example"]
    assert [(t.domain, t.from_state, t.to_state) for t in transitions] == [
        ("b.example", "direct", "filtered"),
        ("c.example", "filtered", "unknown"),
    ]
    mx_evidence = transitions[0].evidence["mx"]
    assert mx_evidence[0] == "10 mx1.inbound.filter.example"
    source = transitions[0].evidence["sources"][0]
    assert set(source) == {"source", "verdict", "mx", "ttl", "reason"}


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
    ("policy", "old_ttl", "expected"),
    [
        pytest.param(cfg(settle=minutes(30)), 86400, minutes(30), id="duration-wins-over-old-ttl"),
        pytest.param(cfg(settle=minutes(1)), None, minutes(1), id="duration-below-min-settle"),
        pytest.param(cfg(min_settle=minutes(10)), 3600, HOUR, id="auto-old-ttl-above-min"),
        pytest.param(cfg(min_settle=minutes(10)), 60, minutes(10), id="auto-min-above-old-ttl"),
        pytest.param(cfg(min_settle=minutes(10)), 600, minutes(10), id="auto-equal"),
        pytest.param(
            cfg(min_settle=minutes(10), default_old_ttl=2 * HOUR),
            None,
            2 * HOUR,
            id="auto-no-old-rrset-default",
        ),
        pytest.param(
            cfg(min_settle=minutes(10), default_old_ttl=minutes(5)),
            None,
            minutes(10),
            id="auto-no-old-rrset-min-above-default",
        ),
    ],
)
def test_settle_for(policy: PolicyConfig, old_ttl: int | None, expected: timedelta) -> None:
    wait, why = settle_for(drec("contoso.com", F, old_ttl=old_ttl), policy)
    assert wait == expected
    assert why


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            [drec("a.example", F, filtered_since=T0, old_ttl=3600)], T0 + HOUR, id="one-domain"
        ),
        pytest.param(
            [
                drec("a.example", F, filtered_since=T0, old_ttl=60),  # T0 + 10m
                drec("b.example", F, filtered_since=T0 - minutes(30), old_ttl=3600),  # T0 + 30m
                drec("c.example", F, filtered_since=T0 + minutes(5), old_ttl=None),  # T0 + 65m
            ],
            T0 + minutes(65),
            id="max-over-domains",
        ),
        pytest.param(
            [drec("a.example", U, filtered_since=T0, old_ttl=60)],
            T0 + minutes(10),
            id="unknown-domain-keeps-its-streak",
        ),
        pytest.param(
            [drec("a.example", F, filtered_since=T0), drec("b.example", D)],
            None,
            id="a-non-filtered-domain",
        ),
        pytest.param([], None, id="no-domains"),
    ],
)
def test_eligible_at(records: list[DomainRecord], expected: datetime | None) -> None:
    at, why = eligible_at(records, cfg(min_settle=minutes(10), default_old_ttl=HOUR))
    assert at == expected
    assert why
    if expected is None and records:
        assert "b.example" in why


def test_eligible_at_names_the_deciding_domain() -> None:
    records = [
        drec("a.example", F, filtered_since=T0, old_ttl=60),
        drec("b.example", F, filtered_since=T0, old_ttl=7200),
    ]
    _, why = eligible_at(records, cfg())
    assert "b.example" in why
    assert "7200" in why


# ---------------------------------------------------------------------------------------------
# audit_connector

PROVIDER_21 = Provider(
    name="wide",
    mx=("*.inbound.filter.example",),
    sender_ips=(
        ipaddress.IPv4Network("203.0.112.0/21"),
        ipaddress.IPv4Network("198.51.100.7/32"),
    ),
)
EIGHT_24S = tuple(f"203.0.{n}.0/24" for n in range(112, 120))


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
            connector(
                sender_domains=("smtp:contoso.com;1", "smtp:*;1"),
            ),
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
# connector_read_reason

ELIGIBLE = domains(F, F)  # filtered for two hours, settle 10 min: eligible now
FRESH = tuple(drec(n, F, filtered_since=T0 - minutes(1)) for n in ("contoso.com", "contoso.net"))


@pytest.mark.parametrize(
    ("record", "doms", "policy", "expected"),
    [
        pytest.param(
            tenant(WAITING, connector_checked_at=None),
            domains(D),
            cfg(),
            "first sight of the tenant",
            id="first-sight",
        ),
        pytest.param(
            tenant(ENABLED, connector_checked_at=None),
            ELIGIBLE,
            cfg(),
            "first sight of the tenant",
            id="first-sight-any-state",
        ),
        pytest.param(
            tenant(BLOCKED), domains(D), cfg(), "retrying a blocked tenant", id="blocked-retried"
        ),
        pytest.param(
            tenant(SETTLING, confirmations=1),
            ELIGIBLE,
            cfg(confirmations=2),
            "audit before enabling",
            id="enable-due-settling",
        ),
        pytest.param(
            tenant(WAITING),
            ELIGIBLE,
            cfg(confirmations=1),
            "audit before enabling",
            id="enable-due-from-waiting-one-confirmation",
        ),
        pytest.param(
            tenant(WAITING), ELIGIBLE, cfg(confirmations=2), None, id="waiting-not-confirmed"
        ),
        pytest.param(
            tenant(SETTLING, confirmations=1), FRESH, cfg(confirmations=2), None, id="not-settled"
        ),
        pytest.param(
            tenant(SETTLING, confirmations=5),
            domains(F, U),
            cfg(),
            None,
            id="settling-inconclusive",
        ),
        pytest.param(
            tenant(ENABLED, regressions=1),
            domains(F, D),
            cfg(on_regression="disable", confirmations=2),
            "before disabling after a regression",
            id="disable-due-enabled",
        ),
        pytest.param(
            tenant(ENABLED, regressions=0),
            domains(F, D),
            cfg(on_regression="disable", confirmations=2),
            None,
            id="regression-not-confirmed",
        ),
        pytest.param(
            tenant(REGRESSED),
            domains(F, D),
            cfg(on_regression="disable"),
            "before disabling after a regression",
            id="disable-due-regressed",
        ),
        pytest.param(
            tenant(REGRESSED),
            domains(F, D),
            cfg(on_regression="alert"),
            None,
            id="regressed-alert-no-read",
        ),
        pytest.param(tenant(ENABLED), ELIGIBLE, cfg(), None, id="steady-enabled"),
        pytest.param(tenant(WAITING), domains(D, D), cfg(), None, id="steady-waiting"),
        pytest.param(
            tenant(WAITING, connector_checked_at=T0 - timedelta(hours=6)),
            domains(D),
            cfg(recheck=timedelta(hours=6)),
            "periodic recheck",
            id="recheck-after-full-interval",
        ),
        pytest.param(
            tenant(ENABLED, connector_checked_at=T0 - timedelta(hours=4, minutes=29)),
            ELIGIBLE,
            cfg(recheck=timedelta(hours=6)),
            None,
            id="no-recheck-before-75-percent",
        ),
    ],
)
def test_connector_read_reason(
    record: TenantRecord, doms: tuple[DomainRecord, ...], policy: PolicyConfig, expected: str | None
) -> None:
    assert connector_read_reason(TENANT, record, doms, policy, T0) == expected


def test_recheck_is_spread_over_75_to_100_percent_of_the_interval() -> None:
    recheck = timedelta(hours=4)
    names = [f"tenant-{i}" for i in range(200)]

    def reads(elapsed: timedelta) -> set[str]:
        record = tenant(WAITING, connector_checked_at=T0 - elapsed)
        return {
            name
            for name in names
            if connector_read_reason(name, record, domains(D), cfg(recheck=recheck), T0)
        }

    assert reads(recheck * 0.75 - timedelta(seconds=1)) == set()
    assert reads(recheck) == set(names)
    spread = reads(recheck * 0.875)
    assert 0 < len(spread) < len(names)


# ---------------------------------------------------------------------------------------------
# decide


@dataclass(frozen=True)
class DecideCase:
    record: TenantRecord
    doms: tuple[DomainRecord, ...]
    read: ConnectorRead
    state: TenantState
    moves: list[tuple[str | None, str]] = field(default_factory=list)
    actions: tuple[object, ...] = ()
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reason: str = ""  # expected in the final record's reason when moved
    confirmations: int | None = None


GOOD = found()
GOOD_ENABLED = found(enabled=True)
ENABLE = (Enable(GUID),)
DISABLE = (Disable(GUID),)
ONE = cfg(confirmations=1)
TWO = cfg(confirmations=2)
DISABLING = cfg(confirmations=2, on_regression="disable")

DECIDE_CASES: dict[str, DecideCase] = {
    # waiting
    "waiting-all-filtered-to-settling": DecideCase(
        tenant(WAITING), ELIGIBLE, None, SETTLING, [("waiting", "settling")], confirmations=1
    ),
    "waiting-one-domain-direct-stays": DecideCase(tenant(WAITING), domains(F, D), GOOD, WAITING),
    "waiting-unknown-stays": DecideCase(tenant(WAITING), domains(F, U), GOOD, WAITING),
    "waiting-enable-at-once-with-one-confirmation": DecideCase(
        tenant(WAITING), ELIGIBLE, GOOD, SETTLING, [("waiting", "settling")], ENABLE, ONE
    ),
    "waiting-two-domains-one-direct-no-enable": DecideCase(
        tenant(WAITING), domains(F, D), GOOD, WAITING, policy=ONE
    ),
    # settling
    "settling-not-cut-over-to-waiting": DecideCase(
        tenant(SETTLING, confirmations=1),
        domains(F, M),
        None,
        WAITING,
        [("settling", "waiting")],
        reason="contoso.net is mixed",
        confirmations=0,
    ),
    "settling-no_mx-to-waiting": DecideCase(
        tenant(SETTLING, confirmations=3),
        domains(N, F),
        GOOD,
        WAITING,
        [("settling", "waiting")],
        policy=ONE,
        confirmations=0,
    ),
    "settling-unknown-neither-confirms-nor-resets": DecideCase(
        tenant(SETTLING, confirmations=1), domains(F, U), GOOD, SETTLING, confirmations=1
    ),
    "settling-counts-a-confirmation": DecideCase(
        tenant(SETTLING, confirmations=1),
        ELIGIBLE,
        None,
        SETTLING,
        policy=cfg(confirmations=3),
        confirmations=2,
    ),
    "settling-enable": DecideCase(
        tenant(SETTLING, confirmations=1), ELIGIBLE, GOOD, SETTLING, [], ENABLE, TWO
    ),
    "settling-enable-with-tls-warning": DecideCase(
        tenant(SETTLING, confirmations=1),
        ELIGIBLE,
        found(require_tls=False),
        SETTLING,
        [],
        ENABLE,
        TWO,
    ),
    "settling-too-few-confirmations": DecideCase(
        tenant(SETTLING, confirmations=1), ELIGIBLE, GOOD, SETTLING, policy=cfg(confirmations=3)
    ),
    "settling-not-yet-eligible": DecideCase(
        tenant(SETTLING, confirmations=5), FRESH, GOOD, SETTLING, policy=TWO
    ),
    "settling-connector-not-read": DecideCase(
        tenant(SETTLING, confirmations=5), ELIGIBLE, None, SETTLING, policy=TWO
    ),
    "settling-transient-failure-no-enable": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        failure(ErrorKind.TRANSIENT),
        SETTLING,
        policy=TWO,
        confirmations=6,
    ),
    "settling-audit-fails-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        found(connector_type="OnPremises"),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason="ConnectorType",
        confirmations=0,
    ),
    "settling-uncovered-ranges-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        found(sender_ip_addresses=("192.0.2.0/24",)),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason="198.51.100.0/24",
    ),
    "settling-missing-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        missing(),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason=IDENTITY,
    ),
    "settling-missing-reason-says-missing": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        missing(),
        BLOCKED,
        [("settling", "blocked")],
        reason="missing",
    ),
    "settling-ambiguous-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        ambiguous(),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason=IDENTITY,
    ),
    "settling-ambiguous-reason-says-ambiguous": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        ambiguous(),
        BLOCKED,
        [("settling", "blocked")],
        reason="ambiguous",
    ),
    "settling-credentials-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        failure(ErrorKind.CREDENTIALS),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason="credentials: AADSTS7000215",
    ),
    "settling-permission-blocked": DecideCase(
        tenant(SETTLING, confirmations=5),
        ELIGIBLE,
        failure(ErrorKind.BLOCKED),
        BLOCKED,
        [("settling", "blocked")],
        policy=TWO,
        reason="blocked: HTTP 403",
    ),
    "enabled-credentials-blocked": DecideCase(
        tenant(ENABLED), ELIGIBLE, failure(ErrorKind.CREDENTIALS), BLOCKED, [("enabled", "blocked")]
    ),
    "waiting-first-sight-missing-blocked": DecideCase(
        tenant(WAITING, connector_checked_at=None),
        domains(D),
        missing(),
        BLOCKED,
        [("waiting", "blocked")],
        reason=IDENTITY,
    ),
    # blocked
    "blocked-found-ok-to-waiting": DecideCase(
        tenant(BLOCKED, reason="audit failed: x"),
        domains(F, D),
        GOOD,
        WAITING,
        [("blocked", "waiting")],
        policy=ONE,
    ),
    "blocked-found-ok-all-filtered-to-settling": DecideCase(
        tenant(BLOCKED, reason="audit failed: x"),
        ELIGIBLE,
        GOOD,
        SETTLING,
        [("blocked", "waiting"), ("waiting", "settling")],
        policy=TWO,
        confirmations=1,
    ),
    "blocked-not-read-stays": DecideCase(tenant(BLOCKED), ELIGIBLE, None, BLOCKED, policy=ONE),
    "blocked-transient-stays": DecideCase(
        tenant(BLOCKED), ELIGIBLE, failure(ErrorKind.TRANSIENT), BLOCKED, policy=ONE
    ),
    "blocked-still-failing-audit": DecideCase(
        tenant(BLOCKED, reason="credentials: old"),
        ELIGIBLE,
        found(sender_domains=("smtp:contoso.com;1",)),
        BLOCKED,
        [("blocked", "blocked")],
        reason="SenderDomains",
    ),
    # adoption
    "waiting-found-enabled-adopted": DecideCase(
        tenant(WAITING), ELIGIBLE, GOOD_ENABLED, ENABLED, [("waiting", "enabled")], reason="adopted"
    ),
    "settling-found-enabled-adopted": DecideCase(
        tenant(SETTLING, confirmations=1),
        ELIGIBLE,
        GOOD_ENABLED,
        ENABLED,
        [("settling", "enabled")],
        policy=ONE,
        reason="adopted",
    ),
    "settling-found-enabled-not-cut-over-regressed": DecideCase(
        tenant(SETTLING, confirmations=1),
        domains(F, D),
        GOOD_ENABLED,
        REGRESSED,
        [("settling", "regressed")],
        reason="adopted",
    ),
    "waiting-found-enabled-unknown-adopted": DecideCase(
        tenant(WAITING), domains(F, U), GOOD_ENABLED, ENABLED, [("waiting", "enabled")]
    ),
    "blocked-found-enabled-adopted": DecideCase(
        tenant(BLOCKED), ELIGIBLE, GOOD_ENABLED, ENABLED, [("blocked", "enabled")]
    ),
    "enabled-found-enabled-steady": DecideCase(tenant(ENABLED), ELIGIBLE, GOOD_ENABLED, ENABLED),
    # enabled / regressed
    "enabled-first-not-cut-over-cycle-counts": DecideCase(
        tenant(ENABLED), domains(F, D), None, ENABLED, policy=DISABLING
    ),
    "enabled-regressed-after-confirmations-alert": DecideCase(
        tenant(ENABLED, regressions=1),
        domains(F, D),
        GOOD_ENABLED,
        REGRESSED,
        [("enabled", "regressed")],
        policy=TWO,
        reason="contoso.net is direct",
    ),
    "enabled-regressed-after-confirmations-disable": DecideCase(
        tenant(ENABLED, regressions=1),
        domains(F, D),
        GOOD_ENABLED,
        REGRESSED,
        [("enabled", "regressed")],
        DISABLE,
        DISABLING,
    ),
    "enabled-regressed-one-confirmation-disable": DecideCase(
        tenant(ENABLED),
        domains(N),
        GOOD_ENABLED,
        REGRESSED,
        [("enabled", "regressed")],
        DISABLE,
        cfg(confirmations=1, on_regression="disable"),
    ),
    "enabled-regressed-not-read-no-disable": DecideCase(
        tenant(ENABLED, regressions=1),
        domains(F, D),
        failure(ErrorKind.TRANSIENT),
        REGRESSED,
        [("enabled", "regressed")],
        policy=DISABLING,
    ),
    "enabled-unknown-neither-counts-nor-resets": DecideCase(
        tenant(ENABLED, regressions=1), domains(F, U), None, ENABLED, policy=DISABLING
    ),
    "regressed-filtered-again-to-enabled": DecideCase(
        tenant(REGRESSED), ELIGIBLE, None, ENABLED, [("regressed", "enabled")], policy=DISABLING
    ),
    "regressed-still-not-cut-over-disable": DecideCase(
        tenant(REGRESSED), domains(M, F), GOOD_ENABLED, REGRESSED, [], DISABLE, DISABLING
    ),
    "regressed-still-not-cut-over-alert": DecideCase(
        tenant(REGRESSED), domains(M, F), GOOD_ENABLED, REGRESSED, policy=TWO
    ),
    "regressed-unknown-no-disable": DecideCase(
        tenant(REGRESSED), domains(U, F), GOOD_ENABLED, REGRESSED, policy=DISABLING
    ),
    "enabled-found-disabled-to-waiting-no-enable": DecideCase(
        tenant(ENABLED),
        ELIGIBLE,
        GOOD,
        WAITING,
        [("enabled", "waiting")],
        policy=ONE,
        reason="turned off outside mxwatch",
        confirmations=0,
    ),
    "regressed-found-disabled-to-waiting": DecideCase(
        tenant(REGRESSED), domains(D), GOOD, WAITING, [("regressed", "waiting")], policy=DISABLING
    ),
}


def _check_decide(case: DecideCase) -> None:
    decision = decide(TENANT, case.record, case.doms, case.read, PROVIDER, case.policy, T0)

    assert decision.record.state is case.state
    assert moves(decision.transitions) == case.moves
    assert decision.actions == case.actions
    if case.reason:
        assert case.reason in decision.record.reason
    if case.confirmations is not None:
        assert decision.record.confirmations == case.confirmations
    if case.moves:
        assert decision.record.since == T0
    else:
        assert decision.record.since == case.record.since
        assert decision.record.reason == case.record.reason
    if not case.actions and case.state in (WAITING, SETTLING):
        assert decision.waiting_for or case.state is WAITING


@pytest.mark.parametrize("case", DECIDE_CASES.values(), ids=DECIDE_CASES.keys())
def test_decide(case: DecideCase) -> None:
    _check_decide(case)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(tenant(WAITING, connector_checked_at=None), id="first-sight"),
        pytest.param(tenant(SETTLING, confirmations=1), id="settling"),
        pytest.param(tenant(BLOCKED), id="blocked"),
    ],
)
def test_decide_adopted_into_regressed_takes_no_action(record: TenantRecord) -> None:
    _check_decide(
        DecideCase(
            record,
            domains(F, D),
            GOOD_ENABLED,
            REGRESSED,
            [(record.state.value, "regressed")],
            (),
            DISABLING,
            reason="adopted",
        )
    )


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(missing(), id="missing"),
        pytest.param(ambiguous(), id="ambiguous"),
        pytest.param(failure(ErrorKind.CREDENTIALS), id="credentials"),
        pytest.param(found(connector_type="OnPremises"), id="audit"),
    ],
)
def test_blocked_again_for_the_same_reason_is_no_new_transition(read: ConnectorRead) -> None:
    first = decide(TENANT, tenant(WAITING), ELIGIBLE, read, PROVIDER, TWO, T0 - HOUR)
    assert first.record.state is BLOCKED

    again = decide(TENANT, first.record, ELIGIBLE, read, PROVIDER, TWO, T0)

    assert again.transitions == ()
    assert again.record.state is BLOCKED
    assert again.record.since == T0 - HOUR
    assert again.record.connector_checked_at == T0  # retried, and that is recorded


def test_decide_records_the_connector_it_read() -> None:
    record = tenant(WAITING, connector_guid=None, connector_enabled=None, connector_checked_at=None)
    decision = decide(TENANT, record, domains(D), GOOD, PROVIDER, cfg(), T0)
    assert decision.record.connector_guid == GUID
    assert decision.record.connector_enabled is False
    assert decision.record.connector_checked_at == T0
    assert decision.audit is not None and decision.audit.passed


def test_decide_not_read_leaves_connector_fields_alone() -> None:
    record = tenant(SETTLING, confirmations=1)
    for read in (None, failure(ErrorKind.TRANSIENT)):
        decision = decide(TENANT, record, ELIGIBLE, read, PROVIDER, TWO, T0)
        assert decision.record.connector_checked_at == record.connector_checked_at
        assert decision.audit is None
        assert decision.actions == ()


def test_decide_exactly_at_eligible_at_enables() -> None:
    doms = (drec("contoso.com", F, filtered_since=T0 - minutes(10), old_ttl=60),)
    record = tenant(SETTLING, confirmations=1)
    assert decide(TENANT, record, doms, GOOD, PROVIDER, TWO, T0).actions == ENABLE
    early = decide(TENANT, record, doms, GOOD, PROVIDER, TWO, T0 - timedelta(seconds=1))
    assert early.actions == ()
    assert "settling until" in early.waiting_for


def test_decide_settling_records_eligible_at() -> None:
    doms = (drec("contoso.com", F, filtered_since=T0, old_ttl=3600),)
    decision = decide(TENANT, tenant(WAITING), doms, None, PROVIDER, TWO, T0)
    assert decision.record.eligible_at == T0 + HOUR
    assert "contoso.com" in decision.record.eligible_reason


def test_tenant_transition_carries_everything() -> None:
    doms = domains(F, D)
    decision = decide(TENANT, tenant(SETTLING, confirmations=1), doms, None, PROVIDER, TWO, T0)
    (t,) = decision.transitions
    assert t.at == T0
    assert t.tenant == TENANT
    assert t.domain is None
    assert (t.from_state, t.to_state) == ("settling", "waiting")
    assert t.reason == decision.record.reason == "contoso.net is direct"
    assert t.evidence["domains"] == {"contoso.com": "filtered", "contoso.net": "direct"}
    assert t.evidence["mx"]["contoso.net"] == ["0 contoso-com.mail.protection.outlook.com"]
    assert t.evidence["connector"] == {"guid": GUID, "enabled": False}


def test_adoption_transition_evidence_shows_the_connector_read() -> None:
    record = tenant(WAITING, connector_guid=None, connector_enabled=None)
    decision = decide(TENANT, record, ELIGIBLE, GOOD_ENABLED, PROVIDER, TWO, T0)
    (t,) = decision.transitions
    assert t.evidence["connector"] == {"guid": GUID, "enabled": True}


# ---------------------------------------------------------------------------------------------
# after_action


@dataclass(frozen=True)
class AfterCase:
    record: TenantRecord
    action: Enable | Disable
    outcome: Connector | ExchangeFailure
    state: TenantState
    moves: list[tuple[str | None, str]]
    waiting_for: str = ""


AFTER_CASES = {
    "enable-read-back-enabled": AfterCase(
        tenant(SETTLING, confirmations=2),
        Enable(GUID),
        connector(enabled=True),
        ENABLED,
        [("settling", "enabled")],
    ),
    "enable-read-back-disabled-stays": AfterCase(
        tenant(SETTLING, confirmations=2),
        Enable(GUID),
        connector(enabled=False),
        SETTLING,
        [],
        "Enabled=False",
    ),
    "enable-transient-stays": AfterCase(
        tenant(SETTLING, confirmations=2),
        Enable(GUID),
        failure(ErrorKind.TRANSIENT),
        SETTLING,
        [],
        "retrying",
    ),
    "enable-permission-blocked": AfterCase(
        tenant(SETTLING, confirmations=2),
        Enable(GUID),
        failure(ErrorKind.BLOCKED),
        BLOCKED,
        [("settling", "blocked")],
    ),
    "enable-credentials-blocked": AfterCase(
        tenant(SETTLING, confirmations=2),
        Enable(GUID),
        failure(ErrorKind.CREDENTIALS),
        BLOCKED,
        [("settling", "blocked")],
    ),
    "disable-read-back-disabled-to-waiting": AfterCase(
        tenant(REGRESSED, regressions=2),
        Disable(GUID),
        connector(enabled=False),
        WAITING,
        [("regressed", "waiting")],
    ),
    "disable-read-back-enabled-stays": AfterCase(
        tenant(REGRESSED, regressions=2),
        Disable(GUID),
        connector(enabled=True),
        REGRESSED,
        [],
        "Enabled=True",
    ),
    "disable-transient-stays": AfterCase(
        tenant(REGRESSED, regressions=2),
        Disable(GUID),
        failure(ErrorKind.TRANSIENT),
        REGRESSED,
        [],
        "retrying",
    ),
}


@pytest.mark.parametrize("case", AFTER_CASES.values(), ids=AFTER_CASES.keys())
def test_after_action(case: AfterCase) -> None:
    doms = domains(F, F) if isinstance(case.action, Enable) else domains(F, D)
    later = T0 + timedelta(seconds=5)

    decision = after_action(TENANT, case.record, doms, case.action, case.outcome, later)

    assert decision.record.state is case.state
    assert moves(decision.transitions) == case.moves
    assert decision.actions == ()
    if case.waiting_for:
        assert case.waiting_for in decision.waiting_for
    for t in decision.transitions:
        assert t.at == later
        assert t.tenant == TENANT
        assert t.reason == decision.record.reason
        assert {"domains", "mx", "connector"} <= set(t.evidence)
    if isinstance(case.outcome, Connector):
        assert decision.record.connector_enabled is case.outcome.enabled
        assert decision.record.connector_checked_at == later
    if case.state is WAITING:
        assert decision.record.confirmations == 0
        assert decision.record.regressions == 0
        assert decision.record.eligible_at is None
