"""A model-based test of the policy: random timelines against an independent oracle (issue 8).

A hypothesis state machine drives the pure policy the way cycle.py does (observe -> decide ->
read -> decide -> write -> record) through random timelines: MX changes per domain and per
source with random TTLs, cycles at random gaps, crashes between a write and its record, domains
added to and removed from the config and the accepted domains, accepted-domain reads that fail
or carry names that are not domain names, a connector enabled or disabled by someone else or
failing the audit, and changes of `confirmations`, `settle`, `min_settle`, `default_old_ttl` and
the interval.

Beside it, `Oracle` is written from DESIGN.md §3's sentence alone and shares no code with
mxwatch.policy. The invariant: every Enable the policy asks for, the oracle allows; and no write
ever goes to a connector that fails the audit. A failure prints the seed and the steps (and
`@reproduce_failure` blob) that lead to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from mxwatch.model import (
    AcceptedDomain,
    AcceptedDomains,
    Connector,
    ConnectorLookup,
    DomainRecord,
    ErrorKind,
    ExchangeFailure,
    Intent,
    LookupStatus,
    MxRecord,
    Observation,
    TenantRecord,
    Transition,
    Verdict,
)
from mxwatch.policy import (
    Action,
    Decision,
    Enable,
    Reads,
    Rules,
    action_intent,
    after_action,
    allowed_gap,
    covered_domains,
    decide,
    update_domains,
)
from mxwatch.settings import DaemonConfig, PolicyConfig, Provider, TenantConfig
from mxwatch.verdicts import combine_observations

F, D, M, N, U = (Verdict.FILTERED, Verdict.DIRECT, Verdict.MIXED, Verdict.NO_MX, Verdict.UNKNOWN)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
GUID = "6f2c1a9e-0000-4000-8000-000000000001"
NAME = "Inbound from filter"
PROVIDER = Provider("filter", ("*.inbound.filter.example",))
DOMAINS = ("a.example", "b.example", "c.example", "d.example", "contoso.onmicrosoft.com")
# (label, authoritative): one resolver and two authoritative servers ask about every domain.
SOURCES = (("resolver", False), ("ns1", True), ("ns2", True))
MX = {
    F: (MxRecord(10, "mx1.inbound.filter.example"),),
    D: (MxRecord(0, "x.mail.protection.outlook.com"),),
    M: (MxRecord(10, "mx1.inbound.filter.example"), MxRecord(20, "x.mail.protection.outlook.com")),
    N: (),
    U: (),
}
MINUTE = timedelta(minutes=1)
GAPS = [
    timedelta(seconds=30),
    4 * MINUTE,
    5 * MINUTE,
    5 * MINUTE + timedelta(seconds=20),
    8 * MINUTE,
    9 * MINUTE,
    timedelta(hours=1),
    timedelta(hours=7),
    timedelta(days=3),
]
TTLS = [0, 5, 60, 300, 3600, 86400, 2**31 - 1]
ENABLES: list[int] = []  # enables per example, for the report below


# --------------------------------------------------------------------------------------------
# The oracle: DESIGN.md §3, "The gate, stated once", read literally.


@dataclass(frozen=True)
class Seen:
    """One observation of one domain: when, the verdict of every source, and the gap allowed
    before it (from the interval and jitter of that moment)."""

    at: datetime
    answers: tuple[tuple[Verdict, int | None, bool], ...]  # (verdict, ttl, authoritative)
    gap: timedelta


def combined(seen: Seen) -> Verdict:
    verdicts = [v for v, _, _ in seen.answers]
    if any(v in (D, M, N) for v in verdicts):
        return D  # some not-cut-over answer: not filtered, whichever it is
    if verdicts and all(v is F for v in verdicts):
        return F
    return U


@dataclass
class Oracle:
    history: dict[str, list[Seen]] = field(default_factory=dict)

    def observed(self, domain: str, seen: Seen) -> None:
        self.history.setdefault(domain, []).append(seen)

    def lose(self, at: datetime) -> None:
        """A crash before the record: the observations of that cycle were never kept."""
        for domain, seen in list(self.history.items()):
            self.history[domain] = [s for s in seen if s.at != at]

    def forget_all_but(self, covered: set[str]) -> None:
        """A domain that leaves the covered set starts afresh if it comes back."""
        for domain in list(self.history):
            if domain not in covered:
                del self.history[domain]

    def allows(self, now: datetime, covered: set[str], policy: PolicyConfig) -> str:
        """ "" when an enable at `now` is allowed, else why not."""
        for domain in sorted(covered):
            why = self._domain_ready(domain, now, policy)
            if why:
                return why
        return "" if covered else "nothing covered"

    def _domain_ready(self, domain: str, now: datetime, policy: PolicyConfig) -> str:
        history = self.history.get(domain, [])
        if not history or history[-1].at != now or combined(history[-1]) is not F:
            return f"{domain} not filtered now"
        streak: list[Seen] = []
        for seen in reversed(history):
            verdict = combined(seen)
            if verdict is U:
                continue
            if verdict is not F:
                break
            if streak and streak[-1].at - seen.at > streak[-1].gap:
                break
            streak.append(seen)
        if len(streak) < policy.confirmations:
            return f"{domain} filtered {len(streak)} times in a row"
        start = streak[-1].at
        if now < start + self._settle(history, policy):
            return f"{domain} not settled"
        return ""

    @staticmethod
    def _settle(history: list[Seen], policy: PolicyConfig) -> timedelta:
        if policy.settle is not None:
            return policy.settle
        olds = []
        for seen in history:
            for verdict, ttl, authoritative in seen.answers:
                if verdict not in (D, M, N):
                    continue
                first_hand = authoritative and ttl is not None
                seconds = timedelta(seconds=ttl or 0)
                olds.append(seconds if first_hand else max(seconds, policy.default_old_ttl))
        old = max(olds) if olds else policy.default_old_ttl
        return max(policy.min_settle, min(old, timedelta(days=7)))


# --------------------------------------------------------------------------------------------
# The simulated outside world.


@dataclass
class World:
    answers: dict[str, dict[str, tuple[Verdict, int]]]
    accepted: set[str]
    connector_exists: bool = True
    connector_enabled: bool = False
    connector_passes_audit: bool = True
    fail_connector_read: bool = False
    fail_accepted_read: bool = False
    unreadable_accepted: bool = False

    def connector(self) -> Connector:
        return Connector(
            name=NAME,
            guid=GUID,
            enabled=self.connector_enabled,
            connector_type="Partner" if self.connector_passes_audit else "OnPremises",
            sender_domains=("smtp:*;1",),
            sender_ip_addresses=("198.51.100.0/24",),
            restrict_domains_to_ip_addresses=self.connector_passes_audit,
            restrict_domains_to_certificate=False,
            require_tls=True,
        )


@dataclass
class Knobs:
    """The configuration, as the operator may change it between runs."""

    domains: tuple[str, ...] = ("a.example",)
    ignore: tuple[str, ...] = ()
    confirmations: int = 2
    settle: timedelta | None = None
    min_settle: timedelta = 10 * MINUTE
    default_old_ttl: timedelta = timedelta(hours=1)
    interval: timedelta = 5 * MINUTE
    jitter: timedelta = timedelta(seconds=30)

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            confirmations=self.confirmations,
            settle=self.settle,
            min_settle=self.min_settle,
            default_old_ttl=self.default_old_ttl,
        )

    def tenant(self) -> TenantConfig:
        return TenantConfig(
            name="contoso",
            tenant_id="11111111-1111-1111-1111-111111111111",
            connector=NAME,
            provider=PROVIDER,
            domains=self.domains,
            client_id="22222222-2222-2222-2222-222222222222",
            credential=None,  # type: ignore[arg-type]  # the policy never reads it
            ignore_domains=self.ignore,
        )

    def gap(self) -> timedelta:
        return allowed_gap(DaemonConfig(interval=self.interval, jitter=self.jitter))


def expected_covered(knobs: Knobs, accepted: set[str]) -> set[str]:
    """The covered set, from the sentence: domains and accepted domains, minus ignored ones
    and the tenant's onmicrosoft.com domains."""
    listed = set(knobs.domains) | {d for d in accepted if not d.endswith(".onmicrosoft.com")}
    return listed - set(knobs.ignore)


# --------------------------------------------------------------------------------------------
# The machine: the policy driven as cycle.py drives it.


# Mostly filtered, so that enables happen and the gate's edges are reached often.
verdicts = st.sampled_from([F, F, F, F, F, F, D, M, N, U])
mostly = st.sampled_from([True, True, True, False])
rarely = st.sampled_from([False, False, False, True])


class PolicyTimelines(RuleBasedStateMachine):
    @initialize(answer=verdicts, ttl=st.sampled_from(TTLS))
    def start(self, answer: Verdict, ttl: int) -> None:
        self.now = T0
        self.knobs = Knobs()
        self.world = World(
            {d: {s: (answer, ttl) for s, _ in SOURCES} for d in DOMAINS},
            accepted={"a.example", "contoso.onmicrosoft.com"},
        )
        self.record = TenantRecord("contoso", since=T0)
        self.domains: dict[str, DomainRecord] = {}
        self.intent: Intent | None = None
        self.oracle = Oracle()
        self.crash_next_write = False
        self.enables = 0

    # -- the world changes -------------------------------------------------------------------

    @rule(domain=st.sampled_from(DOMAINS), answer=verdicts, ttl=st.sampled_from(TTLS))
    def move_mx(self, domain: str, answer: Verdict, ttl: int) -> None:
        self.world.answers[domain] = {s: (answer, ttl) for s, _ in SOURCES}

    @rule(
        domain=st.sampled_from(DOMAINS),
        source=st.sampled_from([s for s, _ in SOURCES]),
        answer=verdicts,
        ttl=st.sampled_from(TTLS),
    )
    def one_source_disagrees(self, domain: str, source: str, answer: Verdict, ttl: int) -> None:
        self.world.answers[domain][source] = (answer, ttl)

    @rule(domain=st.sampled_from(DOMAINS))
    def accept_or_drop_domain(self, domain: str) -> None:
        self.world.accepted ^= {domain}

    @rule(domain=st.sampled_from(DOMAINS[:4]))
    def configure_or_drop_domain(self, domain: str) -> None:
        listed = list(self.knobs.domains)
        self.knobs.domains = tuple(
            [d for d in listed if d != domain] if domain in listed else [*listed, domain]
        )
        self.knobs.ignore = tuple(d for d in self.knobs.ignore if d not in self.knobs.domains)

    @rule(domain=st.sampled_from(DOMAINS[:4]))
    def ignore_or_watch_domain(self, domain: str) -> None:
        if domain not in self.knobs.domains:
            self.knobs.ignore = tuple(set(self.knobs.ignore) ^ {domain})

    @rule(enabled=st.booleans())
    def someone_else_flips_the_connector(self, enabled: bool) -> None:
        self.world.connector_enabled = enabled

    @rule(passes=mostly, exists=mostly)
    def connector_changes(self, passes: bool, exists: bool) -> None:
        self.world.connector_passes_audit = passes
        self.world.connector_exists = exists

    @rule(connector=rarely, accepted=rarely, unreadable=rarely)
    def next_reads_fail(self, connector: bool, accepted: bool, unreadable: bool) -> None:
        self.world.fail_connector_read = connector
        self.world.fail_accepted_read = accepted
        self.world.unreadable_accepted = unreadable

    def teardown(self) -> None:
        ENABLES.append(self.enables)

    @rule()
    def crash_after_the_next_write(self) -> None:
        self.crash_next_write = True

    @rule(
        confirmations=st.integers(1, 3),
        settle=st.sampled_from([None, None, timedelta(0), 10 * MINUTE, timedelta(hours=2)]),
        min_settle=st.sampled_from([timedelta(0), 10 * MINUTE]),
        default_old_ttl=st.sampled_from([timedelta(0), 5 * MINUTE, timedelta(hours=1)]),
        interval=st.sampled_from([MINUTE, 5 * MINUTE, timedelta(hours=1)]),
    )
    def operator_edits_the_policy(
        self,
        confirmations: int,
        settle: timedelta | None,
        min_settle: timedelta,
        default_old_ttl: timedelta,
        interval: timedelta,
    ) -> None:
        self.knobs = replace(
            self.knobs,
            confirmations=confirmations,
            settle=settle,
            min_settle=min_settle,
            default_old_ttl=default_old_ttl,
            interval=interval,
        )

    # -- a cycle -----------------------------------------------------------------------------

    @rule(gap=st.sampled_from(GAPS), count=st.integers(1, 15))
    def cycles(self, gap: timedelta, count: int) -> None:
        """`count` cycles `gap` apart; the first one may come after a longer pause."""
        for _ in range(count):
            self.cycle(gap)

    @rule()
    def cycles_at_the_interval_until_something_happens(self) -> None:
        """A daemon left alone: cycles every interval until the tenant leaves waiting/settling
        (at most 100), which takes most timelines to their enable decision."""
        for _ in range(100):
            if self.record.state.value not in ("waiting", "settling"):
                break
            self.cycle(self.knobs.interval)

    @rule(pause=st.sampled_from(GAPS))
    def cycle(self, pause: timedelta) -> None:
        self.now += pause
        rules = Rules(self.knobs.policy(), self.knobs.gap())
        tenant = self.knobs.tenant()
        records = dict(self.domains)
        accepted = [d for d, r in records.items() if r.accepted]
        covered = covered_domains(tenant, accepted)
        self._observe(covered, records, rules)
        decision = self._decide(covered, records, rules, None)
        cycle_reads: Reads | None = None
        if decision.needs_connector:
            cycle_reads = self._reads()
            if isinstance(cycle_reads.accepted, AcceptedDomains):
                names = set(cycle_reads.accepted.names)
                covered = covered_domains(tenant, cycle_reads.accepted.names)
                self._observe([d for d in covered if d not in records], records, rules)
                for domain in covered:
                    records[domain] = replace(records[domain], accepted=domain in names)
            decision = self._decide(covered, records, rules, cycle_reads)
            if cycle_reads.covered_read:
                assert isinstance(cycle_reads.accepted, AcceptedDomains)
                read = set(cycle_reads.accepted.names)
                assert set(covered) == expected_covered(self.knobs, read)
        record = decision.record
        self._check_chain(self.record, decision.transitions)
        intent = None if decision.intent_settled else self.intent
        for action in decision.actions:
            self._check(action, cycle_reads)
            intent = action_intent(action, self.now)
            self.world.connector_enabled = isinstance(action, Enable)
            if self.crash_next_write:  # kill -9 after the write: only the intent was saved
                self.crash_next_write = False
                self.intent = intent
                self.oracle.lose(self.now)
                return
            after = after_action(
                "contoso",
                record,
                [records[d] for d in covered],
                action,
                self.world.connector(),
                self.now,
            )
            self._check_chain(record, after.transitions)
            record = after.record
            intent = None if after.intent_settled else intent
        self.record, self.intent = record, intent
        self.domains = {d: records[d] for d in covered}
        self.oracle.forget_all_but(set(covered))

    def _observe(
        self, names: list[str] | tuple[str, ...], records: dict[str, DomainRecord], rules: Rules
    ) -> None:
        observed = {}
        for domain in names:
            answers = [
                (*self.world.answers[domain][source], authoritative)
                for source, authoritative in SOURCES
            ]
            sources = [
                Observation(
                    domain,
                    source,
                    verdict,
                    MX[verdict],
                    None if verdict is U else ttl,
                    "simulated",
                    self.now,
                    authoritative,
                )
                for (source, authoritative), (verdict, ttl, _) in zip(SOURCES, answers, strict=True)
            ]
            observed[domain] = combine_observations(domain, sources, self.now)
            raw = tuple((v, None if v is U else t, a) for v, t, a in answers)
            self.oracle.observed(domain, Seen(self.now, raw, rules.allowed_gap))
        update = update_domains("contoso", records, observed, rules, self.now)
        records.update((r.domain, r) for r in update.records)

    def _decide(
        self,
        covered: tuple[str, ...],
        records: dict[str, DomainRecord],
        rules: Rules,
        reads: Reads | None,
    ) -> Decision:
        return decide(
            "contoso",
            self.record,
            [records[d] for d in covered],
            provider=PROVIDER,
            rules=rules,
            now=self.now,
            reads=reads,
            intent=self.intent,
        )

    def _reads(self) -> Reads:
        world = self.world
        failing = (world.fail_connector_read, world.fail_accepted_read, world.unreadable_accepted)
        world.fail_connector_read = world.fail_accepted_read = world.unreadable_accepted = False
        return self._read(world, *failing)

    @staticmethod
    def _read(world: World, fail_connector: bool, fail_accepted: bool, unreadable: bool) -> Reads:
        if fail_connector:
            return Reads(ExchangeFailure(ErrorKind.TRANSIENT, "simulated 503"))
        if not world.connector_exists:
            lookup = ConnectorLookup(NAME, LookupStatus.MISSING, None, 0, "simulated")
        else:
            lookup = ConnectorLookup(NAME, LookupStatus.FOUND, world.connector(), 1)
        accepted: AcceptedDomains | ExchangeFailure
        if fail_accepted:
            accepted = ExchangeFailure(ErrorKind.TRANSIENT, "listing cut short")
        else:
            names = tuple(AcceptedDomain(d) for d in sorted(world.accepted))
            accepted = AcceptedDomains(names, ("bad\\u200dname",) if unreadable else ())
        return Reads(lookup, accepted)

    @staticmethod
    def _check_chain(before: TenantRecord, transitions: tuple[Transition, ...]) -> None:
        """The journal's tenant transitions form one chain: each starts where the last ended."""
        state = before.state.value
        for transition in transitions:
            if transition.domain is None:
                assert transition.from_state == state, (transition, state)
                state = transition.to_state

    def _check(self, action: Action, reads: Reads | None) -> None:
        """The invariant, checked at the moment the policy asks for a write."""
        assert reads is not None, "a write without reading the connector this cycle"
        assert isinstance(reads.connector, ConnectorLookup) and reads.connector.connector
        assert reads.connector.connector.connector_type == "Partner", "write to a bad connector"
        assert action.guid == GUID
        if not isinstance(action, Enable):
            return
        assert isinstance(reads.accepted, AcceptedDomains) and not reads.accepted.unreadable
        covered = expected_covered(self.knobs, set(reads.accepted.names))
        why_not = self.oracle.allows(self.now, covered, self.knobs.policy())
        assert not why_not, f"enable at {self.now.isoformat()} but the oracle says: {why_not}"
        self.enables += 1


PolicyTimelines.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
test_policy_timelines = PolicyTimelines.TestCase


def test_the_machine_can_enable() -> None:
    """Without this, the invariant could hold only because the harness never enables."""
    machine = PolicyTimelines()
    machine.start(answer=F, ttl=300)
    machine.knobs.default_old_ttl = timedelta(0)  # settle: min_settle, 10 minutes
    for _ in range(6):
        machine.cycle(pause=5 * MINUTE)
    assert machine.enables == 1
    assert machine.world.connector_enabled
    assert machine.record.state.value == "enabled"
