"""The bench's knotd: the test fixture's KnotServer, counting the queries it answers.

Three shapes of data, one per mode of bench/run.py:

- `bench_knot`: one zone of N names (one zone loads in well under a second);
- `fleet_knot`: one zone of N names, each name with its own two MX hosts;
- `zones_knot`: N zones, each its own apex with two MX hosts, delegated to two name servers.
  Adding N zones one by one would rewrite the config and `knotc reload` N times; the zone
  files and the config are written before knotd starts instead, so it loads them all at once.

Every knotd here runs Knot's `mod-stats` module for all zones: `query_counts()` is what the
server itself counted, by QTYPE, independent of mxwatch's own counters.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.fixtures.knot import KNOTC, KnotServer

MAILPROTECTOR_ZONE = "inbound.emailservice.io"
NS_ZONE = "nameservers.example"
LONG_TTL = 86400  # longer than any run: zone, NS and address lookups are never due again
_LOAD_TIMEOUT = 300.0  # seconds for knotd to load every zone
_QUERY_TYPE = re.compile(r"^mod-stats\.query-type\[([^\]]+)\] = (\d+)$", re.MULTILINE)
# Inserted into the fixture's config: one mod-stats instance for every zone, and for queries
# of names outside them, counting queries by type.
_LOADED = re.compile(r"\| serial: \d+")  # a zone knotd has not loaded has no serial
_STATS_MODULE = "mod-stats:\n  - id: bench\n    query-type: on\n"
_DEFAULT_TEMPLATE = "  - id: default\n"


class CountingKnot(KnotServer):
    """A KnotServer whose config also loads mod-stats (tests/fixtures stays untouched)."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        text = text.replace("template:\n", _STATS_MODULE + "template:\n", 1)
        text = text.replace(
            _DEFAULT_TEMPLATE, _DEFAULT_TEMPLATE + "    global-module: mod-stats/bench\n", 1
        )
        self.config_path.write_text(text)

    def query_counts(self) -> Counter[str]:
        """Queries answered since knotd started, by QTYPE ("MX": 2000, ...)."""
        done = subprocess.run(
            [KNOTC, "-c", str(self.config_path), "stats", "mod-stats"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return Counter({kind: int(n) for kind, n in _QUERY_TYPE.findall(done.stdout)})

    def preload(self, zone_files: Mapping[str, str]) -> None:
        """Before start(): serve each zone (name -> zone file text) from the first start."""
        for zone, text in zone_files.items():
            (self.root / "zones" / f"{zone}.zone").write_text(text)
        self.zones.extend(zone_files)

    def wait_loaded(self) -> None:
        """Wait until knotd has loaded every zone it serves (it loads them after it binds)."""
        deadline = time.monotonic() + _LOAD_TIMEOUT
        while time.monotonic() < deadline:
            if self._unloaded_zones() == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"knotd did not load every zone:\n{self.log_text()[-2000:]}")

    def _unloaded_zones(self) -> int:
        done = subprocess.run(
            [KNOTC, "-c", str(self.config_path), "zone-status"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
        return len(self.zones) - sum(bool(_LOADED.search(line)) for line in lines)


@contextlib.contextmanager
def counting_knot(zone_files: Mapping[str, str] | None = None) -> Iterator[CountingKnot]:
    """A started CountingKnot on 127.0.0.1, serving `zone_files` once this yields."""
    root = Path(tempfile.mkdtemp(prefix="knot-"))  # short: unix socket paths are limited
    server = CountingKnot(root)
    try:
        server.preload(zone_files or {})
        server.start()
        server.wait_loaded()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def mx_hosts(label: str) -> tuple[str, str]:
    """The two Mailprotector MX hosts of one domain."""
    return f"{label}-a.{MAILPROTECTOR_ZONE}.", f"{label}-b.{MAILPROTECTOR_ZONE}."


def _host_records(hosts: Sequence[str]) -> list[str]:
    """An address for each MX host, in the MX hosts' zone.

    That zone is served as a resolver would find it on the internet: mxwatch looks its MX
    exchanges up (CNAME: is it an alias?), and without the zone knotd would answer REFUSED,
    an error no resolver caches, where the internet answers NODATA.
    """
    suffix = f".{MAILPROTECTOR_ZONE}."
    return [f"{host.removesuffix(suffix)} A 192.0.2.25" for host in hosts]


@contextlib.contextmanager
def bench_knot(zone: str, labels: Sequence[str], mx: str) -> Iterator[CountingKnot]:
    """A running knotd where each `label` under `zone` has one MX, `10 mx`."""
    with counting_knot() as knot:
        knot.add_zone(zone, [f"{label} MX 10 {mx}" for label in labels])
        knot.add_zone(MAILPROTECTOR_ZONE, _host_records([mx]), ttl=LONG_TTL)
        yield knot


@contextlib.contextmanager
def fleet_knot(zone: str, labels: Sequence[str]) -> Iterator[CountingKnot]:
    """A running knotd where each `label` under `zone` has its own two MX hosts."""
    with counting_knot() as knot:
        records = []
        for label in labels:
            first, second = mx_hosts(label)
            records += [f"{label} MX 10 {first}", f"{label} MX 20 {second}"]
        knot.add_zone(zone, records, ttl=LONG_TTL)
        hosts = [host for label in labels for host in mx_hosts(label)]
        knot.add_zone(MAILPROTECTOR_ZONE, _host_records(hosts), ttl=LONG_TTL)
        yield knot


def _apex_mx(zone: str) -> list[str]:
    first, second = mx_hosts(zone.partition(".")[0])
    return [f"@ MX 10 {first}", f"@ MX 20 {second}"]


def _zone_text(zone: str, nameservers: Sequence[str], records: Sequence[str]) -> str:
    lines = [
        f"$ORIGIN {zone}.",
        f"$TTL {LONG_TTL}",
        f"@ SOA {nameservers[0]} hostmaster.{zone}. 1 86400 600 864000 3600",
        *(f"@ NS {host}" for host in nameservers),
        *records,
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def zones_knot(zones: Sequence[str], addresses: Sequence[str]) -> Iterator[CountingKnot]:
    """A running knotd serving each of `zones` as its own zone whose apex has two MX hosts,
    delegated to one name server per address (ns1, ns2, ... in NS_ZONE); also NS_ZONE with
    those addresses and the MX hosts' zone."""
    nameservers = [f"ns{i}.{NS_ZONE}." for i in range(1, len(addresses) + 1)]
    files = {zone: _zone_text(zone, nameservers, _apex_mx(zone)) for zone in zones}
    ns_records = [f"ns{i} A {address}" for i, address in enumerate(addresses, start=1)]
    files[NS_ZONE] = _zone_text(NS_ZONE, nameservers, ns_records)
    hosts = [host for zone in zones for host in mx_hosts(zone.partition(".")[0])]
    files[MAILPROTECTOR_ZONE] = _zone_text(MAILPROTECTOR_ZONE, nameservers, _host_records(hosts))
    with counting_knot(files) as knot:
        yield knot
