"""A userland UDP + TCP DNS proxy that adds a fixed delay in each direction.

    python bench/delay_proxy.py --listen 127.0.0.1:5300 --upstream 127.0.0.1:5301 --delay 0.02

Every datagram (and every TCP chunk) is held for `--delay` seconds on the way to the upstream
server and again on the way back, so a query costs at least 2 x delay of round trip, like a
resolver some distance away. Nothing else is changed: the answer a client gets is the one the
upstream sent, byte for byte, except that UDP message IDs are rewritten on the upstream leg
(and restored) so that one upstream socket can carry every client's queries.

The proxy prints one line, "ready UDP_PORT TCP_PORT", once it listens, and runs until killed.

With `--counts FILE` it also counts the queries clients send, by QTYPE ("MX", "SOA", ...; a
query over TCP counts under "tcp:MX"), and on SIGUSR1 writes the running totals to FILE as
JSON, `{"dumps": N, "queries": {...}}`, N going up by one with each dump. The totals only
grow: a reader takes the difference of two dumps. Counting is a dictionary increment per
query, so the bench can leave it on while it times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.rdatatype

_STALE_AFTER = 10.0  # seconds after which an unanswered upstream query is forgotten
_TCP_CHUNK = 65536


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def query_type(message: bytes) -> str:
    """The QTYPE of a DNS query as text ("MX"), or "malformed" when it has no question.

    The question's name is read label by label: queries carry no compression pointers.
    """
    if len(message) < 12 or int.from_bytes(message[4:6], "big") == 0:
        return "malformed"
    offset = 12
    while offset < len(message) and message[offset] != 0:
        offset += 1 + message[offset]
    if offset + 3 > len(message):
        return "malformed"
    number = int.from_bytes(message[offset + 1 : offset + 3], "big")
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(number))


class _TcpQueries:
    """Finds the queries in one client's TCP stream (each one after a two-byte length)."""

    def __init__(self, counts: Counter[str]) -> None:
        self._counts = counts
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + length:
                return
            self._counts["tcp:" + query_type(self._buffer[2 : 2 + length])] += 1
            self._buffer = self._buffer[2 + length :]


@dataclass
class _Pending:
    client: tuple[str, int]
    original_id: bytes
    sent_at: float


class _ClientSide(asyncio.DatagramProtocol):
    """The socket clients send to."""

    def __init__(self, proxy: UdpDelayProxy) -> None:
        self._proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._proxy.from_client(data, addr)


class _UpstreamSide(asyncio.DatagramProtocol):
    """The one socket the proxy uses towards the upstream server."""

    def __init__(self, proxy: UdpDelayProxy) -> None:
        self._proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._proxy.from_upstream(data)


class UdpDelayProxy:
    """Delays datagrams both ways; rewrites message IDs so one upstream socket suffices."""

    def __init__(self, upstream: tuple[str, int], delay: float, counts: Counter[str]) -> None:
        self._upstream = upstream
        self._delay = delay
        self._counts = counts
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._client: asyncio.DatagramTransport | None = None
        self._up: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.forwarded = 0
        self.answered = 0
        self.dropped = 0

    async def start(self, listen: tuple[str, int]) -> int:
        loop = asyncio.get_running_loop()
        self._client, _ = await loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=listen
        )
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamSide(self), remote_addr=self._upstream
        )
        self._sweeper = loop.create_task(self._sweep())
        port: int = self._client.get_extra_info("sockname")[1]
        return port

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:  # not a DNS message
            self.dropped += 1
            return
        self._counts[query_type(data)] += 1
        asyncio.get_running_loop().call_later(self._delay, self._send_upstream, data, addr)

    def _send_upstream(self, data: bytes, addr: tuple[str, int]) -> None:
        new_id = self._allocate_id()
        if new_id is None or self._up is None:
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        self._pending[new_id] = _Pending(addr, data[:2], loop.time())
        self._up.sendto(new_id.to_bytes(2, "big") + data[2:])
        self.forwarded += 1

    def _allocate_id(self) -> int | None:
        for _ in range(65536):
            self._next_id = (self._next_id + 1) & 0xFFFF
            if self._next_id not in self._pending:
                return self._next_id
        return None

    def from_upstream(self, data: bytes) -> None:
        if len(data) < 12:
            self.dropped += 1
            return
        pending = self._pending.pop(int.from_bytes(data[:2], "big"), None)
        if pending is None:
            self.dropped += 1
            return
        answer = pending.original_id + data[2:]
        asyncio.get_running_loop().call_later(self._delay, self._send_client, answer, pending)

    def _send_client(self, answer: bytes, pending: _Pending) -> None:
        if self._client is not None:
            self._client.sendto(answer, pending.client)
            self.answered += 1

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_STALE_AFTER / 2)
            cutoff = loop.time() - _STALE_AFTER
            for key in [k for k, p in self._pending.items() if p.sent_at < cutoff]:
                del self._pending[key]
                self.dropped += 1


class TcpDelayProxy:
    """One upstream connection per client connection; every chunk is delayed, in order."""

    def __init__(self, upstream: tuple[str, int], delay: float, counts: Counter[str]) -> None:
        self._upstream = upstream
        self._delay = delay
        self._counts = counts
        self.connections = 0

    async def start(self, listen: tuple[str, int]) -> int:
        server = await asyncio.start_server(self._handle, listen[0], listen[1])
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        queries = _TcpQueries(self._counts)
        await asyncio.gather(
            self._pump(reader, up_writer, queries.feed),
            self._pump(up_reader, writer),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        seen: Callable[[bytes], None] | None = None,
    ) -> None:
        """Copy source to sink, each chunk `delay` seconds after it arrived, order kept;
        `seen` gets every chunk as it arrives."""
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def read() -> None:
            nonlocal done
            try:
                while chunk := await source.read(_TCP_CHUNK):
                    if seen is not None:
                        seen(chunk)
                    queue.append((loop.time() + self._delay, chunk))
                    arrived.set()
            finally:
                done = True
                arrived.set()

        reading = loop.create_task(read())
        try:
            while True:
                if not queue:
                    if done:
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, chunk = queue[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        finally:
            reading.cancel()


class CountsFile:
    """Writes the query counts to a file on request, replacing it whole so a reader never
    sees half a dump."""

    def __init__(self, path: Path, counts: Counter[str]) -> None:
        self._path = path
        self._counts = counts
        self._dumps = 0

    def write(self) -> None:
        self._dumps += 1
        partial = self._path.with_name(self._path.name + ".partial")
        partial.write_text(json.dumps({"dumps": self._dumps, "queries": dict(self._counts)}))
        partial.replace(self._path)


async def serve(
    listen: tuple[str, int], upstream: tuple[str, int], delay: float, counts_path: Path | None
) -> None:
    counts: Counter[str] = Counter()
    udp = UdpDelayProxy(upstream, delay, counts)
    tcp = TcpDelayProxy(upstream, delay, counts)
    udp_port = await udp.start(listen)
    # Same port number for TCP as for UDP, as a DNS server would have.
    tcp_port = await tcp.start((listen[0], udp_port))
    print(f"ready {udp_port} {tcp_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if counts_path is not None:
        loop.add_signal_handler(signal.SIGUSR1, CountsFile(counts_path, counts).write)
    await stop.wait()
    print(
        f"stats udp_forwarded={udp.forwarded} udp_answered={udp.answered} "
        f"udp_dropped={udp.dropped} tcp_connections={tcp.connections}",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0))
    parser.add_argument("--upstream", type=_host_port, required=True)
    parser.add_argument("--delay", type=float, default=0.020, help="seconds, each way")
    parser.add_argument(
        "--counts", type=Path, help="on SIGUSR1, write the queries so far by QTYPE to this file"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.upstream, args.delay, args.counts))


if __name__ == "__main__":
    main()
