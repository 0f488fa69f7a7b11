"""The embedded DNS server (mxwatch/sandbox/dns_server.py), which `mxwatch demo` runs.

It must answer as a real authoritative server does, or the demo would show mxwatch against a
server no domain has: the same queries go to it and to Knot DNS serving the same zone, and
the answers must agree. Then mxwatch's own DnsObserver meets a `DnsLab` as it meets the
Knot lab (tests/fixtures/knot.py `AuthLab`): every source asked, the lagging secondary holding
the verdict back, the TTLs as set, a large answer over TCP.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.update
import pytest

from mxwatch.dns import DnsObserver
from mxwatch.model import Verdict
from mxwatch.providers import MAILPROTECTOR
from mxwatch.sandbox.dns_server import (
    PRIMARY_ADDRESS,
    SECONDARY_ADDRESS,
    DnsLab,
    DnsServer,
    Zone,
)
from mxwatch.settings import DnsConfig, ResolverSpec
from tests.fixtures.knot import KnotServer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FILTER = "mx1.inbound.emailservice.io."
FILTER_2 = "mx2.inbound.emailservice.cc."
MICROSOFT = "diff-test.mail.protection.outlook.com."
ZONE = "diff.test"
BIG_TXT = [f'"{"x" * 200} {n}"' for n in range(20)]  # about 4 KB: over any UDP limit here

# (name, type) asked of both servers: answers, NODATA, NXDOMAIN, an empty non-terminal,
# CNAMEs in and out of the zone, the apex's SOA and NS, and a name of no zone of theirs.
QUESTIONS = [
    (ZONE, "MX"),
    (ZONE, "AAAA"),
    (ZONE, "SOA"),
    (ZONE, "NS"),
    (f"nope.{ZONE}", "MX"),
    (f"b.{ZONE}", "A"),
    (f"a.b.{ZONE}", "A"),
    (f"alias.{ZONE}", "A"),
    (f"alias.{ZONE}", "CNAME"),
    (f"out.{ZONE}", "MX"),
    (f"WWW.{ZONE.upper()}", "A"),
    ("other.invalid", "MX"),
]


def _rrsets(section: list[dns.rrset.RRset]) -> set[tuple[str, int, str, tuple[str, ...]]]:
    """A section as comparable values; an SOA's serial is left out (each server keeps its own)."""
    found = set()
    for rrset in section:
        texts = []
        for rdata in rrset:
            text = rdata.to_text()
            if rrset.rdtype == dns.rdatatype.SOA:
                parts = text.split()
                text = " ".join([*parts[:2], "SERIAL", *parts[3:]])
            texts.append(text)
        kind = dns.rdatatype.to_text(rrset.rdtype)
        found.add((rrset.name.to_text().lower(), rrset.ttl, kind, tuple(sorted(texts))))
    return found


def _shape(response: dns.message.Message) -> dict[str, object]:
    return {
        "rcode": dns.rcode.to_text(response.rcode()),
        "aa": bool(response.flags & dns.flags.AA),
        "tc": bool(response.flags & dns.flags.TC),
        "answer": _rrsets(response.answer),
        "authority": _rrsets(response.authority),
    }


def _ask(
    address: str, port: int, name: str, rdtype: str, *, tcp: bool = False, edns: int = 0
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=edns, payload=1232)
    query.flags &= ~dns.flags.RD  # as mxwatch asks an authoritative server
    if tcp:
        return dns.query.tcp(query, address, port=port, timeout=2)
    return dns.query.udp(query, address, port=port, timeout=2)


@pytest.fixture
def twins(knot: KnotServer) -> Iterator[tuple[KnotServer, DnsServer]]:
    """Knot and the embedded server, each serving the same zone."""
    knot.add_zone(
        ZONE,
        [
            "www A 192.0.2.1",
            "a.b A 192.0.2.2",
            "alias CNAME www",
            "out CNAME mail.example.net.",
            *(f"big TXT {text}" for text in BIG_TXT),
        ],
        mx=[(10, FILTER), (20, FILTER_2)],
        ttl=120,
        negative_ttl=30,
    )
    zone = Zone(ZONE, nameservers=[(f"ns.{ZONE}", "127.0.0.1")], ttl=120, negative_ttl=30)
    zone.set_mx("@", [(10, FILTER), (20, FILTER_2)])
    zone.set(f"www.{ZONE}", "A", ["192.0.2.1"])
    zone.set(f"a.b.{ZONE}", "A", ["192.0.2.2"])
    zone.set(f"alias.{ZONE}", "CNAME", [f"www.{ZONE}"])
    zone.set(f"out.{ZONE}", "CNAME", ["mail.example.net."])
    zone.set(f"big.{ZONE}", "TXT", BIG_TXT)
    with DnsServer() as server:
        server.add_zone(zone)
        yield knot, server


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
def test_answers_as_knot_does(twins: tuple[KnotServer, DnsServer], name: str, rdtype: str) -> None:
    knot, ours = twins
    expected = _shape(_ask(knot.address, knot.port, name, rdtype))
    assert _shape(_ask(ours.address, ours.port, name, rdtype)) == expected


@pytest.mark.parametrize(
    ("transport", "edns"), [("udp", -1), ("udp", 0), ("tcp", -1)], ids=["udp", "udp-edns", "tcp"]
)
def test_a_large_answer_is_truncated_over_udp_as_knot_does(
    twins: tuple[KnotServer, DnsServer], transport: str, edns: int
) -> None:
    knot, ours = twins
    tcp = transport == "tcp"
    expected = _ask(knot.address, knot.port, f"big.{ZONE}", "TXT", tcp=tcp, edns=edns)
    answer = _ask(ours.address, ours.port, f"big.{ZONE}", "TXT", tcp=tcp, edns=edns)
    assert _shape(answer) == _shape(expected)
    if tcp:
        assert len(answer.answer[0]) == len(BIG_TXT)
    else:
        assert answer.flags & dns.flags.TC
        assert not answer.answer


def test_an_update_is_not_implemented_and_garbage_is_a_format_error() -> None:
    with DnsServer() as server:
        server.add_zone(Zone("upd.test"))
        update = dns.update.UpdateMessage("upd.test")
        update.replace("upd.test.", 60, "MX", f"10 {FILTER}")
        response = dns.query.udp(update, server.address, port=server.port, timeout=2)
        assert response.rcode() == dns.rcode.NOTIMP
        assert server.zone("upd.test").records("upd.test", "MX") is None

        query_id = 0x4242
        garbage = struct.pack("!HHHHHH", query_id, 0, 1, 0, 0, 0) + b"\x07broken"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(garbage, (server.address, server.port))
            reply = sock.recv(512)
        answered_id, flags = struct.unpack("!HH", reply[:4])
        assert answered_id == query_id
        assert flags & dns.flags.QR
        assert flags & 0xF == dns.rcode.FORMERR


def test_a_response_sent_to_it_gets_no_answer() -> None:
    with DnsServer() as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        server.add_zone(Zone("quiet.test"))
        response = dns.message.make_response(dns.message.make_query("quiet.test", "MX"))
        sock.settimeout(0.3)
        sock.sendto(response.to_wire(), (server.address, server.port))
        with pytest.raises(TimeoutError):
            sock.recv(512)


def test_several_tcp_queries_share_one_connection() -> None:
    with DnsServer() as server:
        server.add_zone(Zone("tcp.test")).set_mx("tcp.test", [(10, FILTER)], ttl=77)
        with socket.create_connection((server.address, server.port), timeout=2) as sock:
            for _ in range(3):
                dns.query.send_tcp(sock, dns.message.make_query("tcp.test", "MX"), None)
                response, _ = dns.query.receive_tcp(sock, None)
                assert response.answer[0].ttl == 77
        assert server.queries["tcp"] == 3


# --- mxwatch against a DnsLab ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[DnsLab]:
    with DnsLab() as running:
        yield running


def _observer(lab: DnsLab) -> DnsObserver:
    config = DnsConfig(
        resolvers=(ResolverSpec("resolver", lab.resolver.address, lab.resolver.port),),
        authoritative=True,
        timeout=timedelta(seconds=1),
        authoritative_port=lab.port,
    )
    return DnsObserver(config)


async def test_mxwatch_asks_every_source_and_the_lagging_secondary_holds(lab: DnsLab) -> None:
    lab.add_zone("hold.test", mx=[(0, MICROSOFT), (20, FILTER)], ttl=8)
    lab.set_mx("hold.test", [(10, FILTER), (20, FILTER_2)], ttl=300)
    assert lab.serials("hold.test")[0] > lab.serials("hold.test")[1]

    held = await _observer(lab).observe("hold.test", MAILPROTECTOR, NOW)

    sources = {o.source: (o.verdict, o.ttl, o.authoritative) for o in held.sources}
    assert sources == {
        "resolver": (Verdict.FILTERED, 300, False),
        f"auth:ns1.hold.test@{PRIMARY_ADDRESS}": (Verdict.FILTERED, 300, True),
        f"auth:ns2.hold.test@{SECONDARY_ADDRESS}": (Verdict.MIXED, 8, True),
    }
    assert held.verdict is Verdict.MIXED

    lab.transfer()
    assert lab.serials("hold.test")[0] == lab.serials("hold.test")[1]
    caught_up = await _observer(lab).observe("hold.test", MAILPROTECTOR, NOW)
    assert caught_up.verdict is Verdict.FILTERED
    assert {o.verdict for o in caught_up.sources} == {Verdict.FILTERED}


async def test_mxwatch_sees_no_mx_and_nxdomain_with_their_negative_ttls(lab: DnsLab) -> None:
    lab.add_zone("empty.test", ttl=120, negative_ttl=45)

    observer = _observer(lab)
    nodata = await observer.observe("empty.test", MAILPROTECTOR, NOW)
    missing = await observer.observe("gone.empty.test", MAILPROTECTOR, NOW)

    assert nodata.verdict is Verdict.NO_MX
    assert {(o.reason, o.ttl) for o in nodata.sources} == {("NODATA (no MX records)", 45)}
    assert missing.verdict is Verdict.NO_MX
    assert {(o.reason, o.ttl) for o in missing.sources} == {("NXDOMAIN", 45)}


async def test_mxwatch_gets_a_large_mx_set_over_tcp(lab: DnsLab) -> None:
    hosts = [(n, f"mx{n:02d}-with-a-long-label.inbound.emailservice.io.") for n in range(60)]
    lab.add_zone("many.test", mx=hosts)
    observer = _observer(lab)

    result = await observer.observe("many.test", MAILPROTECTOR, NOW)

    assert result.verdict is Verdict.FILTERED
    assert {len(o.mx) for o in result.sources} == {60}
    assert observer.query_counts["auth_tcp"] == 2  # both name servers truncated over UDP


def test_it_imports_nothing_of_mxwatch() -> None:
    """Like the Exchange sandbox, it stands outside mxwatch: only the wire joins them."""
    code = (
        "import json, sys, mxwatch.sandbox.dns_server;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'mxwatch')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(done.stdout) == ["mxwatch", "mxwatch.sandbox", "mxwatch.sandbox.dns_server"]
