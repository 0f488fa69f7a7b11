"""`mxwatch check`: what mxwatch would decide about some domains right now, with no state.

The cycle's own code decides: dns.DnsObserver asks every source (the resolvers and, unless
turned off, each domain's authoritative servers) and verdicts.py judges the answers;
policy.update_domains and policy.settle_for give the settle wait the domain would get if its
filtered streak started now. This module adds only what a person needs to read: what is wrong
with a domain that is not cut over, as text and as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import policy
from .dns import DnsObserver
from .model import DomainObservation, MxRecord, Observation, Verdict
from .settings import DaemonConfig, PolicyConfig, Provider
from .verdicts import belongs_to, is_ip_literal


@dataclass(frozen=True)
class DomainCheck:
    observation: DomainObservation
    wrong: tuple[str, ...]  # what keeps the domain from being filtered; empty when it is
    settle: timedelta  # the wait a filtered streak starting now would need
    settle_why: str

    @property
    def filtered(self) -> bool:
        return self.observation.verdict is Verdict.FILTERED


async def check_domains(
    dns: DnsObserver,
    domains: Sequence[str],
    provider: Provider,
    policy_config: PolicyConfig,
    now: datetime,
) -> tuple[DomainCheck, ...]:
    observed = await dns.observe_many([(domain, provider) for domain in domains], now)
    return tuple(judge(observed[domain], provider, policy_config, now) for domain in domains)


def judge(
    observation: DomainObservation, provider: Provider, policy_config: PolicyConfig, now: datetime
) -> DomainCheck:
    # One look has no previous observation, so the allowed gap plays no part.
    rules = policy.Rules(policy_config, policy.allowed_gap(DaemonConfig()))
    update = policy.update_domains("check", {}, {observation.domain: observation}, rules, now)
    settle, why = policy.settle_for(update.records[0], policy_config)
    return DomainCheck(observation, what_is_wrong(observation, provider), settle, why)


def what_is_wrong(observation: DomainObservation, provider: Provider) -> tuple[str, ...]:
    """One line per problem, naming the sources that saw it unless every source did."""
    if observation.verdict is Verdict.FILTERED:
        return ()
    seen_by: dict[str, list[str]] = {}
    for source in observation.sources:
        for problem in _problems(source, provider):
            seen_by.setdefault(problem, []).append(source.source)
    everyone = len(observation.sources)
    return tuple(
        problem if len(sources) == everyone else f"{problem} (from {', '.join(sources)})"
        for problem, sources in seen_by.items()
    ) or (observation.reason,)


def _problems(source: Observation, provider: Provider) -> list[str]:
    if source.verdict is Verdict.FILTERED:
        return []
    if source.verdict is Verdict.UNKNOWN:
        return [f"no usable answer: {source.reason}"]
    if source.verdict is Verdict.NO_MX:
        return [f"no MX: {source.reason}"]
    primary = min(record.preference for record in source.mx)
    return [
        f"{_role(record, primary)} {record.exchange} does not belong to {provider.name}"
        + (" (an IP address, not a host name)" if is_ip_literal(record.exchange) else "")
        for record in source.mx
        if not belongs_to(record.exchange, provider)
    ]


def _role(record: MxRecord, primary: int) -> str:
    # Senders (spammers first) use a backup MX too: it matters as much as the primary.
    return "MX" if record.preference == primary else "backup MX"


# --- what a person reads ------------------------------------------------------------------


def check_lines(results: Sequence[DomainCheck], provider: Provider) -> list[str]:
    lines: list[str] = []
    for result in results:
        observed = result.observation
        lines.append(f"{observed.domain}: {observed.verdict.value} (provider {provider.name})")
        lines += (f"  wrong: {problem}" for problem in result.wrong)
        lines += (f"  {_source_line(source)}" for source in observed.sources)
        seconds = int(result.settle.total_seconds())
        lines.append(f"  settle from now: {seconds}s ({result.settle_why})")
    return lines


def _source_line(source: Observation) -> str:
    mx = ", ".join(f"{r.preference} {r.exchange}" for r in source.mx) or "-"
    ttl = "-" if source.ttl is None else f"{source.ttl}s"
    return f"{source.source:<34} {source.verdict.value:<8} ttl {ttl:<7} {mx}"


def check_document(results: Sequence[DomainCheck], provider: Provider) -> dict[str, Any]:
    return {
        "provider": provider.name,
        "domains": [
            {
                "domain": r.observation.domain,
                "verdict": r.observation.verdict.value,
                "wrong": list(r.wrong),
                "settle_seconds": int(r.settle.total_seconds()),
                "settle_reason": r.settle_why,
                "sources": [
                    {
                        "source": s.source,
                        "authoritative": s.authoritative,
                        "verdict": s.verdict.value,
                        "mx": [{"preference": m.preference, "exchange": m.exchange} for m in s.mx],
                        "ttl": s.ttl,
                        "reason": s.reason,
                    }
                    for s in r.observation.sources
                ],
            }
            for r in results
        ],
    }
