"""Properties of mxwatch.policy over many simulated cycles (DESIGN.md §3).

Each example drives one tenant through a random sequence of cycles: per-domain verdicts and TTLs,
time steps, connector reads and action outcomes. The facts the policy must respect (the
all-filtered streak, each domain's first filtered time and settle) are computed here
independently, from the raw sequence, and checked against every Enable the policy returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mxwatch.model import (
    Connector,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    TenantRecord,
    TenantState,
    Transition,
    Verdict,
)
from mxwatch.policy import (
    ConnectorRead,
    Decision,
    Disable,
    Enable,
    Outlook,
    after_action,
    connector_read_reason,
    decide,
    outlook,
    update_domains,
)
from mxwatch.settings import PolicyConfig
from tests.unit.policy_builders import (
    NOT_CUT_OVER,
    PROVIDER,
    T0,
    TENANT,
    ambiguous,
    connector,
    dobs,
    failure,
    found,
    missing,
)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DOMAIN_NAMES = ("contoso.com", "contoso.net", "contoso.org")
F = Verdict.FILTERED

# Connector reads: (kind, value). "disabled_ok" is the only read an enable may follow.
READS: dict[str, ConnectorRead] = {
    "disabled_ok": found(),
    "none": None,
    "disabled_ok_no_tls": found(require_tls=False),
    "disabled_bad_audit": found(restrict_domains_to_ip_addresses=False),
    "disabled_uncovered": found(sender_ip_addresses=("192.0.2.0/24",)),
    "enabled": found(enabled=True),
    "missing": missing(),
    "ambiguous": ambiguous(),
    "transient": failure(ErrorKind.TRANSIENT),
    "blocked": failure(ErrorKind.BLOCKED),
    "credentials": failure(ErrorKind.CREDENTIALS),
}
AUDITED_OK = frozenset({"disabled_ok", "disabled_ok_no_tls"})
OUTCOMES = ("as_asked", "opposite", "transient", "blocked", "credentials")

# Filtered is the common case, so that many examples get far enough to enable.
verdicts = st.sampled_from(
    [F, F, F, F, F, Verdict.DIRECT, Verdict.MIXED, Verdict.NO_MX, Verdict.UNKNOWN, Verdict.UNKNOWN]
)
ttls = st.none() | st.sampled_from([30, 300, 600, 3600, 7200, 86400])
seconds = st.integers(min_value=0, max_value=4 * 3600).map(lambda s: timedelta(seconds=s))


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    return PolicyConfig(
        confirmations=draw(st.integers(min_value=1, max_value=4)),
        settle=draw(st.none() | seconds),
        min_settle=draw(seconds),
        default_old_ttl=draw(seconds),
        on_regression=draw(st.sampled_from(["alert", "disable"])),
        recheck=draw(st.integers(min_value=300, max_value=12 * 3600).map(_secs)),
    )


def _secs(n: int) -> timedelta:
    return timedelta(seconds=n)


@dataclass(frozen=True)
class Cycle:
    dt: timedelta
    answers: tuple[tuple[Verdict, int | None], ...]  # per domain
    read: str
    obey_read_reason: bool  # False: read even when the policy did not ask (manual run, race)
    outcome: str


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PolicyConfig, int, list[Cycle]]:
    """A config, a domain count, and cycles in phases.

    Each phase draws from its own small pools of verdicts and connector reads, so that a run can
    hold a long all-filtered streak with good reads (and reach enable), then regress, then churn.
    """
    policy = draw(configs())
    n_domains = draw(st.integers(min_value=1, max_value=len(DOMAIN_NAMES)))
    cycles: list[Cycle] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        verdict_pool = draw(
            st.sampled_from([[F], [F, F, F, Verdict.UNKNOWN], [Verdict.DIRECT, F]])
            | st.lists(verdicts, min_size=1, max_size=4)
        )
        read_pool = draw(
            st.sampled_from([["disabled_ok", "none"], ["enabled", "none"]])
            | st.lists(st.sampled_from(list(READS)), min_size=1, max_size=3)
        )
        cycle = st.builds(
            Cycle,
            dt=st.integers(min_value=0, max_value=3 * 3600).map(_secs),
            answers=st.tuples(*[st.tuples(st.sampled_from(verdict_pool), ttls)] * n_domains),
            read=st.sampled_from(read_pool),
            obey_read_reason=st.booleans(),
            outcome=st.sampled_from(OUTCOMES),
        )
        cycles += draw(st.lists(cycle, min_size=1, max_size=12))
    return policy, n_domains, cycles


# ---------------------------------------------------------------------------------------------
# The independent model of what the policy must respect.


@dataclass
class DomainTruth:
    first_filtered: datetime | None = None  # start of the streak; unknown neither starts nor ends
    old_ttl: int | None = None  # TTL of the last non-filtered answer that had one

    def see(self, verdict: Verdict, ttl: int | None, now: datetime) -> None:
        if verdict is F:
            if self.first_filtered is None:
                self.first_filtered = now
        elif verdict in NOT_CUT_OVER:
            self.first_filtered = None
            if ttl is not None:
                self.old_ttl = ttl

    def settled_at(self, policy: PolicyConfig) -> datetime | None:
        if self.first_filtered is None:
            return None
        if policy.settle is not None:
            wait = policy.settle
        elif self.old_ttl is not None:
            wait = max(policy.min_settle, timedelta(seconds=self.old_ttl))
        else:
            wait = max(policy.min_settle, policy.default_old_ttl)
        return self.first_filtered + wait


@dataclass
class Truth:
    domains: dict[str, DomainTruth]
    streak: int = 0  # consecutive all-filtered cycles since the last not-cut-over one
    current: dict[str, Verdict] = field(default_factory=dict)

    def see(self, answers: dict[str, tuple[Verdict, int | None]], now: datetime) -> None:
        for name, (verdict, ttl) in answers.items():
            self.domains[name].see(verdict, ttl, now)
            self.current[name] = verdict
        values = list(self.current.values())
        if any(v in NOT_CUT_OVER for v in values):
            self.streak = 0
        elif all(v is F for v in values):
            self.streak += 1


def _check_transitions(
    before: TenantRecord, after: TenantRecord, transitions: tuple[Transition, ...], now: datetime
) -> None:
    """Each state change is one transition, chained from the old state to the new one."""
    state = before.state.value
    for t in transitions:
        assert t.domain is None
        assert t.tenant == TENANT
        assert t.at == now
        assert t.reason
        assert {"domains", "mx", "connector"} <= set(t.evidence)
        assert t.from_state == state
        # The only self-transition: a blocked tenant whose reason changed.
        assert t.to_state != t.from_state or t.to_state == TenantState.BLOCKED.value
        state = t.to_state
    assert state == after.state.value
    if transitions:
        assert after.since == now
        assert after.reason == transitions[-1].reason
    else:
        assert after.since == before.since
        assert after.reason == before.reason


def _outcome(kind: str, action: Enable | Disable) -> Connector | ExchangeFailure:
    wanted = isinstance(action, Enable)
    if kind == "as_asked":
        return connector(enabled=wanted)
    if kind == "opposite":
        return connector(enabled=not wanted)
    return failure(ErrorKind(kind))


def _decide(
    record: TenantRecord,
    doms: tuple[DomainRecord, ...],
    read: ConnectorRead,
    policy: PolicyConfig,
    now: datetime,
) -> Decision:
    return decide(TENANT, record, doms, read, PROVIDER, policy, now)


@given(scenarios())
@PROPERTY_SETTINGS
def test_simulated_cycles_respect_the_rules(
    scenario: tuple[PolicyConfig, int, list[Cycle]],
) -> None:
    policy, n_domains, cycles = scenario
    names = DOMAIN_NAMES[:n_domains]
    truth = Truth({n: DomainTruth() for n in names})
    record = TenantRecord(TENANT, since=T0)
    known: dict[str, DomainRecord] = {}
    now = T0

    for cycle in cycles:
        now += cycle.dt
        answers = dict(zip(names, cycle.answers, strict=True))
        truth.see(answers, now)

        # Domains: one transition per verdict change.
        observed = {n: dobs(v, domain=n, ttl=ttl, at=now) for n, (v, ttl) in answers.items()}
        doms, domain_moves = update_domains(TENANT, known, observed, now)
        changed = [n for n in names if (known[n].verdict if n in known else None) != answers[n][0]]
        assert [t.domain for t in domain_moves] == changed
        for rec in doms:
            dt = truth.domains[rec.domain]
            assert rec.verdict is answers[rec.domain][0]
            assert rec.filtered_since == dt.first_filtered
            assert rec.old_ttl == dt.old_ttl
        known = {d.domain: d for d in doms}
        view = outlook(doms)

        # Reading the connector.
        why = connector_read_reason(TENANT, record, doms, policy, now)
        read_kind = "none" if why is None and cycle.obey_read_reason else cycle.read
        read = READS[read_kind]
        if why is None:
            # A steady cycle makes no call, so it must not be one where a read could lead to
            # an action.
            assert Enable not in map(
                type, _decide(record, doms, READS["disabled_ok"], policy, now).actions
            )
            if record.state in (TenantState.ENABLED, TenantState.REGRESSED):
                assert not _decide(record, doms, READS["enabled"], policy, now).actions

        decision = _decide(record, doms, read, policy, now)
        assert _decide(record, doms, read, policy, now) == decision, "decide is not pure"

        # Actions.
        kinds = [type(a) for a in decision.actions]
        assert len(kinds) <= 1
        assert not (Enable in kinds and Disable in kinds)
        if Enable in kinds:
            event("enable")
            assert all(answers[n][0] is F for n in names)
            assert view is Outlook.ALL_FILTERED
            assert truth.streak >= policy.confirmations
            assert decision.record.confirmations >= policy.confirmations
            for name in names:
                settled = truth.domains[name].settled_at(policy)
                assert settled is not None and now >= settled, name
            assert read_kind in AUDITED_OK
            assert decision.record.state is TenantState.SETTLING
            assert decision.audit is not None and decision.audit.passed
        if Disable in kinds:
            event("disable")
            assert policy.on_regression == "disable"
            assert view is Outlook.NOT_CUT_OVER
            assert read_kind == "enabled"
            assert decision.record.state is TenantState.REGRESSED
        if decision.record.state is TenantState.SETTLING:
            assert decision.record.confirmations <= truth.streak

        # Unknown is no evidence: with no connector facts, nothing about the tenant moves.
        if view is Outlook.INCONCLUSIVE and read_kind in ("none", "transient"):
            assert decision.record.state is record.state
            assert decision.record.confirmations == record.confirmations
            assert decision.record.regressions == record.regressions
            assert decision.transitions == ()
            assert decision.actions == ()

        _check_transitions(record, decision.record, decision.transitions, now)
        record = decision.record

        for action in decision.actions:
            outcome = _outcome(cycle.outcome, action)
            after = after_action(TENANT, record, doms, action, outcome, now)
            assert after_action(TENANT, record, doms, action, outcome, now) == after
            assert after.actions == ()
            _check_transitions(record, after.record, after.transitions, now)
            if cycle.outcome == "as_asked":
                wanted = TenantState.ENABLED if isinstance(action, Enable) else TenantState.WAITING
                assert after.record.state is wanted
            elif cycle.outcome in ("opposite", "transient"):
                assert after.record.state is record.state
            else:
                assert after.record.state is TenantState.BLOCKED
            record = after.record


@given(scenarios(), st.data())
@PROPERTY_SETTINGS
def test_unknown_cycle_changes_nothing_but_the_domain_verdict(
    scenario: tuple[PolicyConfig, int, list[Cycle]], data: st.DataObject
) -> None:
    """A cycle with some domains unknown, the rest filtered, leaves the tenant record as it was."""
    policy, n_domains, cycles = scenario
    names = DOMAIN_NAMES[:n_domains]
    record = TenantRecord(TENANT, since=T0, connector_checked_at=T0)
    known: dict[str, DomainRecord] = {}
    now = T0
    for cycle in cycles:
        now += cycle.dt
        observed = {
            n: dobs(v, domain=n, ttl=ttl, at=now)
            for n, (v, ttl) in zip(names, cycle.answers, strict=True)
        }
        doms, _ = update_domains(TENANT, known, observed, now)
        known = {d.domain: d for d in doms}
        record = _decide(record, doms, None, policy, now).record

    # One more cycle in which some domains are unknown and the rest are filtered.
    now += data.draw(seconds, label="dt")
    unknown = data.draw(
        st.sets(st.sampled_from(names), min_size=1).map(sorted), label="unknown domains"
    )
    observed = {n: dobs(Verdict.UNKNOWN if n in unknown else F, domain=n, at=now) for n in names}
    doms, _ = update_domains(TENANT, known, observed, now)
    for name in unknown:
        before = known.get(name)
        (after,) = (d for d in doms if d.domain == name)
        assert after.filtered_since == (before.filtered_since if before else None)
        assert after.old_ttl == (before.old_ttl if before else None)
    assert outlook(doms) is Outlook.INCONCLUSIVE

    decision = _decide(record, doms, None, policy, now)
    assert decision.record == record
    assert decision.transitions == ()
    assert decision.actions == ()
