"""MX lookups from every source, turned into Observations (DESIGN.md §3).

Sources:

- Each resolver in `config.resolvers` has its own dnspython resolver that knows exactly one
  nameserver (or, for "system", the ones in /etc/resolv.conf), so a failing source is reported
  as `unknown` instead of silently falling through to another one.
- With `config.authoritative`, every address of the name servers of the domain's zone is a
  source too (`auth:ns1.example.com@192.0.2.53`), asked with RD off and trusted only with AA.
  A secondary that lags behind its primary still serves the old MX, and senders that happen
  to ask it still deliver directly, so it must hold the cutover back. The zone, its NS set and
  the servers' addresses are found through the resolvers and cached for their TTLs (at most a
  day). Only these observations are `authoritative`: a resolver's TTL is what is left in its
  cache.
- The caller keeps the cached lookups in the store between runs (`learned`, then `recall` in
  the next process), so that a steady cycle asks each source one MX query per domain and
  nothing else, in the daemon and in `--once` on a timer alike.

Bounds, so that one hostile zone cannot stall the others:

- NS hosts that share an address are one source, asked once and labelled by the first name
  and how many more there are (`auth:ns1.example.com+2@192.0.2.53`).
- At most `MAX_NS_HOSTS` name servers are resolved and `MAX_SERVER_ADDRESSES` addresses asked
  per zone. A zone over either bound gets an `unknown` source that says so: a server left out
  may be a lagging secondary still serving the old MX, so the domain cannot be `filtered`.
- One domain's whole observation has `BUDGET_TIMEOUTS` x `config.timeout`; whatever has not
  answered by then is `unknown`, its queries cancelled. The budget starts when the domain gets
  one of the `concurrency` domain places, so queueing behind other tenants does not spend it.

Odd data, decided here:

- A CNAME at the domain is followed (RFC 5321 §5.1: senders use the MX of the target). An
  authoritative server speaks only for its own zone: once the chain leaves that zone, whatever
  else the server put in its answer is ignored and the target's own authoritative servers are
  asked, as sources of this domain.
- An MX exchange that is itself a CNAME (forbidden by RFC 2181 §10.3) is classified by the name
  as written, as senders' MTAs mostly do, and the reason says so. Being only a note, it is
  looked up when a host first appears in an MX set, and again after a day.
- IP-literal exchanges never match a provider; names are compared lower case without the dot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import structlog
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A

from .model import DomainObservation, LookupKind, Observation, RememberedLookup
from .names import BadName, normalise_name
from .settings import DnsConfig, Provider, ResolverSpec
from .verdicts import (
    NULL_MX_EXCHANGE,
    classify,
    combine_observations,
    is_ip_literal,
    normalise_exchange,
    nxdomain,
    unknown,
)

log = structlog.get_logger("mxwatch.dns")


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
        observation = classify(
            domain, source, (), provider, now, ttl=_negative_ttl(answer.response)
        )
    else:
        records = _mx_pairs(answer.rrset)
        observation = classify(domain, source, records, provider, now, ttl=answer.rrset.ttl)
    if answer.canonical_name != answer.qname:
        return _noted(observation, f"via CNAME to {_text(answer.canonical_name)}")
    return observation


def _mx_pairs(rrset: dns.rrset.RRset) -> list[tuple[int, str]]:
    return [(rd.preference, rd.exchange.to_text()) for rd in rrset if isinstance(rd, MX)]


def _noted(observation: Observation, note: str) -> Observation:
    return dataclasses.replace(observation, reason=f"{observation.reason} ({note})")


def _text(name: dns.name.Name) -> str:
    return normalise_exchange(name.to_text())


def _failed(
    domain: str, source: str, exc: Exception, lifetime: float, now: datetime
) -> Observation:
    """NXDOMAIN is an answer (no_mx); everything else leaves the source unknown."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
        ttl = _negative_ttl(next(iter(responses.values()), None))
        return nxdomain(domain, source, ttl, now)
    return unknown(domain, source, _failure_text(exc, lifetime), now)


def _failure_text(exc: Exception, lifetime: float) -> str:
    """Why a lookup got no answer, for the reason of an unknown source."""
    if isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout):
        return f"timeout after {_seconds(lifetime)}"
    if isinstance(exc, dns.resolver.NoNameservers):
        return _failure_reason(exc.kwargs.get("errors", []))
    if isinstance(exc, OSError | EOFError):
        return f"network error: {exc}"
    return f"lookup failed: {type(exc).__name__}: {exc}"


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


# --- authoritative servers -----------------------------------------------------------------

MAX_CNAME_HOPS = 8
# Real zones have two to a dozen name servers (the root has 13), each with an address or two
# of each family: 16 hosts and 16 IPv4 addresses leave room for every honest zone, while a zone
# over them costs at most 16 address lookups and 16 x 2 tries of MX queries before it is told
# apart as `unknown`.
MAX_NS_HOSTS = 16
MAX_SERVER_ADDRESSES = 16
# One domain's whole observation may take this many `dns.timeout`s: the zone cut, the NS set
# and the addresses (each one lookup when the resolvers answer), then the servers asked at once
# for one timeout. A CNAME to another zone needs one more round; a resolver that fails over to
# the next one needs a timeout per lookup and makes the domain unknown anyway.
BUDGET_TIMEOUTS = 3
# Delegation data is looked up again after a day even when its TTL is longer, so a zone moved
# to new name servers is noticed within a day.
MAX_CACHE_SECONDS = 86400
# Whether an MX exchange is a CNAME changes no verdict (see `_with_alias_notes`): a host is
# checked when it first appears in an MX set, and again after a day.
ALIAS_RECHECK_SECONDS = MAX_CACHE_SECONDS
# The DNS Flag Day 2020 size: large enough for most MX sets, small enough not to fragment;
# a larger answer comes back truncated and is asked again over TCP.
_EDNS_PAYLOAD = 1232


class DelegationError(Exception):
    """The zone, NS set or server addresses of a name could not be found."""


@dataclass(frozen=True)
class AuthServer:
    """One address of the name servers `hosts` of `zone`; `address` is None when it has none."""

    zone: dns.name.Name
    hosts: tuple[str, ...]
    address: str | None
    problem: str = ""

    @property
    def host(self) -> str:
        """The server as reasons name it."""
        if len(self.hosts) == 1:
            return self.hosts[0]
        return f"{self.hosts[0]} (and {len(self.hosts) - 1} other NS names at {self.address})"

    @property
    def label(self) -> str:
        name = self.hosts[0] + (f"+{len(self.hosts) - 1}" if len(self.hosts) > 1 else "")
        return f"auth:{name}@{self.address}" if self.address else f"auth:{name}"


@dataclass(frozen=True)
class ZoneServers:
    """The servers of one zone to ask, and what the bounds left out (as reasons)."""

    zone: dns.name.Name
    servers: tuple[AuthServer, ...]
    left_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Alias:
    """An authoritative answer ending in a CNAME to a name the server does not answer for."""

    target: dns.name.Name


@dataclass(frozen=True)
class _Ask:
    """What every lookup for one domain's observation shares.

    `followed` grows as the CNAME targets of the domain are followed (they are few and bounded).
    """

    domain: str
    provider: Provider
    now: datetime
    deadline: float  # on the event loop's clock
    followed: set[dns.name.Name] = dataclasses.field(default_factory=set)


def zone_servers(
    zone: dns.name.Name, hosts: Sequence[str], addresses: Mapping[str, tuple[str, ...] | str]
) -> ZoneServers:
    """The servers to ask: one per distinct address, within the bounds.

    `hosts` is the zone's whole NS set; `addresses` has the addresses of the hosts that were
    looked up, or why a host has none.
    """
    left_out = []
    if len(hosts) > MAX_NS_HOSTS:
        left_out.append(
            f"{_text(zone)} has {len(hosts)} name servers; mxwatch asks at most "
            f"{MAX_NS_HOSTS} per zone, so {len(hosts) - MAX_NS_HOSTS} were not asked"
        )
    sharing: dict[str, list[str]] = {}
    unusable = []
    for host, found in addresses.items():
        if isinstance(found, str):
            unusable.append(AuthServer(zone, (host,), None, found))
            continue
        for address in found:
            sharing.setdefault(address, []).append(host)
    ordered = sorted(sharing, key=ipaddress.ip_address)
    if len(ordered) > MAX_SERVER_ADDRESSES:
        left_out.append(
            f"the name servers of {_text(zone)} have {len(ordered)} addresses; mxwatch asks at "
            f"most {MAX_SERVER_ADDRESSES} per zone, so {len(ordered) - MAX_SERVER_ADDRESSES} "
            "were not asked"
        )
    asked = [
        AuthServer(zone, tuple(sorted(sharing[address])), address)
        for address in ordered[:MAX_SERVER_ADDRESSES]
    ]
    return ZoneServers(zone, (*asked, *unusable), tuple(left_out))


T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


async def _before(deadline: float, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when the loop's clock passes `deadline` first (work cancelled)."""
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await work
    except TimeoutError:
        if not timeout.expired():
            raise
        return None


class _Load(Generic[V]):
    """A lookup under way and how many callers wait for it."""

    def __init__(self, task: asyncio.Task[V]) -> None:
        self.task = task
        self.waiters = 0


class _TtlCache(Generic[K, V]):
    """Values kept until their DNS TTL runs out (by the caller's `now`), loaded once at a time.

    Concurrent lookups of one key share a single load, so a cycle over many domains of one
    zone asks for its NS set once; a load that every caller gave up on is cancelled, so it
    holds no query slot. Failures are not cached: the next cycle asks again.
    """

    def __init__(self) -> None:
        self._entries: dict[K, tuple[V, datetime]] = {}
        self._loading: dict[K, _Load[V]] = {}
        self._new: set[K] = set()  # loaded since the last `take_new`

    def put(self, key: K, value: V, expires_at: datetime) -> None:
        """Keep a value found earlier (by another process) until `expires_at`."""
        self._entries[key] = (value, expires_at)

    def take_new(self) -> list[tuple[K, V, datetime]]:
        """The entries loaded since the last call, forgotten as new."""
        new = [(key, *self._entries[key]) for key in self._new if key in self._entries]
        self._new.clear()
        return new

    def cached(self, key: K, now: datetime) -> tuple[bool, V | None]:
        """(True, value) when a fresh value is at hand, without awaiting anything."""
        entry = self._entries.get(key)
        if entry is not None and now < entry[1]:
            return True, entry[0]
        return False, None

    async def get(self, key: K, now: datetime, load: Callable[[], Awaitable[tuple[V, int]]]) -> V:
        hit, value = self.cached(key, now)
        if hit:
            return value  # type: ignore[return-value]  # V itself may include None
        loading = self._loading.get(key)
        # A task belongs to its event loop; an observer may outlive a loop (see _limits).
        if loading is None or loading.task.get_loop() is not asyncio.get_running_loop():
            loading = _Load(asyncio.ensure_future(self._load(key, now, load)))
            self._loading[key] = loading
            loading.task.add_done_callback(lambda done: self._forget(key, done))
        loading.waiters += 1
        try:
            # One caller being cancelled must not cancel the lookup the others wait for.
            return await asyncio.shield(loading.task)
        finally:
            self._leave(key, loading)

    async def _load(self, key: K, now: datetime, load: Callable[[], Awaitable[tuple[V, int]]]) -> V:
        value, ttl = await load()
        seconds = min(max(ttl, 0), MAX_CACHE_SECONDS)
        self._entries[key] = (value, now + timedelta(seconds=seconds))
        self._new.add(key)
        return value

    def _leave(self, key: K, loading: _Load[V]) -> None:
        loading.waiters -= 1
        if loading.waiters == 0 and not loading.task.done():
            loading.task.cancel()
            if self._loading.get(key) is loading:
                del self._loading[key]  # the next caller starts afresh

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        loading = self._loading.get(key)
        if loading is not None and loading.task is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved, so asyncio does not warn when every waiter left


def _find(
    section: Sequence[dns.rrset.RRset], name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    return next((rrset for rrset in section if rrset.name == name and rrset.rdtype == rdtype), None)


def _follow_cnames(
    response: dns.message.Message, name: dns.name.Name, zone: dns.name.Name
) -> dns.name.Name:
    """The end of the CNAME chain from `name` in the answer section, or its first name outside
    `zone`: a server is authoritative for its own zone only, so what it says of another zone's
    names (their CNAMEs, their MX) is not taken from it."""
    current = name
    for _ in range(MAX_CNAME_HOPS):
        if not current.is_subdomain(zone):
            break
        rrset = _find(response.answer, current, dns.rdatatype.CNAME)
        targets = [rd.target for rd in rrset or () if isinstance(rd, CNAME)]
        if not targets:
            break
        current = targets[0]
    return current


def _authoritative_answer(
    domain: str,
    server: AuthServer,
    name: dns.name.Name,
    response: dns.message.Message,
    provider: Provider,
    now: datetime,
) -> Observation | _Alias:
    """One server's answer: refused, not authoritative, an MX set, NODATA, or an alias exit."""
    label, rcode = server.label, response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return unknown(domain, label, f"{dns.rcode.to_text(rcode)} from {server.host}", now)
    if not response.flags & dns.flags.AA:
        reason = (
            f"answer without the AA flag: {server.host} is not authoritative for "
            f"{_text(server.zone)} (lame delegation)"
        )
        return unknown(domain, label, reason, now)
    final = _follow_cnames(response, name, server.zone)
    if not final.is_subdomain(server.zone):
        return _Alias(final)  # its rcode and records are for a name of another zone
    mx = _find(response.answer, final, dns.rdatatype.MX)
    has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
    if rcode == dns.rcode.NXDOMAIN:
        observation = nxdomain(domain, label, _negative_ttl(response), now)
    elif mx is not None:
        observation = classify(domain, label, _mx_pairs(mx), provider, now, ttl=mx.ttl)
    elif final != name and not has_soa:
        return _Alias(final)  # a referral: the target is in a zone delegated from this one
    else:
        observation = classify(domain, label, (), provider, now, ttl=_negative_ttl(response))
    return _noted(observation, f"via CNAME to {_text(final)}") if final != name else observation


def _from_server(observation: Observation) -> Observation:
    return dataclasses.replace(observation, authoritative=True)


def _zone_from_negative(
    candidate: dns.name.Name, response: dns.message.Message | None
) -> tuple[dns.name.Name, int] | None:
    """The zone named by the SOA of a NODATA/NXDOMAIN answer for `candidate`, if any."""
    if response is None:
        return None
    for rrset in response.answer:
        if rrset.name == candidate and rrset.rdtype == dns.rdatatype.CNAME:
            return None  # an alias: the SOA is of the target's zone, not of `candidate`'s
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and candidate.is_subdomain(rrset.name):
            return rrset.name, _negative_ttl(response) or 0
    return None


def _nxdomain_response(
    exc: dns.resolver.NXDOMAIN, name: dns.name.Name
) -> dns.message.Message | None:
    responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
    return responses.get(name)


def _is_host_name(exchange: str) -> bool:
    return exchange != NULL_MX_EXCHANGE and not is_ip_literal(exchange)


def _with_alias_notes(observation: Observation, aliases: Mapping[str, str]) -> Observation:
    hosts = dict.fromkeys(record.exchange for record in observation.mx)
    notes = [
        f"{host} is a CNAME to {aliases[host]}, which RFC 2181 §10.3 forbids for an MX "
        "exchange; classified by the name as written"
        for host in hosts
        if host in aliases
    ]
    if not notes:
        return observation
    return dataclasses.replace(observation, reason="; ".join([observation.reason, *notes]))


def _well_formed(lookup: RememberedLookup) -> bool:
    """Whether what a kept lookup found can be used as this module uses it (a name it parses,
    an address it sorts); another one is looked up again."""
    if lookup.kind is LookupKind.ZONE and len(lookup.found) != 1:
        return False
    if lookup.kind is LookupKind.ADDRESSES:
        return all(map(_is_ipv4, lookup.found))
    return lookup.kind is LookupKind.ALIAS or all(map(_is_name, lookup.found))


@functools.lru_cache(maxsize=1024)  # a fleet's zones share a few name servers
def _is_name(text: str) -> bool:
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException:
        return False
    return True


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- the observer --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    """The slots of one event loop: queries in flight, and domains being observed."""

    loop: asyncio.AbstractEventLoop
    queries: asyncio.Semaphore
    domains: asyncio.Semaphore


class DnsObserver:
    """Looks up MX records from every source (resolvers, authoritative servers) and classifies
    them. One observer is meant to live as long as the process: it caches delegations.

    Any number of `observe` and `observe_many` calls may run at once on one event loop: they
    share `concurrency` query slots, and as many places for domains being observed.
    """

    def __init__(self, config: DnsConfig, *, concurrency: int = 64) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._lifetime = config.timeout.total_seconds()
        self._budget = BUDGET_TIMEOUTS * self._lifetime
        self._sources = tuple(_make_source(spec, self._lifetime) for spec in config.resolvers)
        self._authoritative = config.authoritative
        self._auth_port = config.authoritative_port
        self._concurrency = concurrency
        self._limits_now: _Limits | None = None
        self._in_flight = 0
        self._peak_in_flight = 0
        self._queries: Counter[str] = Counter()
        # Every lookup kept for its TTL, by what it found: names in, names or addresses out.
        self._kept: dict[LookupKind, _TtlCache[str, tuple[str, ...]]] = {
            kind: _TtlCache() for kind in LookupKind
        }

    @property
    def in_flight(self) -> int:
        """Queries holding a slot right now; read by the tests (0 once all is done)."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most queries ever in flight at once; read by the tests (never above
        `concurrency`)."""
        return self._peak_in_flight

    @property
    def query_counts(self) -> Mapping[str, int]:
        """Lookups asked so far, by kind; read by the tests, to see what the caches save and
        that the bounds hold.

        Kinds: "mx" (a resolver source), "soa", "ns", "a" (finding authoritative servers),
        "cname" (is an MX exchange an alias?), "auth_mx" (one query to one authoritative
        server) and "auth_tcp" (of those, answered over TCP after a truncated UDP answer).
        """
        return dict(self._queries)

    def recall(self, lookups: Iterable[RememberedLookup], now: datetime) -> None:
        """Take up lookups an earlier run kept (from the store). One that claims to last longer
        than this observer would keep it (a clock set back, a hand-edited store) is left out."""
        latest = now + timedelta(seconds=MAX_CACHE_SECONDS)
        for lookup in lookups:
            if now < lookup.expires_at <= latest and _well_formed(lookup):
                self._kept[lookup.kind].put(lookup.name, lookup.found, lookup.expires_at)

    def learned(self) -> list[RememberedLookup]:
        """The lookups made since the last call, for the store to keep for the next run."""
        return [
            RememberedLookup(kind, name, found, expires_at)
            for kind, cache in self._kept.items()
            for name, found, expires_at in cache.take_new()
        ]

    async def observe(self, domain: str, provider: Provider, now: datetime) -> DomainObservation:
        """Ask every source about one domain and combine the answers, within the budget."""
        try:
            name = dns.name.from_text(normalise_name(domain))
        except (BadName, dns.exception.DNSException) as exc:
            reason = f"not a valid domain name: {exc}"
            return combine_observations(domain, [unknown(domain, "config", reason, now)], now)
        # The budget starts once the domain has a place: waiting behind other tenants' domains
        # must not spend it.
        async with self._limits().domains:
            deadline = asyncio.get_running_loop().time() + self._budget
            ask = _Ask(domain, provider, now, deadline)
            return await self._observe_name(ask, name)

    async def observe_many(
        self, requests: Sequence[tuple[str, Provider]], now: datetime
    ) -> dict[str, DomainObservation]:
        """Observe many domains at once; the results are keyed by domain.

        A domain listed twice is looked up once, with the provider given last.
        """
        pending = iter(dict(requests).items())
        results: dict[str, DomainObservation] = {}

        async def worker() -> None:
            for domain, provider in pending:  # the workers share one iterator
                result = await self.observe(domain, provider, now)
                results[result.domain] = result

        # As many workers as query slots, not a task per domain: the slots bound the queries
        # anyway, and a suspended task per domain would only hold memory.
        workers = min(self._concurrency, len(requests)) or 1
        await asyncio.gather(*(worker() for _ in range(workers)))
        return results

    async def _observe_name(self, ask: _Ask, name: dns.name.Name) -> DomainObservation:
        resolving = self._observe_sources(ask, name)
        if self._authoritative:
            resolved, authoritative = await asyncio.gather(
                resolving, self._ask_zone_servers(ask, name, (name,))
            )
        else:  # no gather (and no task) per domain when there is nothing to run alongside
            resolved, authoritative = await resolving, []
        observations = [*resolved, *authoritative]
        # The notes change no verdict: past the budget, the observations go without them.
        noted = await _before(ask.deadline, self._note_alias_exchanges(observations, ask.now))
        return combine_observations(ask.domain, observations if noted is None else noted, ask.now)

    def _out_of_time(self) -> str:
        return (
            f"no answer within the {_seconds(self._budget)} budget for one domain "
            f"({BUDGET_TIMEOUTS} x dns.timeout)"
        )

    # --- resolver sources ------------------------------------------------------------------

    async def _observe_sources(self, ask: _Ask, name: dns.name.Name) -> list[Observation]:
        if len(self._sources) == 1:
            return [await self._observe_source(self._sources[0], ask, name)]
        return await asyncio.gather(*(self._observe_source(s, ask, name) for s in self._sources))

    async def _observe_source(self, source: _Source, ask: _Ask, name: dns.name.Name) -> Observation:
        if source.resolver is None:
            return unknown(ask.domain, source.label, source.problem, ask.now)
        self._queries["mx"] += 1
        looking_up = self._lookup(source.label, source.resolver, ask, name)
        observation = await _before(ask.deadline, looking_up)
        if observation is None:
            observation = unknown(ask.domain, source.label, self._out_of_time(), ask.now)
        log.debug(
            "dns_answer",
            domain=ask.domain,
            source=source.label,
            verdict=str(observation.verdict),
            reason=observation.reason,
        )
        return observation

    async def _lookup(
        self, label: str, resolver: dns.asyncresolver.Resolver, ask: _Ask, name: dns.name.Name
    ) -> Observation:
        try:
            async with self._slot():
                answer = await resolver.resolve(
                    name, dns.rdatatype.MX, raise_on_no_answer=False, search=False
                )
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return _failed(ask.domain, label, exc, self._lifetime, ask.now)
        return _answered(ask.domain, label, answer, ask.provider, ask.now)

    # --- authoritative sources -------------------------------------------------------------

    async def _ask_zone_servers(
        self, ask: _Ask, name: dns.name.Name, chain: tuple[dns.name.Name, ...]
    ) -> list[Observation]:
        """Every server address of the zone holding `name` (within the bounds) is a source for
        the domain; `chain` is the domain and the CNAME targets that led to `name`."""
        found = await self._zone_servers_of(ask, name)
        if isinstance(found, str):
            reason = f"authoritative servers of {_text(name)} not found: {found}"
            return [unknown(ask.domain, "auth", reason, ask.now)]
        answers = await asyncio.gather(*(self._ask_server(s, ask, name) for s in found.servers))
        observations = [unknown(ask.domain, "auth", reason, ask.now) for reason in found.left_out]
        observations += [_from_server(a) for a in answers if isinstance(a, Observation)]
        targets = dict.fromkeys(answer.target for answer in answers if isinstance(answer, _Alias))
        for target in targets:
            observations += await self._follow_alias(ask, target, chain)
        return observations

    async def _zone_servers_of(self, ask: _Ask, name: dns.name.Name) -> ZoneServers | str:
        """The servers of the zone holding `name`, or why they are not known."""
        try:
            found = await _before(ask.deadline, self._servers_of(name, ask.now))
        except DelegationError as exc:
            return str(exc)
        return found or self._out_of_time()

    async def _follow_alias(
        self, ask: _Ask, target: dns.name.Name, chain: tuple[dns.name.Name, ...]
    ) -> list[Observation]:
        """The target's own servers stand in for the servers that answered with the CNAME."""
        note = f"via CNAME {_text(chain[-1])} to {_text(target)}"
        if target in chain:
            return [unknown(ask.domain, "auth", f"CNAME loop ({note})", ask.now)]
        if target in ask.followed:
            return []  # servers that disagree on the target: its servers are asked already
        if len(ask.followed) >= MAX_CNAME_HOPS:
            reason = f"more than {MAX_CNAME_HOPS} CNAME targets to follow ({note})"
            return [unknown(ask.domain, "auth", reason, ask.now)]
        ask.followed.add(target)
        chased = await self._ask_zone_servers(ask, target, (*chain, target))
        return [_noted(observation, note) for observation in chased]

    async def _ask_server(
        self, server: AuthServer, ask: _Ask, name: dns.name.Name
    ) -> Observation | _Alias:
        if server.address is None:
            reason = f"cannot ask {server.host}: {server.problem}"
            return unknown(ask.domain, server.label, reason, ask.now)
        answer = await _before(ask.deadline, self._query_server(server, server.address, ask, name))
        if answer is None:
            return unknown(ask.domain, server.label, self._out_of_time(), ask.now)
        return answer

    async def _query_server(
        self, server: AuthServer, address: str, ask: _Ask, name: dns.name.Name
    ) -> Observation | _Alias:
        try:
            response = await self._query_authority(address, name)
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return unknown(ask.domain, server.label, _failure_text(exc, self._lifetime), ask.now)
        return _authoritative_answer(ask.domain, server, name, response, ask.provider, ask.now)

    async def _query_authority(self, address: str, name: dns.name.Name) -> dns.message.Message:
        query = dns.message.make_query(name, dns.rdatatype.MX, use_edns=0, payload=_EDNS_PAYLOAD)
        # RD off: the server must answer from its own zone data, never from a cache.
        query.flags &= ~dns.flags.RD
        # Two tries, as for resolvers: one lost UDP packet should not make a server unknown.
        try:
            return await self._send(query, address)
        except dns.exception.Timeout:
            return await self._send(query, address)

    async def _send(self, query: dns.message.Message, address: str) -> dns.message.Message:
        self._queries["auth_mx"] += 1
        async with self._slot():
            # Ignore stray or garbled datagrams and keep waiting for the genuine answer, as
            # the resolver path does: a spoofed packet must not make a server unknown.
            response, used_tcp = await dns.asyncquery.udp_with_fallback(
                query,
                address,
                timeout=self._lifetime / 2,
                port=self._auth_port,
                ignore_unexpected=True,
                ignore_errors=True,
            )
        if used_tcp:
            self._queries["auth_tcp"] += 1
        return response

    # --- finding the authoritative servers (through the resolvers, cached) -----------------

    async def _servers_of(self, name: dns.name.Name, now: datetime) -> ZoneServers:
        zones, servers = self._kept[LookupKind.ZONE], self._kept[LookupKind.NAMESERVERS]
        (zone_text,) = await zones.get(name.to_text(), now, lambda: self._find_zone(name))
        zone = dns.name.from_text(zone_text)
        hosts = await servers.get(zone_text, now, lambda: self._find_nameservers(zone))
        looked_up = hosts[:MAX_NS_HOSTS]
        found = await asyncio.gather(*(self._host_addresses(host, now) for host in looked_up))
        return zone_servers(zone, hosts, dict(zip(looked_up, found, strict=True)))

    async def _host_addresses(self, host: str, now: datetime) -> tuple[str, ...] | str:
        """The host's addresses, or why it has none."""
        try:
            addresses = self._kept[LookupKind.ADDRESSES]
            found = await addresses.get(host, now, lambda: self._find_addresses(host))
        except DelegationError as exc:
            return str(exc)
        return found or "it has no IPv4 address"

    async def _find_zone(self, name: dns.name.Name) -> tuple[tuple[str], int]:
        """Walk up from `name` until an SOA answer shows which zone holds it."""
        candidate = name
        while True:
            found = await self._zone_apex(candidate)
            if found is not None:
                zone, ttl = found
                return (zone.to_text(),), ttl
            if candidate == dns.name.root:
                raise DelegationError(f"no SOA found for {_text(name)} or any parent")
            candidate = candidate.parent()

    async def _zone_apex(self, candidate: dns.name.Name) -> tuple[dns.name.Name, int] | None:
        """The zone holding `candidate` when one SOA lookup shows it, else None (try the parent)."""
        try:
            answer = await self._ask_resolvers(candidate, dns.rdatatype.SOA, "soa")
        except dns.resolver.NXDOMAIN as exc:
            return _zone_from_negative(candidate, _nxdomain_response(exc, candidate))
        if answer.canonical_name != candidate:
            return None  # an alias is never a zone apex; it lives in its parent's zone
        if answer.rrset is not None:
            return candidate, answer.rrset.ttl
        return _zone_from_negative(candidate, answer.response)

    async def _find_nameservers(self, zone: dns.name.Name) -> tuple[tuple[str, ...], int]:
        try:
            answer = await self._ask_resolvers(zone, dns.rdatatype.NS, "ns")
        except dns.resolver.NXDOMAIN:
            raise DelegationError(f"NXDOMAIN for the NS records of {_text(zone)}") from None
        if answer.rrset is None or answer.canonical_name != zone:
            raise DelegationError(f"no NS records at {_text(zone)}")
        hosts = sorted({_text(rd.target) for rd in answer.rrset if isinstance(rd, NS)})
        return tuple(hosts), answer.rrset.ttl

    async def _find_addresses(self, host: str) -> tuple[tuple[str, ...], int]:
        # IPv4 only: a server's IPv6 address would be unreachable from the many hosts without
        # an IPv6 route, and an unreachable server holds every domain of its zone at unknown.
        try:
            answer = await self._ask_resolvers(dns.name.from_text(host), dns.rdatatype.A, "a")
        except dns.resolver.NXDOMAIN:
            raise DelegationError(f"name server {host} does not exist (NXDOMAIN)") from None
        if answer.rrset is None:
            return (), _negative_ttl(answer.response) or 0
        addresses = sorted({rd.address for rd in answer.rrset if isinstance(rd, A)})
        return tuple(addresses), answer.rrset.ttl

    async def _ask_resolvers(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, kind: str
    ) -> dns.resolver.Answer:
        """The first answer from the resolvers, tried in order; NXDOMAIN is an answer too."""
        problems = []
        for source in self._sources:
            if source.resolver is None:
                problems.append(f"{source.label}: {source.problem}")
                continue
            self._queries[kind] += 1
            try:
                async with self._slot():
                    return await source.resolver.resolve(
                        name, rdtype, raise_on_no_answer=False, search=False
                    )
            except dns.resolver.NXDOMAIN:
                raise
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                problems.append(f"{source.label}: {_failure_text(exc, self._lifetime)}")
        kind_text = dns.rdatatype.to_text(rdtype)
        raise DelegationError(f"{kind_text} lookup failed: {'; '.join(problems) or 'no resolver'}")

    # --- MX exchanges that are aliases -----------------------------------------------------

    async def _note_alias_exchanges(
        self, observations: Sequence[Observation], now: datetime
    ) -> list[Observation]:
        hosts = {r.exchange for o in observations for r in o.mx if _is_host_name(r.exchange)}
        aliases: dict[str, tuple[str, ...]] = {}
        remembered = self._kept[LookupKind.ALIAS]
        for host in hosts:  # a steady cycle finds every host here, with no task and no query
            hit, targets = remembered.cached(host, now)
            if hit and targets is not None:
                aliases[host] = targets
        missing = sorted(hosts - aliases.keys())
        found = await asyncio.gather(*(self._alias_of(host, now) for host in missing))
        aliases.update(zip(missing, found, strict=True))
        named = {host: targets[0] for host, targets in aliases.items() if targets}
        return [_with_alias_notes(observation, named) for observation in observations]

    async def _alias_of(self, host: str, now: datetime) -> tuple[str, ...]:
        remembered = self._kept[LookupKind.ALIAS]
        try:
            return await remembered.get(host, now, lambda: self._find_alias(host))
        except DelegationError:
            return ()  # only a note in the reason: a failed check changes no verdict

    async def _find_alias(self, host: str) -> tuple[tuple[str, ...], int]:
        """The CNAME target of an MX exchange, if it is one, kept for ALIAS_RECHECK_SECONDS
        whatever the TTL: the answer only adds a note, so a steady cycle need not ask again."""
        name = dns.name.from_text(host)
        try:
            answer = await self._ask_resolvers(name, dns.rdatatype.CNAME, "cname")
        except dns.resolver.NXDOMAIN:
            return (), ALIAS_RECHECK_SECONDS
        targets = [_text(rd.target) for rd in answer.rrset or () if isinstance(rd, CNAME)]
        return tuple(targets[:1]), ALIAS_RECHECK_SECONDS

    # --- concurrency -----------------------------------------------------------------------

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold one of the `concurrency` query slots shared by every lookup of this observer."""
        async with self._limits().queries:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                yield
            finally:
                self._in_flight -= 1

    def _limits(self) -> _Limits:
        # A semaphore belongs to the loop it was first used on; `--once` and tests may run
        # this observer under more than one loop over its life.
        loop = asyncio.get_running_loop()
        if self._limits_now is None or self._limits_now.loop is not loop:
            slots = self._concurrency
            self._limits_now = _Limits(loop, asyncio.Semaphore(slots), asyncio.Semaphore(slots))
        return self._limits_now
