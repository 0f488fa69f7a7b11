"""Mode "authoritative": mxwatch's default configuration, `authoritative = true`.

10,000 domains, each the apex of its own zone, delegated to ns1 and ns2 (127.0.0.2 and
127.0.0.3, one shared zone holds their addresses). One knotd serves every zone; a delay proxy
listens on each of the three addresses mxwatch asks (the resolver at 127.0.0.1, ns1 and ns2
on one port, `dns.authoritative_port`), 20 ms each way, and counts the queries by type: each
proxy is one source. The first `--once` (with discovery: SOA, NS, A) is reported apart from
the steady ones, which are compared with dnsperf sending the same MX queries to the same three
addresses at once.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    CONCURRENCY,
    DELAY,
    Counters,
    DnsperfRun,
    OnceRun,
    Proxy,
    QueryCounts,
    Row,
    consent,
    counted,
    delay_proxy,
    dnsperf_argv,
    dnsperf_figures,
    figures,
    median_of,
    note,
    proc_cpu,
    query_table,
    round_trip,
    run_once,
    spread,
    write_config,
)
from knot_zone import zones_knot
from profiling import Profile, py_spy, render_steady_profile

from mxwatch.sandbox.exchange_api import ExchangeSandbox
from tests.fixtures.knot import ADDRESS, LAB_PRIMARY, LAB_SECONDARY, free_port

AUTH_ADDRESSES = (LAB_PRIMARY, LAB_SECONDARY)  # 127.0.0.2 and 127.0.0.3
KNOTD = "knotd, behind the three"


@dataclass(frozen=True)
class Sizes:
    domains: int
    tenants: int
    steady_runs: int
    dnsperf_runs: int


FULL = Sizes(10_000, 200, 3, 3)
QUICK = Sizes(500, 20, 2, 1)


@dataclass(frozen=True)
class Source:
    """One address mxwatch asks, through its own delay proxy."""

    label: str
    proxy: Proxy


@dataclass(frozen=True)
class DnsperfRound:
    """One dnsperf per source, started together: wall time from the first start to the
    last exit."""

    seconds: float
    runs: list[DnsperfRun]
    queries: QueryCounts


@dataclass(frozen=True)
class Results:
    sizes: Sizes
    knot_seconds: float
    port: int  # dns.authoritative_port
    rtt: dict[str, float]  # UDP MX round trip through each source's proxy
    first: OnceRun
    steady: list[OnceRun]
    queries: list[QueryCounts]  # first, then each steady `--once`
    dnsperf: list[DnsperfRound]
    in_flight: list[int]  # dnsperf's -c and -q of each source
    profile: Profile  # of one more steady `--once`


def run(quick: bool, workdir: Path) -> list[str]:
    """Measure, and return the sections of the tables."""
    return render(measure_all(QUICK if quick else FULL, workdir))


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` near-equal whole shares."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def measure_all(sizes: Sizes, workdir: Path) -> Results:
    zones = [f"z{i:05d}.example" for i in range(sizes.domains)]
    with contextlib.ExitStack() as stack:
        note(f"knotd with {sizes.domains} zones")
        started = time.monotonic()
        knot = stack.enter_context(zones_knot(zones, AUTH_ADDRESSES))
        knot_seconds = time.monotonic() - started
        port = free_port(AUTH_ADDRESSES)
        sources = [
            Source(f"resolver {ADDRESS}", stack.enter_context(delay_proxy(knot.port, workdir)))
        ]
        sources += [
            Source(
                f"ns{i} {address}",
                stack.enter_context(delay_proxy(knot.port, workdir, address=address, port=port)),
            )
            for i, address in enumerate(AUTH_ADDRESSES, start=1)
        ]
        rtt = {s.label: round_trip(s.proxy.port, zones[0], "udp", s.proxy.address) for s in sources}
        sandbox = stack.enter_context(ExchangeSandbox())
        tenants = consent(sandbox, spread(zones, sizes.tenants, "a"))
        resolver = sources[0].proxy
        config = write_config(
            workdir / "authoritative.toml",
            sandbox,
            tenants,
            {
                "daemon": {"state": str(workdir / "authoritative.db")},
                "dns": {
                    "resolvers": [f"{resolver.address}:{resolver.port}"],
                    "authoritative": True,
                    "authoritative_port": port,
                },
            },
        )
        counters: dict[str, Callable[[], Counter[str]]] = {
            s.label: s.proxy.query_counts for s in sources
        }
        counters[KNOTD] = knot.query_counts
        proxies = [s.proxy for s in sources]

        def once() -> OnceRun:
            return run_once(config, sandbox, workdir, proxies)

        # The first run discovers the zones and adopts the enabled connectors; the later
        # ones are steady.
        runs = [counted(counters, once) for _ in range(1 + sizes.steady_runs)]
        profile = py_spy(config, workdir)
        in_flight = split(CONCURRENCY, len(sources))
        queries = workdir / "dnsperf.queries"
        queries.write_text("".join(f"{zone} MX\n" for zone in zones))
        dnsperf = [
            dnsperf_round(sources, queries, in_flight, counters) for _ in range(sizes.dnsperf_runs)
        ]
    return Results(
        sizes=sizes,
        knot_seconds=knot_seconds,
        port=port,
        rtt=rtt,
        first=runs[0][0],
        steady=[once_run for once_run, _ in runs[1:]],
        queries=[counts for _, counts in runs],
        dnsperf=dnsperf,
        in_flight=in_flight,
        profile=profile,
    )


def dnsperf_round(
    sources: Sequence[Source], queries: Path, in_flight: Sequence[int], counters: Counters
) -> DnsperfRound:
    """One dnsperf per source at once, each with its share of mxwatch's queries in flight."""

    def together() -> tuple[float, list[DnsperfRun]]:
        note("dnsperf, one per source, at once")
        cpu_before = sum(proc_cpu(s.proxy.pid) for s in sources)
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                dnsperf_argv(s.proxy.address, s.proxy.port, queries, n),
                stdout=subprocess.PIPE,
                text=True,
            )
            for s, n in zip(sources, in_flight, strict=True)
        ]
        outputs = [p.communicate()[0] for p in processes]
        seconds = time.perf_counter() - started
        cpu = sum(proc_cpu(s.proxy.pid) for s in sources) - cpu_before
        return seconds, [dnsperf_figures(output, cpu) for output in outputs]

    (seconds, runs), counts = counted(counters, together)
    return DnsperfRound(seconds, runs, counts)


# --------------------------------------------------------------------------- tables


def render(r: Results) -> list[str]:
    mode = "quick" if r.sizes == QUICK else "full"
    mx_sources = dict.fromkeys(r.rtt, 1) | {KNOTD: len(r.rtt)}
    return [
        f"## Mode authoritative ({mode}): mxwatch's default, `authoritative = true`, "
        f"{r.sizes.domains:,} domains in as many zones on two authoritative addresses, "
        "every source through the delay proxy",
        "",
        *figures("Authoritative set-up", setup(r)),
        *figures("Authoritative: cycles against dnsperf", cycles(r)),
        "### Authoritative: queries of the first and the last steady `--once`, by source "
        "(counted at its proxy) and at knotd",
        "",
        *query_table(r.queries[0], r.queries[-1], r.sizes.domains, mx_sources),
        *figures("Authoritative: what dnsperf sent, and the steady runs compared", checks(r)),
        *render_steady_profile(
            "Authoritative: profile (py-spy over one more steady `--once`, not timed)",
            r.profile,
            r.steady,
        ),
    ]


def setup(r: Results) -> list[Row]:
    n, sources = r.sizes.domains, len(r.rtt)
    floor = n * sources / CONCURRENCY * 2 * DELAY
    return [
        ("domains / tenants", f"{n:,} / {r.sizes.tenants}"),
        (
            "zones, each its own apex (`z00000.example`) with two MX hosts",
            f"{n:,}, plus the name servers' zone and the MX hosts' zone",
        ),
        (
            "writing the zone files (one a zone), knotd start-up and load of every zone",
            f"{r.knot_seconds:.2f} s",
        ),
        ("TTL of every record (SOA, NS, A, MX)", "86400 s"),
        (
            "sources: the resolver, ns1 and ns2 (`dns.authoritative_port`)",
            f"{sources} (port {r.port} for ns1 and ns2)",
        ),
        ("delay of each proxy, each way", f"{DELAY * 1000:.0f} ms"),
        *(
            (f"one MX query through the proxy of {label}, UDP", f"{rtt * 1000:.1f} ms")
            for label, rtt in r.rtt.items()
        ),
        ("queries in flight: DnsObserver's default", CONCURRENCY),
        (
            "dnsperf: one per source, at once, `-n 1 -c Q -q Q`, Q for each source",
            " + ".join(map(str, r.in_flight)),
        ),
        (
            "latency floor of a steady cycle: domains x sources / in flight x round trip",
            f"{floor:.2f} s",
        ),
    ]


def cycles(r: Results) -> list[Row]:
    cycle = statistics.median(x.cycle for x in r.steady)
    wall = statistics.median(x.child.wall for x in r.steady)
    dnsperf = statistics.median(d.seconds for d in r.dnsperf)
    return [
        (
            "first `--once` (with discovery): cycle / wall",
            f"{r.first.cycle:.2f} s / {r.first.child.wall:.2f} s",
        ),
        median_of("steady cycle (`cycle_finished.duration_s`)", [x.cycle for x in r.steady]),
        median_of("steady `--once` process wall time", [x.child.wall for x in r.steady]),
        median_of(
            "dnsperf, the same MX queries to the same three addresses",
            [d.seconds for d in r.dnsperf],
        ),
        ("steady cycle / dnsperf", f"{cycle / dnsperf:.2f}x"),
        ("steady `--once` wall / dnsperf", f"{wall / dnsperf:.2f}x"),
        ("first cycle / steady cycle", f"{r.first.cycle / cycle:.2f}x"),
        ("CPU (user+sys) of the first `--once`", f"{r.first.child.cpu:.2f} s"),
        median_of("CPU (user+sys) of a steady `--once`", [x.child.cpu for x in r.steady]),
        median_of("the proxies' CPU during a steady `--once`", [x.proxy_cpu for x in r.steady]),
        median_of(
            "the proxies' CPU during a dnsperf round", [d.runs[0].proxy_cpu for d in r.dnsperf]
        ),
    ]


def checks(r: Results) -> list[Row]:
    last = r.steady[-1]
    sent = r.dnsperf[-1].queries
    completed = min(run.completed for d in r.dnsperf for run in d.runs)
    lost = max(run.lost for d in r.dnsperf for run in d.runs)
    return [
        (
            "verdicts at the end of the last steady cycle",
            ", ".join(f"{v} {c}" for v, c in last.domains.items()),
        ),
        ("log lines at warning or error, steady `--once`, max", max(x.warnings for x in r.steady)),
        (
            "Exchange sandbox requests, steady `--once`, max",
            max(sum(x.requests.values()) for x in r.steady),
        ),
        (
            "every steady `--once` counted the same queries",
            "yes" if all(q == r.queries[1] for q in r.queries[1:]) else "**no**",
        ),
        *(
            (
                f"dnsperf's queries at {label}",
                ", ".join(f"{t} {c:,}" for t, c in sent[label].items()),
            )
            for label in r.rtt
        ),
        ("dnsperf queries completed / lost, worst process", f"{completed:,} / {lost}"),
    ]
