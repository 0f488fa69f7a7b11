"""MX lookups, one per configured resolver, turned into Observations (DESIGN.md §3).

Each resolver in `config.resolvers` is a separate source with its own dnspython resolver that
knows exactly one nameserver (or, for "system", the ones in /etc/resolv.conf), so a failing
source is reported as `unknown` instead of silently falling through to another one.

Asking the domains' authoritative servers (`config.authoritative`) is not implemented yet.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import structlog
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.SOA import SOA

from .config import DnsConfig, ResolverSpec
from .model import DomainObservation, MxRecord, Observation, Verdict
from .policy import combine_observations
from .providers import Provider

log = structlog.get_logger("mxwatch.dns")

NULL_MX_EXCHANGE = "."


# --- pure classification -------------------------------------------------------------------


def normalise_exchange(exchange: str) -> str:
    """Lower case without the trailing dot; the root name (null MX target) stays "."."""
    text = exchange.strip().lower()
    if text in ("", "."):
        return NULL_MX_EXCHANGE
    return text.removesuffix(".")


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
    foreign = [host for host in hosts if not _belongs_to(host, provider)]
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


def _belongs_to(host: str, provider: Provider) -> bool:
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


def unknown(domain: str, source: str, reason: str, now: datetime) -> Observation:
    """An inconclusive answer: never evidence either way."""
    return _observation(domain, source, Verdict.UNKNOWN, (), None, reason, now)


# --- describing failures -------------------------------------------------------------------


def _server_text(nameserver: str | None, port: int) -> str:
    """dnspython's "Do53:127.0.0.1@5353" -> "127.0.0.1:5353" (IPv6 in brackets)."""
    address = (nameserver or "?").removeprefix("Do53:").rsplit("@", 1)[0]
    if ":" in address:
        address = f"[{address}]"
    return f"{address}:{port}"


def _failure_reason(errors: Sequence[dns.resolver.ErrorTuple]) -> str:
    """Why every nameserver of a source failed, e.g. "SERVFAIL from 127.0.0.1:5353"."""
    if not errors:
        return "no nameservers to ask"
    parts = []
    for nameserver, _tcp, port, error, _response in errors:
        server = _server_text(nameserver, port)
        if isinstance(error, str):  # dnspython gives an unwanted rcode as its text
            parts.append(f"{error} from {server}")
        elif isinstance(error, OSError | EOFError):
            parts.append(f"network error with {server}: {error}")
        else:  # the answer did not parse, or made no sense (FormError, bad chaining, ...)
            parts.append(f"malformed answer from {server}: {type(error).__name__}: {error}")
    return "; ".join(dict.fromkeys(parts))


def _negative_ttl(response: dns.message.Message | None) -> int | None:
    """How long resolvers may cache a "no MX" answer (RFC 2308 §5): min(SOA TTL, MINIMUM)."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            for soa in rrset:
                if isinstance(soa, SOA):
                    return min(rrset.ttl, soa.minimum)
    return None


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _answered(
    domain: str, source: str, answer: dns.resolver.Answer, provider: Provider, now: datetime
) -> Observation:
    if answer.rrset is None:  # NODATA
        return classify(domain, source, (), provider, now, ttl=_negative_ttl(answer.response))
    records = [(rd.preference, rd.exchange.to_text()) for rd in answer.rrset if isinstance(rd, MX)]
    return classify(domain, source, records, provider, now, ttl=answer.rrset.ttl)


def _failed(
    domain: str, source: str, exc: Exception, lifetime: float, now: datetime
) -> Observation:
    """NXDOMAIN is an answer (no_mx); everything else leaves the source unknown."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
        ttl = _negative_ttl(next(iter(responses.values()), None))
        return _observation(domain, source, Verdict.NO_MX, (), ttl, "NXDOMAIN", now)
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        reason = f"timeout after {_seconds(lifetime)}"
    elif isinstance(exc, dns.resolver.NoNameservers):
        reason = _failure_reason(exc.kwargs.get("errors", []))
    else:
        reason = f"lookup failed: {type(exc).__name__}: {exc}"
    return unknown(domain, source, reason, now)


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One configured resolver; `problem` is set when it cannot be asked at all."""

    label: str
    resolver: dns.asyncresolver.Resolver | None
    problem: str = ""


def _make_source(spec: ResolverSpec, lifetime: float) -> _Source:
    if spec.address is None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=True)
        except dns.exception.DNSException as exc:
            return _Source(spec.label, None, f"system resolver unusable: {exc}")
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(spec.address, spec.port)]
    # A cached answer would hide a cutover (or a regression) from the next cycle.
    resolver.cache = None
    # SERVFAIL must come back as unknown at once, not be retried until the lifetime ends.
    resolver.retry_servfail = False
    resolver.lifetime = lifetime
    # Two tries within the lifetime: one lost UDP packet should not make the source unknown,
    # yet a slow recursive lookup still gets half the budget.
    resolver.timeout = lifetime / 2
    return _Source(spec.label, resolver)


# --- the observer --------------------------------------------------------------------------


class DnsObserver:
    """Looks up MX records from every configured resolver and classifies them."""

    def __init__(self, config: DnsConfig, *, concurrency: int = 64) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._lifetime = config.timeout.total_seconds()
        self._sources = tuple(_make_source(spec, self._lifetime) for spec in config.resolvers)
        self._concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._peak_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Queries being asked right now (for health and metrics)."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most queries ever in flight at once; never above `concurrency`."""
        return self._peak_in_flight

    async def observe(self, domain: str, provider: Provider, now: datetime) -> DomainObservation:
        """Ask every source about one domain and combine the answers."""
        observations = await asyncio.gather(
            *(self._observe_source(source, domain, provider, now) for source in self._sources)
        )
        return combine_observations(domain, observations, now)

    async def observe_many(
        self, requests: Sequence[tuple[str, Provider]], now: datetime
    ) -> dict[str, DomainObservation]:
        """Observe many domains at once; the results are keyed by domain.

        A domain listed twice is looked up once, with the provider given last.
        """
        unique = dict(requests)
        results = await asyncio.gather(
            *(self.observe(domain, provider, now) for domain, provider in unique.items())
        )
        return {result.domain: result for result in results}

    async def _observe_source(
        self, source: _Source, domain: str, provider: Provider, now: datetime
    ) -> Observation:
        if source.resolver is None:
            return unknown(domain, source.label, source.problem, now)
        async with self._slot():
            observation = await self._lookup(source.label, source.resolver, domain, provider, now)
        log.debug(
            "dns_answer",
            domain=domain,
            source=source.label,
            verdict=str(observation.verdict),
            reason=observation.reason,
        )
        return observation

    async def _lookup(
        self,
        label: str,
        resolver: dns.asyncresolver.Resolver,
        domain: str,
        provider: Provider,
        now: datetime,
    ) -> Observation:
        try:
            answer = await resolver.resolve(
                dns.name.from_text(domain),
                dns.rdatatype.MX,
                raise_on_no_answer=False,
                search=False,
            )
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return _failed(domain, label, exc, self._lifetime, now)
        return _answered(domain, label, answer, provider, now)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold one of the `concurrency` query slots shared by every lookup of this observer."""
        async with self._limiter():
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                yield
            finally:
                self._in_flight -= 1

    def _limiter(self) -> asyncio.Semaphore:
        # A semaphore belongs to the loop it was first used on; `--once` and tests may run
        # this observer under more than one loop over its life.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self._concurrency)
            self._semaphore_loop = loop
        return self._semaphore
