"""One hostile zone must not stall the others: dns.py's bounds and time budget, against the
real Knot lab (tests/fixtures/knot.py `AuthLab`) and servers that read queries and never answer.

The silent servers sit on their own loopback addresses at the lab's port, as the name servers
of zones that only the lab's resolver knows (`AuthLab.add_delegated_zone`); each counts the
datagrams it receives.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from mxwatch.dns import BUDGET_TIMEOUTS, MAX_NS_HOSTS, MAX_SERVER_ADDRESSES, DnsObserver
from mxwatch.model import DomainObservation, Observation, Verdict
from mxwatch.providers import MAILPROTECTOR
from tests.fixtures.bad_dns import BadDns, silent_servers
from tests.fixtures.knot import AuthLab

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FILTER = "mx1.inbound.emailservice.io."
TRIES = 2  # dns.py asks an authoritative server twice before it calls it a timeout


def datagrams(servers: dict[str, BadDns]) -> dict[str, int]:
    return {address: server.count() for address, server in servers.items()}


def auth_sources(result: DomainObservation) -> list[Observation]:
    return [o for o in result.sources if o.source.startswith("auth:")]


def bound_reasons(result: DomainObservation) -> list[str]:
    return [o.reason for o in result.sources if o.source == "auth"]


async def test_hundred_name_servers_on_ten_silent_addresses(auth_lab: AuthLab) -> None:
    silent = [f"127.0.1.{i}" for i in range(1, 11)]
    hosts = [(f"ns{i:03d}", silent[i % 10]) for i in range(100)]
    auth_lab.add_delegated_zone("hostile.test", hosts, mx=[(10, FILTER)])
    auth_lab.add_zone("normal.test", mx=[(10, FILTER)])
    observer = DnsObserver(auth_lab.dns_config(timeout=0.5))
    requests = [("hostile.test", MAILPROTECTOR), ("normal.test", MAILPROTECTOR)]

    with silent_servers(silent, auth_lab.port) as servers:
        started = time.monotonic()
        results = await observer.observe_many(requests, NOW)
        elapsed = time.monotonic() - started
        received = datagrams(servers)

    normal, hostile = results["normal.test"], results["hostile.test"]
    assert normal.verdict is Verdict.FILTERED
    assert len(auth_sources(normal)) == 2
    assert hostile.verdict is Verdict.UNKNOWN
    assert bound_reasons(hostile) == [
        f"hostile.test has 100 name servers; mxwatch asks at most {MAX_NS_HOSTS} per zone, "
        f"so {100 - MAX_NS_HOSTS} were not asked"
    ]
    # Only the first 16 hosts (ns000 to ns015) were resolved, and they have the 10 addresses:
    # one source each, asked at most twice.
    assert observer.query_counts["a"] == MAX_NS_HOSTS + 2  # and ns1, ns2 of normal.test
    labels = sorted(o.source for o in auth_sources(hostile))
    assert len(labels) == 10
    assert "auth:ns000.hostile.test+1@127.0.1.1" in labels  # ns000 and ns010
    assert "auth:ns006.hostile.test@127.0.1.7" in labels  # ns006 alone (ns016 not resolved)
    assert all(1 <= count <= TRIES for count in received.values()), received
    assert sum(received.values()) <= len(labels) * TRIES
    assert {o.reason for o in auth_sources(hostile)} == {"timeout after 0.5s"}
    assert observer.in_flight == 0
    assert elapsed < 10  # about one timeout: the silent servers are asked at once


async def test_budget_ends_a_domain_and_frees_its_query_slots(auth_lab: AuthLab) -> None:
    # One query slot: the 16 silent servers are asked one after the other, 0.2 s per try,
    # far past the 3 x 0.4 s budget.
    silent = [f"127.0.2.{i}" for i in range(1, 17)]
    auth_lab.add_delegated_zone(
        "slow.test", [(f"ns{i}", address) for i, address in enumerate(silent)], mx=[(10, FILTER)]
    )
    auth_lab.add_zone("after.test", mx=[(10, FILTER)])
    observer = DnsObserver(auth_lab.dns_config(timeout=0.4), concurrency=1)

    with silent_servers(silent, auth_lab.port) as servers:
        started = time.monotonic()
        slow = await observer.observe("slow.test", MAILPROTECTOR, NOW)
        elapsed = time.monotonic() - started
        received = datagrams(servers)
    # Had the cancelled queries kept their slot, this would wait for it until its own budget.
    after = await observer.observe("after.test", MAILPROTECTOR, NOW)

    assert slow.verdict is Verdict.UNKNOWN
    budget = f"no answer within the 1.2s budget for one domain ({BUDGET_TIMEOUTS} x dns.timeout)"
    assert len(auth_sources(slow)) == 16
    assert {o.reason for o in auth_sources(slow)} == {budget}
    assert elapsed < 4  # 16 servers x 0.4 s would be 6.4 s
    assert sum(received.values()) < len(silent) * TRIES
    assert after.verdict is Verdict.FILTERED
    assert observer.in_flight == 0


async def test_addresses_beyond_the_bound_are_named_not_skipped(auth_lab: AuthLab) -> None:
    silent = [f"127.0.3.{i}" for i in range(1, 21)]
    auth_lab.add_delegated_zone(
        "wide.test", [("ns", address) for address in silent], mx=[(10, FILTER)]
    )
    observer = DnsObserver(auth_lab.dns_config(timeout=0.4))

    with silent_servers(silent, auth_lab.port) as servers:
        result = await observer.observe("wide.test", MAILPROTECTOR, NOW)
        received = datagrams(servers)

    assert result.verdict is Verdict.UNKNOWN
    assert bound_reasons(result) == [
        f"the name servers of wide.test have 20 addresses; mxwatch asks at most "
        f"{MAX_SERVER_ADDRESSES} per zone, so 4 were not asked"
    ]
    asked = [address for address, count in received.items() if count]
    assert len(asked) == MAX_SERVER_ADDRESSES
    assert len(auth_sources(result)) == MAX_SERVER_ADDRESSES
