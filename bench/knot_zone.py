"""A throw-away knotd on 127.0.0.1 serving one generated zone with many MX owners.

One zone with N names loads in well under a second; N separate zones would each need their
own zone entry, journal and timers, which is much slower to start for no benefit here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
ADDRESS = "127.0.0.1"

_CONFIG = """\
server:
    rundir: "{root}/run"
    listen: {address}@{port}
    udp-workers: 2
    tcp-workers: 2
    background-workers: 1
log:
  - target: stderr
    any: notice
database:
    storage: "{root}/db"
template:
  - id: default
    storage: "{root}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: {zone}
  - domain: {mx_zone}
"""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((ADDRESS, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((ADDRESS, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def zone_text(zone: str, labels: Sequence[str], mx: str) -> str:
    lines = [
        f"$ORIGIN {zone}.",
        "$TTL 300",
        f"@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
        f"@ NS ns.{zone}.",
        f"ns A {ADDRESS}",
        *(f"{label} MX 10 {mx}" for label in labels),
    ]
    return "\n".join(lines) + "\n"


def mx_zone_text(mx: str) -> tuple[str, str]:
    """The zone of the MX host itself, as a recursive resolver would find it on the internet.

    mxwatch looks up its MX exchanges (CNAME: is it an alias?); without this zone knotd would
    answer REFUSED, an error that no resolver caches, where the internet answers NODATA.
    """
    host, _, parent = mx.rstrip(".").partition(".")
    lines = [
        f"$ORIGIN {parent}.",
        "$TTL 300",
        f"@ SOA ns.{parent}. hostmaster.{parent}. 1 3600 600 86400 300",
        f"@ NS ns.{parent}.",
        f"ns A {ADDRESS}",
        f"{host} A 192.0.2.25",
    ]
    return parent, "\n".join(lines) + "\n"


class KnotZone:
    """knotd serving `zone`, whose names `labels` each carry one MX pointing at `mx`.

    It also serves the zone of `mx` itself (see `mx_zone_text`).
    """

    def __init__(self, root: Path, zone: str, labels: Sequence[str], mx: str) -> None:
        self.root = root
        self.zone = zone
        self.labels = list(labels)
        self.mx = mx
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> float:
        """Start knotd and wait until the last name answers; returns the start-up seconds."""
        for sub in ("run", "db", "zones"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "zones" / f"{self.zone}.zone").write_text(
            zone_text(self.zone, self.labels, self.mx)
        )
        mx_zone, mx_text = mx_zone_text(self.mx)
        (self.root / "zones" / f"{mx_zone}.zone").write_text(mx_text)
        self.port = free_port()
        config = self.root / "knot.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root, address=ADDRESS, port=self.port, zone=self.zone, mx_zone=mx_zone
            )
        )
        started = time.monotonic()
        with (self.root / "knotd.log").open("ab") as log:
            self._process = subprocess.Popen([KNOTD, "-c", str(config)], stdout=log, stderr=log)
        probe = f"{self.labels[-1]}.{self.zone}" if self.labels else self.zone
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._answers(probe):
                return time.monotonic() - started
            time.sleep(0.01)
        log_text = (self.root / "knotd.log").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"knotd did not serve {self.zone}:\n{log_text}")

    def _answers(self, name: str) -> bool:
        query = dns.message.make_query(name, dns.rdatatype.MX)
        try:
            response = dns.query.tcp(query, ADDRESS, port=self.port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None
