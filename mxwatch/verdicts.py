"""Verdicts, pure (DESIGN.md §3's two tables): one source's MX answer -> a verdict, and the
answers of every source for one domain -> the domain's combined verdict for the cycle.

No I/O: dns.py asks the servers and hands the answers here, so every rule about what an MX set
means is testable without a socket.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime

from .model import DomainObservation, MxRecord, Observation, Verdict
from .settings import Provider

NULL_MX_EXCHANGE = "."


def normalise_exchange(exchange: str) -> str:
    """Lower case without the trailing dot; the root name (null MX target) stays "."."""
    text = exchange.strip().lower()
    if text in ("", "."):
        return NULL_MX_EXCHANGE
    return text.removesuffix(".")


@functools.lru_cache(maxsize=4096)  # the same few MX hosts recur across thousands of domains
def is_ip_literal(host: str) -> bool:
    """An MX exchange must be a host name (RFC 5321 §5.1); an address is a misconfiguration."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def classify(
    domain: str,
    source: str,
    records: Iterable[tuple[int, str]],
    provider: Provider,
    now: datetime,
    *,
    ttl: int | None = None,
) -> Observation:
    """The verdict of one source's MX answer: `records` are (preference, exchange) pairs.

    An empty answer is NODATA. Preference never matters: senders (spammers especially) use
    the backup MX too, so every exchange must belong to the provider.
    """
    mx = tuple(sorted(MxRecord(pref, normalise_exchange(host)) for pref, host in records))
    if not mx:
        return _observation(domain, source, Verdict.NO_MX, mx, ttl, "NODATA (no MX records)", now)
    if len(mx) == 1 and mx[0].exchange == NULL_MX_EXCHANGE:
        reason = "null MX (RFC 7505)"
        if mx[0].preference != 0:
            reason += f" with preference {mx[0].preference}"
        return _observation(domain, source, Verdict.NO_MX, mx, ttl, reason, now)
    verdict, reason = _match_verdict(mx, provider)
    return _observation(domain, source, verdict, mx, ttl, reason, now)


def _match_verdict(mx: tuple[MxRecord, ...], provider: Provider) -> tuple[Verdict, str]:
    hosts = [record.exchange for record in mx]
    foreign = [host for host in hosts if not belongs_to(host, provider)]
    if not foreign:
        return Verdict.FILTERED, f"all {len(hosts)} MX match {provider.name}"
    listed = ", ".join(foreign)
    if len(foreign) == len(hosts):
        verdict, reason = Verdict.DIRECT, f"no MX matches {provider.name}: {listed}"
    else:
        matching = len(hosts) - len(foreign)
        verdict = Verdict.MIXED
        reason = f"{matching} of {len(hosts)} MX match {provider.name}; not matching: {listed}"
    return verdict, reason + "".join(_anomalies(foreign))


def belongs_to(host: str, provider: Provider) -> bool:
    """An MX exchange of the provider: a host name it matches (never "." or an address)."""
    if host == NULL_MX_EXCHANGE or is_ip_literal(host):
        return False
    return provider.matches(host)


def _anomalies(foreign: Sequence[str]) -> Iterable[str]:
    """Explain exchanges that are not host names, so an operator sees why they can't match."""
    for host in foreign:
        if is_ip_literal(host):
            yield f"; {host} is an IP address, not a host name"
        elif host == NULL_MX_EXCHANGE:
            yield "; null MX '.' next to other MX records (invalid per RFC 7505)"


def _observation(
    domain: str,
    source: str,
    verdict: Verdict,
    mx: tuple[MxRecord, ...],
    ttl: int | None,
    reason: str,
    now: datetime,
) -> Observation:
    return Observation(
        domain=domain,
        source=source,
        verdict=verdict,
        mx=mx,
        ttl=ttl,
        reason=reason,
        checked_at=now,
    )


def nxdomain(domain: str, source: str, ttl: int | None, now: datetime) -> Observation:
    """The domain does not exist: no MX, so not cut over."""
    return _observation(domain, source, Verdict.NO_MX, (), ttl, "NXDOMAIN", now)


def unknown(domain: str, source: str, reason: str, now: datetime) -> Observation:
    """An inconclusive answer: never evidence either way."""
    return _observation(domain, source, Verdict.UNKNOWN, (), None, reason, now)


# --- combining the sources of one domain ----------------------------------------------------

# Among not-cut-over answers, the one reported for the domain: the one losing the most mail
# if the connector were enabled.
_SEVERITY = {Verdict.DIRECT: 3, Verdict.MIXED: 2, Verdict.NO_MX: 1}


def combine_observations(
    domain: str, observations: Sequence[Observation], checked_at: datetime
) -> DomainObservation:
    """The domain's verdict for this cycle from every source's answer (DESIGN.md §3).

    filtered only if every source answered filtered; any direct/mixed/no_mx wins (the worst);
    otherwise unknown, which is never evidence either way.
    """
    contradicting = [o for o in observations if o.verdict in _SEVERITY]
    if contradicting:
        worst = max(contradicting, key=lambda o: _SEVERITY[o.verdict])
        return _combined(domain, worst.verdict, worst, observations, checked_at)
    unknown = [o for o in observations if o.verdict is Verdict.UNKNOWN]
    if unknown or not observations:
        reason = "; ".join(f"{o.source}: {o.reason}" for o in unknown) or "no source answered"
        return DomainObservation(
            domain, Verdict.UNKNOWN, (), None, reason, checked_at, tuple(observations)
        )
    first = observations[0]
    return _combined(domain, Verdict.FILTERED, first, observations, checked_at)


def _combined(
    domain: str,
    verdict: Verdict,
    chosen: Observation,
    observations: Sequence[Observation],
    checked_at: datetime,
) -> DomainObservation:
    mx: tuple[MxRecord, ...] = chosen.mx
    ttls = [o.ttl for o in observations if o.verdict is verdict and o.ttl is not None]
    ttl = max(ttls) if ttls else chosen.ttl
    reason = f"{chosen.source}: {chosen.reason}"
    return DomainObservation(domain, verdict, mx, ttl, reason, checked_at, tuple(observations))
