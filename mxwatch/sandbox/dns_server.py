"""A small authoritative DNS server on loopback, for `mxwatch demo` and for tests.

Like exchange_api.py it imports nothing of mxwatch: it stands where the real name servers of a
domain would, and mxwatch talks to it only over the wire (UDP, and TCP for large answers).

What each `DnsServer` answers, as an authoritative server (Knot, BIND) does:

- a name in one of its zones: the records with AA set and the TTLs given; NODATA (NOERROR, no
  answer) or NXDOMAIN with the zone's SOA in the authority section, its TTL the SOA MINIMUM
  (RFC 2308); a name with no records of its own but names below it (an empty non-terminal)
  is NODATA, not NXDOMAIN;
- a CNAME: the CNAME, and the target's records when the target is in the same zone;
- a name outside every zone it serves: REFUSED, with no AA; an opcode other than QUERY:
  NOTIMP; a query it cannot parse: FORMERR;
- over UDP, an answer larger than the query allows (512 bytes, or the EDNS payload size)
  comes back truncated (TC set, sections empty), so the client asks again over TCP.

It never recurses, whatever RD says, and serves no delegations below a zone apex.

`DnsLab` puts three of them together, the way mxwatch meets a domain in production:

- `resolver` (127.0.0.1, a free port) stands in for the recursive resolver: it answers every
  zone with its NS set and the name servers' addresses (what mxwatch finds delegations with),
  and the MX as the primary has it;
- `primary` (127.0.0.2) and `secondary` (127.0.0.3) are the zone's name servers ns1 and ns2, on
  one shared port (a name server's address carries no port). A change goes to the primary
  (and the resolver's view); the secondary copies the primary only when told
  (`transfer()`), so in between it lags, serving the old MX.

    with DnsLab() as lab:
        lab.add_zone("contoso.test", mx=[(0, "contoso-test.mail.protection.outlook.com.")])
        lab.set_mx("contoso.test", [(10, "mx1.inbound.emailservice.io.")], ttl=300)
        ...                                   # ns2 still answers the Microsoft 365 MX
        lab.transfer()                        # now it answers the new one too
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME

MxList = Sequence[tuple[int, str]]

# Every address of 127.0.0.0/8 is loopback on Linux, with no set-up.
RESOLVER_ADDRESS = "127.0.0.1"
PRIMARY_ADDRESS = "127.0.0.2"
SECONDARY_ADDRESS = "127.0.0.3"

_EDNS_PAYLOAD = 1232  # what this server offers in its answers (DNS Flag Day 2020)
_CLASSIC_UDP = 512  # the most a client without EDNS accepts over UDP (RFC 1035)
_MAX_CNAME_HOPS = 8
_TCP_IDLE = 10.0  # seconds a TCP connection may sit idle before the server closes it
_BIND_ATTEMPTS = 20


def _name(text: str | dns.name.Name) -> dns.name.Name:
    """A domain name, absolute whether or not it ends with a dot."""
    if isinstance(text, dns.name.Name):
        return text
    return dns.name.from_text(text, dns.name.root)


# --------------------------------------------------------------------------- zones


@dataclass(frozen=True)
class _ZoneData:
    """One version of a zone's contents; replaced whole by each change (copy on write)."""

    serial: int
    nodes: Mapping[dns.name.Name, Mapping[dns.rdatatype.RdataType, dns.rrset.RRset]]


class Zone:
    """The records of one zone. Safe to change while a server answers from it: each change
    builds a new version, and a query reads one version from start to end.

    Names are absolute, with or without the final dot ("@" is the apex), and so are the names
    inside records ("10 mx1.example.net"). `nameservers` are (host, IPv4 address) pairs: the
    apex NS set, and an A record for each host inside the zone (glue). `ttl` is the default
    TTL of records; `negative_ttl` the SOA MINIMUM, which caps how long a "no such record"
    answer is cached.
    """

    def __init__(
        self,
        origin: str,
        *,
        nameservers: Sequence[tuple[str, str]] = (),
        ttl: int = 300,
        negative_ttl: int = 60,
        serial: int = 1,
    ) -> None:
        self.origin = _name(origin)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()  # one change at a time; readers never wait
        hosts = [(_name(host), address) for host, address in nameservers]
        self._mname = hosts[0][0] if hosts else self._owner("ns." + origin)
        nodes: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        ns = [host.to_text() for host, _ in hosts] or [self._mname.to_text()]
        nodes.setdefault(self.origin, {})[dns.rdatatype.NS] = self._rrset(
            self.origin, dns.rdatatype.NS, ns, ttl
        )
        glue: dict[dns.name.Name, list[str]] = {}
        for host, address in hosts:
            if host.is_subdomain(self.origin):
                glue.setdefault(host, []).append(address)
        for host, addresses in glue.items():
            nodes.setdefault(host, {})[dns.rdatatype.A] = self._rrset(
                host, dns.rdatatype.A, addresses, ttl
            )
        self._data = self._with_soa(serial, nodes)

    # -- reading ------------------------------------------------------------------------

    @property
    def serial(self) -> int:
        return self._data.serial

    def records(self, name: str, rdtype: str) -> dns.rrset.RRset | None:
        """The RRset of `name` and type, if any."""
        node = self._data.nodes.get(self._owner(name), {})
        return node.get(dns.rdatatype.from_text(rdtype))

    # -- changing -----------------------------------------------------------------------

    def set(self, name: str, rdtype: str, rdatas: Iterable[str], *, ttl: int | None = None) -> None:
        """Replace the RRset of `name` and `rdtype` (an empty `rdatas` deletes it); each change
        raises the SOA serial by one, as a primary does."""
        owner = self._owner(name)
        kind = dns.rdatatype.from_text(rdtype)
        if kind == dns.rdatatype.SOA:
            raise ValueError("the SOA record is the zone's own; it changes with every change")
        texts = list(rdatas)
        rrset = self._rrset(owner, kind, texts, self.ttl if ttl is None else ttl) if texts else None
        with self._lock:
            data = self._data
            nodes = {name: dict(node) for name, node in data.nodes.items()}
            node = nodes.setdefault(owner, {})
            if rrset is None:
                node.pop(kind, None)
            else:
                node[kind] = rrset
            if not node:
                del nodes[owner]
            self._data = self._with_soa(data.serial + 1, nodes)

    def set_mx(self, name: str, mx: MxList, *, ttl: int | None = None) -> None:
        """Replace the MX RRset of `name`: (preference, exchange) pairs; empty deletes it."""
        self.set(name, "MX", [f"{preference} {exchange}" for preference, exchange in mx], ttl=ttl)

    def copy_from(self, other: Zone) -> None:
        """Take `other`'s contents and serial, as a secondary does with a zone transfer."""
        if other.origin != self.origin:
            raise ValueError(f"cannot copy zone {other.origin} into zone {self.origin}")
        self.ttl, self.negative_ttl, self._mname = other.ttl, other.negative_ttl, other._mname
        self._data = other._data  # versions are never changed in place: sharing one is safe

    # -- answering ----------------------------------------------------------------------

    def answer(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> None:
        """Fill `response` for a question under this zone (the AA flag is the caller's)."""
        data = self._data  # one version for the whole answer
        name = qname
        # A chain longer than any sane zone has ends with what was found so far.
        for _ in range(_MAX_CNAME_HOPS):
            node = data.nodes.get(name)
            if node is None:
                if not self._exists(data, name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._negative_soa(data))
                return
            if qtype == dns.rdatatype.ANY:
                response.answer.extend(node.values())
                return
            found = node.get(qtype)
            if found is not None:
                response.answer.append(found)
                return
            alias = node.get(dns.rdatatype.CNAME)
            if alias is None:  # NODATA
                response.authority.append(self._negative_soa(data))
                return
            response.answer.append(alias)
            target = next(rd.target for rd in alias if isinstance(rd, CNAME))
            if not target.is_subdomain(self.origin):
                return  # the target's own servers answer for it
            name = target

    @staticmethod
    def _exists(data: _ZoneData, name: dns.name.Name) -> bool:
        """A name exists when it has records, or names below it do (an empty non-terminal)."""
        return name in data.nodes or any(
            owner.is_subdomain(name) and owner != name for owner in data.nodes
        )

    def _negative_soa(self, data: _ZoneData) -> dns.rrset.RRset:
        soa = data.nodes[self.origin][dns.rdatatype.SOA]
        # RFC 2308 §3: the SOA of a negative answer has the TTL min(SOA TTL, MINIMUM).
        return dns.rrset.from_rdata_list(soa.name, min(soa.ttl, self.negative_ttl), list(soa))

    # -- internals ----------------------------------------------------------------------

    def _owner(self, name: str) -> dns.name.Name:
        owner = self.origin if name == "@" else _name(name)
        if not owner.is_subdomain(self.origin):
            raise ValueError(f"{owner} is not in zone {self.origin}")
        return owner

    def _rrset(
        self, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, texts: Sequence[str], ttl: int
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
        for text in texts:
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
            )
            rrset.add(rdata, ttl)
        return rrset

    def _with_soa(
        self,
        serial: int,
        nodes: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]],
    ) -> _ZoneData:
        rname = self._owner("hostmaster." + self.origin.to_text()).to_text()
        # A long refresh: a secondary never catches up by itself, only when told.
        soa = f"{self._mname.to_text()} {rname} {serial} 86400 600 864000 {self.negative_ttl}"
        nodes.setdefault(self.origin, {})[dns.rdatatype.SOA] = self._rrset(
            self.origin, dns.rdatatype.SOA, [soa], self.ttl
        )
        frozen = {name: MappingProxyType(dict(node)) for name, node in nodes.items()}
        return _ZoneData(serial, MappingProxyType(frozen))


# --------------------------------------------------------------------------- the server


def _formerr(wire: bytes) -> bytes | None:
    """A FORMERR answer to a message that does not parse, when its header can be read."""
    if len(wire) < 12:
        return None
    query_id, flags = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None  # a response: never answer one
    opcode_bits = flags & 0x7800
    return struct.pack(
        "!HHHHHH", query_id, dns.flags.QR | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0
    )


class DnsServer:
    """One authoritative server on `address` (any 127.0.0.0/8 address) and `port` (0: free).

    Zones are served from `add_zone` on. Answers come from a thread for UDP and a thread per
    TCP connection; `stop()` ends them.
    """

    def __init__(self, address: str = RESOLVER_ADDRESS, port: int = 0) -> None:
        self.address = address
        self.port = port
        self._zones: dict[dns.name.Name, Zone] = {}
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []
        self._count_lock = threading.Lock()
        self.queries = {"udp": 0, "tcp": 0, "truncated": 0}

    # -- zones --------------------------------------------------------------------------

    def add_zone(self, zone: Zone) -> Zone:
        """Serve `zone` (replacing a zone of the same name); returns it for chaining."""
        zones = dict(self._zones)
        zones[zone.origin] = zone
        self._zones = zones
        return zone

    def zone(self, name: str) -> Zone:
        """The served zone holding `name` (the longest match)."""
        found = self._zone_of(_name(name))
        if found is None:
            raise KeyError(f"{name} is in no zone of the server at {self.address}")
        return found

    @property
    def zones(self) -> tuple[Zone, ...]:
        return tuple(self._zones.values())

    def set_mx(self, name: str, mx: MxList, *, ttl: int | None = None) -> None:
        """Replace the MX of `name` in the zone holding it."""
        self.zone(name).set_mx(name, mx, ttl=ttl)

    def transfer_from(self, primary: DnsServer) -> None:
        """Copy every zone of `primary` (adding the ones not served yet): a zone transfer."""
        for zone in primary.zones:
            mine = self._zones.get(zone.origin)
            if mine is None:
                mine = self.add_zone(
                    Zone(zone.origin.to_text(), ttl=zone.ttl, negative_ttl=zone.negative_ttl)
                )
            mine.copy_from(zone)

    def _zone_of(self, name: dns.name.Name) -> Zone | None:
        zones = self._zones
        for depth in range(len(name.labels)):
            zone = zones.get(dns.name.Name(name.labels[depth:]))
            if zone is not None:
                return zone
        return None

    # -- answering ----------------------------------------------------------------------

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The answer to one query in wire format, or None when there is nothing to send."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, struct.error):
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query, our_payload=_EDNS_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._answer(query.question[0], response)
        limit = 65535 if tcp else _udp_limit(query)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            with self._count_lock:
                self.queries["truncated"] += 1
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        zone = self._zone_of(question.name) if question.rdclass == dns.rdataclass.IN else None
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        zone.answer(question.name, question.rdtype, response)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> DnsServer:
        """Listen on UDP and TCP at `address` and `port` (a free one when 0)."""
        for _ in range(1 if self.port else _BIND_ATTEMPTS):
            try:
                self._bind(self.port)
            except OSError:
                if self.port:
                    raise
                continue
            self._serve()
            return self
        raise OSError(f"no port free for both UDP and TCP on {self.address}")

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._udp = self._tcp = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bind(self, port: int) -> None:
        """Bind UDP then TCP on one port, or neither (OSError)."""
        udp = _UdpServer((self.address, port), _UdpHandler, self)
        try:
            tcp = _TcpServer((self.address, udp.server_address[1]), _TcpHandler, self)
        except OSError:
            udp.server_close()
            raise
        self._udp, self._tcp = udp, tcp
        self.port = udp.server_address[1]

    def _serve(self) -> None:
        for server in (self._udp, self._tcp):
            assert server is not None
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dns-{self.address}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _count(self, transport: str) -> None:
        with self._count_lock:
            self.queries[transport] += 1


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns < 0:
        return _CLASSIC_UDP
    return max(_CLASSIC_UDP, min(query.payload, 65535))


class _UdpServer(socketserver.UDPServer):
    max_packet_size = 65535

    def __init__(self, address: tuple[str, int], handler: type, dns_server: DnsServer) -> None:
        super().__init__(address, handler)
        self.dns_server = dns_server

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client gone before its answer is no concern of the server


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        wire, sock = self.request
        self.server.dns_server._count("udp")
        answer = self.server.dns_server.respond(wire, tcp=False)
        if answer is not None:
            sock.sendto(answer, self.client_address)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, dns_server: DnsServer) -> None:
        super().__init__(address, handler)
        self.dns_server = dns_server

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _TcpHandler(socketserver.BaseRequestHandler):
    """Length-prefixed messages (RFC 1035 §4.2.2), several per connection."""

    server: _TcpServer
    request: socket.socket

    def handle(self) -> None:
        self.request.settimeout(_TCP_IDLE)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            header = self._read(2)
            if header is None:
                return
            wire = self._read(struct.unpack("!H", header)[0])
            if wire is None:
                return
            self.server.dns_server._count("tcp")
            answer = self.server.dns_server.respond(wire, tcp=True)
            if answer is None:
                return
            self.request.sendall(struct.pack("!H", len(answer)) + answer)

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = self.request.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data


def start_on_shared_port(servers: Sequence[DnsServer]) -> int:
    """Start `servers` (on distinct addresses) on one port free for UDP and TCP on each of
    them; returns the port. Name servers of one lab share a port: an NS address has none."""
    for _ in range(_BIND_ATTEMPTS):
        first = servers[0]
        first.port = 0
        first._bind(0)
        port = first.port
        bound = [first]
        try:
            for server in servers[1:]:
                server.port = port
                server._bind(port)
                bound.append(server)
        except OSError:
            for server in bound:
                for listener in (server._udp, server._tcp):
                    if listener is not None:
                        listener.server_close()
                server._udp = server._tcp = None
            continue
        for server in servers:
            server._serve()
        return port
    raise OSError("no port free for UDP and TCP on every address")


# --------------------------------------------------------------------------- the lab


class DnsLab:
    """A resolver's view, a primary and a lagging secondary: see the module's docstring.

    Zones get the name servers ns1 (the primary's address) and ns2 (the secondary's). Changes
    go to the primary; the resolver's view follows the primary at once, the secondary only at
    `transfer()`.
    """

    def __init__(
        self,
        *,
        resolver_address: str = RESOLVER_ADDRESS,
        primary_address: str = PRIMARY_ADDRESS,
        secondary_address: str = SECONDARY_ADDRESS,
    ) -> None:
        self.resolver = DnsServer(resolver_address)
        self.primary = DnsServer(primary_address)
        self.secondary = DnsServer(secondary_address)

    @property
    def port(self) -> int:
        """The port the primary and the secondary share (mxwatch's dns.authoritative_port)."""
        return self.primary.port

    @property
    def resolver_spec(self) -> str:
        """The resolver as mxwatch's dns.resolvers writes it: "IP:PORT"."""
        return f"{self.resolver.address}:{self.resolver.port}"

    def start(self) -> DnsLab:
        self.resolver.start()
        try:
            start_on_shared_port([self.primary, self.secondary])
        except OSError:
            self.resolver.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.resolver, self.primary, self.secondary):
            server.stop()

    def __enter__(self) -> DnsLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_zone(
        self,
        origin: str,
        *,
        mx: MxList = (),
        ttl: int = 300,
        negative_ttl: int = 60,
        records: Sequence[tuple[str, str, Sequence[str]]] = (),
    ) -> Zone:
        """Serve `origin` on all three, with `mx` at the apex (TTL `ttl`) and `records`
        ((name, type, rdatas) triples); the secondary starts in step with the primary."""
        nameservers = [
            (f"ns{n}.{origin}", server.address)
            for n, server in ((1, self.primary), (2, self.secondary))
        ]
        zone = Zone(origin, nameservers=nameservers, ttl=ttl, negative_ttl=negative_ttl)
        if mx:
            zone.set_mx("@", mx, ttl=ttl)
        for name, rdtype, rdatas in records:
            zone.set(name, rdtype, rdatas)
        self.primary.add_zone(zone)
        for server in (self.resolver, self.secondary):
            server.transfer_from(self.primary)
        return zone

    def set_mx(self, name: str, mx: MxList, *, ttl: int | None = None) -> None:
        """Change the MX on the primary (and in the resolver's view); the secondary lags."""
        self.primary.set_mx(name, mx, ttl=ttl)
        self.resolver.transfer_from(self.primary)

    def transfer(self) -> None:
        """The secondary catches up with the primary (as after a NOTIFY and an IXFR)."""
        self.secondary.transfer_from(self.primary)

    def serials(self, zone: str) -> tuple[int, int]:
        """The SOA serial of `zone` on the primary and on the secondary."""
        return self.primary.zone(zone).serial, self.secondary.zone(zone).serial
