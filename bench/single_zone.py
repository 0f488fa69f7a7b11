"""Mode "single-zone": 10,000 names in one zone behind the delay proxy, `authoritative = false`.

Cycle throughput against dnsperf and a sequential loop, footprint, Exchange cost, start-up and
a profile: sections 1 to 5 of the tables (see bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.resolver
from common import (
    CONCURRENCY,
    DELAY,
    MXWATCH,
    Child,
    DnsperfRun,
    OnceRun,
    Proxy,
    Row,
    Tenant,
    Timing,
    consent,
    delay_proxy,
    dnsperf_argv,
    dnsperf_figures,
    figures,
    hyperfine,
    is_warning,
    mb,
    measure,
    median_of,
    note,
    one_domain_tenant,
    proc_cpu,
    proc_field,
    round_trip,
    run_once,
    spread,
    target,
    write_config,
)
from knot_zone import bench_knot
from profiling import Profile, py_spy, render_steady_profile

from mxwatch import logs
from mxwatch.config import load_config
from mxwatch.cycle import run_cycle
from mxwatch.dns import DnsObserver
from mxwatch.exchange import ExchangeClient
from mxwatch.sandbox.exchange_api import ExchangeSandbox
from mxwatch.store import Store
from tests.fixtures.knot import ADDRESS, stop_process

ZONE = "bench.example"
FILTER_MX = "mx1.inbound.emailservice.io."
MSAL_EXPIRY_SKEW = 300  # MSAL treats a cached token that expires within 5 minutes as expired
DAEMON_CYCLES = 3

TARGET_DNSPERF_RATIO = 2.0  # mxwatch cycle / dnsperf, at most
TARGET_SEQUENTIAL_RATIO = 50.0  # sequential loop / mxwatch cycle, more than
TARGET_RSS_MB = 100.0


@dataclass(frozen=True)
class Sizes:
    domains: int
    tenants: int
    steady_runs: int
    dnsperf_runs: int
    sequential_sample: int
    token_cycles: int
    token_domains: int  # domains in the in-process token phase
    startup_runs: int


FULL = Sizes(10_000, 200, 3, 3, 300, 4, 1_000, 20)
QUICK = Sizes(1_000, 50, 2, 1, 100, 3, 250, 10)


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Lab:
    """What the measurements share: the work directory, the names, the servers."""

    workdir: Path
    names: list[str]
    knot_port: int
    proxy: Proxy
    sandbox: ExchangeSandbox

    def config(
        self,
        name: str,
        tenants: Sequence[Tenant],
        *,
        sandbox: ExchangeSandbox | None = None,
        resolver: str | None = None,
        state: str | None = None,
        **extra: dict[str, str],
    ) -> Path:
        """NAME.toml, whose state is NAME.db or STATE.db, for `tenants`; `extra` adds keys to a
        section, e.g. policy={"recheck": "1s"}."""
        sections: dict[str, dict[str, Any]] = {
            "daemon": {"state": str(self.workdir / f"{state or name}.db")},
            "dns": {
                "resolvers": [resolver or f"{ADDRESS}:{self.proxy.port}"],
                "authoritative": False,
            },
        }
        for section, values in extra.items():
            sections.setdefault(section, {}).update(values)
        path = self.workdir / f"{name}.toml"
        return write_config(path, sandbox or self.sandbox, tenants, sections)


# --------------------------------------------------------------------------- measurements


def run_dnsperf(lab: Lab) -> DnsperfRun:
    note("dnsperf")
    queries = lab.workdir / "dnsperf.queries"
    queries.write_text("".join(f"{name} MX\n" for name in lab.names))
    proxy_before = proc_cpu(lab.proxy.pid)
    argv = dnsperf_argv(ADDRESS, lab.proxy.port, queries, CONCURRENCY)
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return dnsperf_figures(output, proc_cpu(lab.proxy.pid) - proxy_before)


@dataclass(frozen=True)
class Sequential:
    queries: int
    seconds: float
    answered: int


def run_sequential(lab: Lab, sample_size: int) -> Sequential:
    """What most scripts do: one blocking dnspython query after another, on a sample."""
    note(f"sequential dnspython loop over {sample_size} names")
    sample = lab.names[:: max(1, len(lab.names) // sample_size)][:sample_size]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [ADDRESS]
    resolver.port = lab.proxy.port
    resolver.lifetime = 3.0
    answered = 0
    started = time.perf_counter()
    for name in sample:
        answer = resolver.resolve(name, "MX", raise_on_no_answer=False, search=False)
        answered += answer.rrset is not None
    return Sequential(len(sample), time.perf_counter() - started, answered)


@dataclass(frozen=True)
class Daemon:
    interval: int  # seconds
    vm_hwm_kb: int  # after DAEMON_CYCLES cycles
    warnings: int  # log lines at level warning or error


def run_daemon(lab: Lab, config: Path, interval: int, timeout: float = 180) -> Daemon:
    """`mxwatch -c CONFIG`, the daemon, for DAEMON_CYCLES cycles: its peak RSS."""
    note(f"mxwatch -c {config.name}, the daemon, for {DAEMON_CYCLES} cycles")
    err = lab.workdir / "daemon.err"
    with err.open("wb") as stderr:
        argv = [*MXWATCH, "-c", str(config)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        seen = warnings = 0
        for line in process.stdout:
            seen += '"cycle_finished"' in line
            warnings += is_warning(line)
            if seen == DAEMON_CYCLES:
                vm_hwm = int(proc_field(f"/proc/{process.pid}/status", "VmHWM").split()[0])
                return Daemon(interval, vm_hwm, warnings)
        raise RuntimeError(f"the daemon ended after {seen} cycles:\n{err.read_text()[-2000:]}")
    finally:
        watchdog.cancel()
        stop_process(process)


@dataclass
class TokenPhase:
    lifetime: int
    tenants: int
    seconds: float = 0.0
    token_requests: int = 0
    api_calls_per_cycle: list[int] = field(default_factory=list)

    @property
    def per_tenant(self) -> float:
        return self.token_requests / self.tenants

    @property
    def lifetimes_touched(self) -> int:
        """How many token lifetimes the phase spans: the most tokens a tenant may need."""
        return int(self.seconds // (self.lifetime - MSAL_EXPIRY_SKEW)) + 1


def token_phase(sandbox: ExchangeSandbox, config_path: Path, cycles: int) -> TokenPhase:
    """Cycles 1 s apart in this process with one ExchangeClient, as the daemon runs them;
    the config's recheck of 1 s makes every cycle read every connector."""
    note(f"{cycles} cycles of {config_path.name} in one process")
    config = load_config(config_path)
    phase = TokenPhase(sandbox.token_lifetime, len(config.tenants))
    tokens_before = len(sandbox.requests_to("token"))
    log_path = config_path.with_suffix(".log")
    state = config.daemon.state
    if not isinstance(state, Path):  # Store.open takes a file; the bench writes only those
        raise TypeError(f"the token phase needs an SQLite state file, not {state}")

    async def cycles_in_one_process() -> None:
        observer = DnsObserver(config.dns)
        with Store.open(state) as store:
            async with ExchangeClient(config.exchange) as exchange:
                for index in range(cycles):
                    await asyncio.sleep(1.0 if index else 0.0)
                    api_before = len(sandbox.requests_to("api"))
                    report = await run_cycle(config, store, observer, exchange, dry_run=False)
                    if report.errors:
                        raise RuntimeError(f"token phase: {report.errors} errors, see {log_path}")
                    phase.api_calls_per_cycle.append(len(sandbox.requests_to("api")) - api_before)

    with log_path.open("w") as log_stream:
        logs.configure("warning", stream=log_stream, json=True)
        started = time.monotonic()
        asyncio.run(cycles_in_one_process())
        phase.seconds = time.monotonic() - started
    phase.token_requests = len(sandbox.requests_to("token")) - tokens_before
    return phase


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Results:
    sizes: Sizes
    knot_seconds: float
    rtt: dict[str, float]  # by transport
    dnsperf_command: str
    first: OnceRun
    steady: list[OnceRun]
    profile: Profile
    dnsperf: list[DnsperfRun]
    sequential: Sequential
    daemon: Daemon
    tokens: tuple[TokenPhase, TokenPhase]  # normal and short token lifetime
    one_domain: Child
    startup: tuple[Timing, Timing]  # python -c pass, one-domain --once


def run(quick: bool, workdir: Path) -> list[str]:
    """Measure, and return the sections of the tables."""
    return render(measure_all(QUICK if quick else FULL, workdir))


def measure_all(sizes: Sizes, workdir: Path) -> Results:
    clock = time.monotonic()
    labels = [f"d{i:05d}" for i in range(sizes.domains)]
    names = [f"{label}.{ZONE}" for label in labels]
    recheck = {"recheck": "1s"}
    with contextlib.ExitStack() as stack:
        note(f"knotd with {sizes.domains} names")
        knot = stack.enter_context(bench_knot(ZONE, labels, FILTER_MX))
        knot_seconds = time.monotonic() - clock
        proxy = stack.enter_context(delay_proxy(knot.port, workdir))
        lab = Lab(workdir, names, knot.port, proxy, stack.enter_context(ExchangeSandbox()))
        rtt = {
            transport: round_trip(proxy.port, names[0], transport) for transport in ("udp", "tcp")
        }
        # The first run adopts the enabled connectors; the later ones are steady.
        tenants = consent(lab.sandbox, spread(names, sizes.tenants, "t"))
        config = lab.config("mxwatch", tenants)
        first = run_once(config, lab.sandbox, workdir, [proxy])
        steady = [run_once(config, lab.sandbox, workdir, [proxy]) for _ in range(sizes.steady_runs)]
        # Daemon cycles further apart than a cycle lasts: a gap between two observations of
        # a domain longer than 1.5 x interval would restart its streak (policy.allowed_gap).
        interval = math.ceil(max(x.cycle for x in steady)) + 2
        daemon_extra = {"interval": f"{interval}s", "jitter": "0s"}
        daemon_config = lab.config("daemon", tenants, state="mxwatch", daemon=daemon_extra)
        daemon = run_daemon(lab, daemon_config, interval)
        profile = py_spy(config, workdir)
        dnsperf = [run_dnsperf(lab) for _ in range(sizes.dnsperf_runs)]
        sequential = run_sequential(lab, sizes.sequential_sample)
        token_tenants = consent(
            lab.sandbox, spread(names[: sizes.token_domains], sizes.tenants, "k")
        )
        tokens_config = lab.config("tokens", token_tenants, policy=recheck)
        tokens = token_phase(lab.sandbox, tokens_config, sizes.token_cycles)
        one_domain, startup = measure_startup(lab, sizes.startup_runs)
        short = stack.enter_context(ExchangeSandbox(token_lifetime=MSAL_EXPIRY_SKEW + 4))
        short_tenants = consent(short, spread(names[:100], 20, "s"))
        short_config = lab.config("short", short_tenants, sandbox=short, policy=recheck)
        short_tokens = token_phase(short, short_config, cycles=8)
    return Results(
        sizes=sizes,
        knot_seconds=knot_seconds,
        rtt=rtt,
        dnsperf_command=shlex.join(dnsperf_argv(ADDRESS, proxy.port, Path("QUERIES"), CONCURRENCY)),
        first=first,
        steady=steady,
        profile=profile,
        dnsperf=dnsperf,
        sequential=sequential,
        daemon=daemon,
        tokens=(tokens, short_tokens),
        one_domain=one_domain,
        startup=startup,
    )


def measure_startup(lab: Lab, runs: int) -> tuple[Child, tuple[Timing, Timing]]:
    """A steady one-domain `--once` asking knotd directly: its peak RSS and CPU, and the
    wall times of `python -c pass` and of it."""
    tenant = one_domain_tenant(lab.names[0])
    config = lab.config(
        "one", consent(lab.sandbox, [tenant]), resolver=f"{ADDRESS}:{lab.knot_port}"
    )
    once = [*MXWATCH, "--once", "-c", str(config)]
    measure(once, lab.workdir)  # adopts the connector; the later runs are steady
    one_domain = measure(once, lab.workdir)
    python, mxwatch = hyperfine([[sys.executable, "-c", "pass"], once], runs, lab.workdir)
    return one_domain, (python, mxwatch)


# --------------------------------------------------------------------------- tables


def render(r: Results) -> list[str]:
    mode = "quick" if r.sizes == QUICK else "full"
    return [
        f"## Mode single-zone ({mode}): {r.sizes.domains:,} names in one zone, through the "
        "delay proxy, `authoritative = false`",
        "",
        *figures("Set-up", setup(r)),
        *figures("1. Cycle throughput", throughput(r)),
        *figures("2. Footprint (peak RSS and CPU of a child from GNU time)", footprint(r)),
        *figures("3. Exchange cost", exchange(r)),
        *figures("4. Start-up (`hyperfine -N --warmup 3`)", startup(r)),
        *render_steady_profile(
            "5. Profile (py-spy over one more steady `--once`)", r.profile, r.steady
        ),
    ]


def setup(r: Results) -> list[Row]:
    n = r.sizes.domains
    return [
        (f"names in the zone, each `MX 10 {FILTER_MX}`", f"{n:,}"),
        ("knotd start-up and zone load", f"{r.knot_seconds:.2f} s"),
        ("delay of the proxy, each way", f"{DELAY * 1000:.0f} ms"),
        ("one MX query through the proxy, UDP", f"{r.rtt['udp'] * 1000:.1f} ms"),
        ("the same over TCP, connection set-up included", f"{r.rtt['tcp'] * 1000:.1f} ms"),
        ("mxwatch domains / tenants", f"{n:,} / {r.sizes.tenants}"),
        ("queries in flight: DnsObserver's default, dnsperf's `-c` and `-q`", CONCURRENCY),
        ("latency floor: domains / in flight x round trip", f"{n / CONCURRENCY * 2 * DELAY:.2f} s"),
        ("dnsperf (QUERIES: one `NAME MX` line per domain)", f"`{r.dnsperf_command}`"),
    ]


def throughput(r: Results) -> list[Row]:
    n, seq = r.sizes.domains, r.sequential
    cycle = statistics.median(x.cycle for x in r.steady)
    wall = statistics.median(x.child.wall for x in r.steady)
    dnsperf = statistics.median(d.seconds for d in r.dnsperf)
    sequential = seq.seconds / seq.queries * n
    verdicts = ", ".join(f"{verdict} {count}" for verdict, count in r.steady[-1].domains.items())
    return [
        median_of("steady cycle (`cycle_finished.duration_s`)", [x.cycle for x in r.steady]),
        median_of("steady `--once` process wall time", [x.child.wall for x in r.steady]),
        ("first `--once`: cycle / wall", f"{r.first.cycle:.2f} s / {r.first.child.wall:.2f} s"),
        ("verdicts at the end of the last steady cycle", verdicts),
        ("log lines at warning or error, steady `--once`, max", max(x.warnings for x in r.steady)),
        median_of("dnsperf, the same queries", [d.seconds for d in r.dnsperf]),
        (
            "dnsperf queries completed / lost, worst run",
            f"{min(d.completed for d in r.dnsperf)} / {max(d.lost for d in r.dnsperf)}",
        ),
        (
            f"sequential dnspython loop, {seq.queries} names ({seq.answered} MX answers)",
            f"{seq.seconds:.2f} s",
        ),
        ("the same, **extrapolated** to every name", f"{sequential:.1f} s"),
        (
            "queries/s: mxwatch cycle / dnsperf / sequential",
            f"{n / cycle:,.0f} / {n / dnsperf:,.0f} / {n / sequential:,.0f}",
        ),
        target(
            "mxwatch cycle / dnsperf",
            f"{cycle / dnsperf:.2f}x",
            f"<= {TARGET_DNSPERF_RATIO:g}x",
            cycle / dnsperf <= TARGET_DNSPERF_RATIO,
        ),
        ("mxwatch `--once` wall / dnsperf", f"{wall / dnsperf:.2f}x"),
        target(
            "sequential / mxwatch cycle",
            f"{sequential / cycle:.1f}x",
            f"> {TARGET_SEQUENTIAL_RATIO:g}x",
            sequential / cycle > TARGET_SEQUENTIAL_RATIO,
        ),
        ("sequential / mxwatch `--once` wall", f"{sequential / wall:.1f}x"),
        median_of("proxy CPU during a steady `--once`", [x.proxy_cpu for x in r.steady]),
        median_of("proxy CPU during a dnsperf run", [d.proxy_cpu for d in r.dnsperf]),
    ]


def footprint(r: Results) -> list[Row]:
    rss = [
        ("peak RSS of a steady `--once`, max", max(x.child.maxrss_kb for x in r.steady)),
        ("peak RSS of the first `--once`", r.first.child.maxrss_kb),
        (f"daemon VmHWM after {DAEMON_CYCLES} cycles on the state above", r.daemon.vm_hwm_kb),
    ]
    cpu = statistics.median(x.child.cpu for x in r.steady)
    per_k, one = r.sizes.domains / 1000, r.one_domain
    return [
        *(
            target(what, mb(kb), f"<= {TARGET_RSS_MB:g} MB", kb <= TARGET_RSS_MB * 1024)
            for what, kb in rss
        ),
        ("the daemon's interval: the longest steady cycle and 2 s", f"{r.daemon.interval} s"),
        ("log lines at warning or error of the daemon", r.daemon.warnings),
        ("peak RSS of the one-domain `--once` of section 4", mb(one.maxrss_kb)),
        median_of("CPU (user+sys) of a steady `--once`", [x.child.cpu for x in r.steady]),
        median_of("sys CPU of a steady `--once`", [x.child.system for x in r.steady]),
        ("CPU of the one-domain `--once` (start-up)", f"{one.cpu:.2f} s"),
        ("CPU per 1,000 domains, whole process", f"{cpu / per_k:.3f} s"),
        (
            "CPU per 1,000 domains, minus the one-domain `--once`",
            f"{(cpu - one.cpu) / per_k:.3f} s",
        ),
    ]


def exchange(r: Results) -> list[Row]:
    steady = max(sum(x.requests.values()) for x in r.steady)
    first = ", ".join(f"{kind} {count}" for kind, count in r.first.requests.items())
    rows: list[Row] = [
        target("sandbox requests per steady `--once`, max", str(steady), "0", steady == 0),
        ("sandbox requests of the first `--once`, by kind", first),
    ]
    for t in r.tokens:
        calls = ", ".join(map(str, t.api_calls_per_cycle))
        what = (
            f"token requests per tenant: {t.tenants} tenants, token lifetime {t.lifetime} s, "
            f"{len(t.api_calls_per_cycle)} cycles in {t.seconds:.1f} s, API calls per cycle {calls}"
        )
        rows.append(
            target(
                what,
                f"{t.per_tenant:.2f}",
                f"<= {t.lifetimes_touched} (lifetimes touched)",
                t.per_tenant <= t.lifetimes_touched,
            )
        )
    return rows


def startup(r: Results) -> list[Row]:
    def ms(timing: Timing) -> str:
        return "{:.1f} ms ({:.1f} to {:.1f})".format(*(seconds * 1000 for seconds in timing))

    python, once = r.startup
    return [
        (f"`python -c pass`, median (min to max) of {r.sizes.startup_runs}", ms(python)),
        ("`mxwatch --once`, one domain, knotd directly, steady", ms(once)),
        ("ratio of the medians", f"{once[0] / python[0]:.1f}x"),
    ]
