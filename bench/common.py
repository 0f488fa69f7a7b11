"""What the modes of bench/run.py share: children under GNU time, the delay proxy, tenants
and their configs, `mxwatch --once`, dnsperf, hyperfine, query counts and the tables."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rdatatype

from mxwatch.dns import DnsObserver
from mxwatch.sandbox.exchange_api import ExchangeSandbox
from tests.fixtures.knot import ADDRESS, free_port, stop_process

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# `python -m mxwatch` with ROOT first on PYTHONPATH (see use_this_checkout): the mxwatch of
# this checkout, not the one the venv's `mxwatch` script was installed from.
MXWATCH = (sys.executable, "-m", "mxwatch")
GNU_TIME = "/usr/bin/time"
CONNECTOR = "Inbound from Mailprotector Only"
CLIENT_ID = "22222222-2222-2222-2222-222222222222"
SECRET_ENV = "MXWATCH_BENCH_SECRET"
SECRET = "bench-secret-not-a-real-one"
DELAY = 0.020  # seconds, each way
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The concurrency `mxwatch --once` really uses: cli.py builds DnsObserver(config.dns).
CONCURRENCY: int = inspect.signature(DnsObserver).parameters["concurrency"].default
_COUNTS_WAIT = 10.0  # seconds for a proxy to write its counts

T = TypeVar("T")


def use_this_checkout() -> None:
    """Make every child `python -m mxwatch` import this checkout's mxwatch."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def note(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Child:
    """A finished child process: wall time from here, peak RSS and CPU from GNU time."""

    code: int
    wall: float
    maxrss_kb: int
    user: float
    system: float
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.system


def measure(argv: Sequence[str], workdir: Path) -> Child:
    """Run argv under GNU time, whose rusage is the child's own.

    wait4 from this process would not do: exec keeps the RSS high-water mark of the forked
    address space, so a child of the bench would report at least the bench's own RSS.
    """
    usage = workdir / "child.usage"
    timed = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage), *argv]
    started = time.perf_counter()
    done = subprocess.run(timed, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - started
    # GNU time writes "Command exited with non-zero status N" first when it did.
    rss, user, system = usage.read_text().split()[-3:]
    return Child(
        done.returncode, wall, int(rss), float(user), float(system), done.stdout, done.stderr
    )


def proc_cpu(pid: int) -> float:
    """user+sys CPU seconds of a running process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_field(path: str, key: str) -> str:
    """One "key: value" line of a /proc file such as /proc/meminfo."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no {key} in {path}")


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Tenant:
    name: str
    tenant_id: str
    domains: list[str]


def spread(domains: Sequence[str], tenants: int, prefix: str) -> list[Tenant]:
    """`domains` over `tenants` tenants, in consecutive slices."""
    per = -(-len(domains) // tenants)
    slices = [domains[i * per : (i + 1) * per] for i in range(tenants)]
    return [
        Tenant(f"{prefix}{i:03d}", f"{i + 1:08x}-0000-4000-8000-{i + 1:012x}", list(part))
        for i, part in enumerate(slices)
        if part
    ]


@dataclass(frozen=True)
class Proxy:
    """A running bench/delay_proxy.py; it writes its query counts to `counts_path`."""

    address: str
    port: int
    pid: int
    counts_path: Path

    def query_counts(self) -> Counter[str]:
        """The queries it got since it started, by QTYPE: asks it for a dump, waits for it."""
        before = self._dump()[0]
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + _COUNTS_WAIT
        while time.monotonic() < deadline:
            dumps, counts = self._dump()
            if dumps > before:
                return counts
            time.sleep(0.01)
        raise RuntimeError(f"the delay proxy at {self.address}:{self.port} wrote no counts")

    def _dump(self) -> tuple[int, Counter[str]]:
        if not self.counts_path.exists():
            return 0, Counter()
        dump = json.loads(self.counts_path.read_text())
        return int(dump["dumps"]), Counter(dump["queries"])


@contextlib.contextmanager
def delay_proxy(
    upstream_port: int,
    workdir: Path,
    *,
    address: str = ADDRESS,
    port: int | None = None,
    delay: float = DELAY,
) -> Iterator[Proxy]:
    """bench/delay_proxy.py in its own process, at address:port (a free port by default), in
    front of knotd on 127.0.0.1."""
    port = port or free_port((address,))
    name = f"proxy-{address}-{port}"
    argv = [sys.executable, str(BENCH / "delay_proxy.py"), "--listen", f"{address}:{port}"]
    argv += ["--upstream", f"{ADDRESS}:{upstream_port}", "--delay", str(delay)]
    argv += ["--counts", str(workdir / f"{name}.counts")]
    err_path = workdir / f"{name}.err"
    with err_path.open("wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert process.stdout is not None
        if not process.stdout.readline().startswith("ready "):
            raise RuntimeError(f"delay proxy did not start: {err_path.read_text()}")
        yield Proxy(address, port, process.pid, workdir / f"{name}.counts")
    finally:
        stop_process(process)


def round_trip(port: int, name: str, transport: str, address: str = ADDRESS) -> float:
    """Seconds for one MX query through the proxy, which must answer it."""
    query = dns.message.make_query(name, dns.rdatatype.MX)
    send = dns.query.udp if transport == "udp" else dns.query.tcp
    started = time.perf_counter()
    if not send(query, address, port=port, timeout=2.0).answer:
        raise RuntimeError(f"no MX answer over {transport} through the proxy")
    return time.perf_counter() - started


def one_domain_tenant(domain: str) -> Tenant:
    """A tenant of its own with one domain, for the start-up of a one-domain `--once`."""
    return Tenant("startup", "ffffffff-0000-4000-8000-ffffffffffff", [domain])


def consent(sandbox: ExchangeSandbox, tenants: Sequence[Tenant]) -> list[Tenant]:
    """Every tenant consented in the sandbox, with a connector that is already enabled."""
    for tenant in tenants:
        sandbox.add_tenant(tenant.tenant_id, accepted_domains=tenant.domains[:5])
        sandbox.register_app(tenant.tenant_id, CLIENT_ID, secret=SECRET)
        sandbox.add_connector(tenant.tenant_id, CONNECTOR, Enabled=True)
    return list(tenants)


def write_config(
    path: Path,
    sandbox: ExchangeSandbox,
    tenants: Sequence[Tenant],
    sections: Mapping[str, Mapping[str, Any]],
) -> Path:
    """An mxwatch config at `path` for `tenants` of `sandbox`; `sections` are the other
    sections ("daemon", "dns", ...) and keys added to the defaults here."""
    merged: dict[str, dict[str, Any]] = {
        "daemon": {},
        "dns": {"timeout": "3s"},
        "policy": {"confirmations": 2, "settle": "0s", "min_settle": "0s"},
        "exchange": {
            "cloud": "custom",
            "login_url": sandbox.url,
            "admin_url": sandbox.url,
            "ca_bundle": str(sandbox.ca_pem_path),
            "client_id": CLIENT_ID,
            "client_secret_env": SECRET_ENV,
        },
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    lines = []
    for section, values in merged.items():
        lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    for t in tenants:
        lines += ["[[tenant]]", f'name = "{t.name}"', f'tenant_id = "{t.tenant_id}"']
        lines += [f'connector = "{CONNECTOR}"', f"domains = {json.dumps(t.domains)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class OnceRun:
    """One `mxwatch --once` of the whole config."""

    child: Child
    cycle: float  # cycle_finished.duration_s
    domains: dict[str, int]  # verdicts at the end of the cycle
    requests: dict[str, int]  # to the sandbox, by cmdlet or endpoint
    proxy_cpu: float
    warnings: int  # log lines at level warning or error


def is_warning(line: str) -> bool:
    return '"level": "warning"' in line or '"level": "error"' in line


def run_once(
    config: Path, sandbox: ExchangeSandbox, workdir: Path, proxies: Sequence[Proxy] = ()
) -> OnceRun:
    """`mxwatch --once -c CONFIG` under GNU time, with the CPU the proxies spent meanwhile."""
    note(f"mxwatch --once -c {config.name}")
    requests_before = len(sandbox.requests)
    proxies_before = sum(proc_cpu(proxy.pid) for proxy in proxies)
    child = measure([*MXWATCH, "--once", "-c", str(config)], workdir)
    proxy_cpu = sum(proc_cpu(proxy.pid) for proxy in proxies) - proxies_before
    finished = [line for line in child.stdout.splitlines() if '"cycle_finished"' in line]
    if child.code != 0 or not finished:
        raise RuntimeError(f"mxwatch --once exited {child.code}:\n{child.stderr[-2000:]}")
    event = json.loads(finished[-1])
    kinds = Counter(r.cmdlet or r.endpoint for r in sandbox.requests[requests_before:])
    warnings = sum(map(is_warning, child.stdout.splitlines()))
    cycle = float(event["duration_s"])
    return OnceRun(child, cycle, event["domains"], dict(kinds), proxy_cpu, warnings)


QueryCounts = dict[str, Counter[str]]  # by source: queries by QTYPE
Counters = Mapping[str, Callable[[], Counter[str]]]  # by source: its running totals


def counted(counters: Counters, work: Callable[[], T]) -> tuple[T, QueryCounts]:
    """`work()`'s result and the queries each counter saw meanwhile (counters only grow:
    the difference of their totals, read before and after, outside the work)."""
    before = {source: count() for source, count in counters.items()}
    result = work()
    after = {source: count() for source, count in counters.items()}
    return result, {source: after[source] - before[source] for source in counters}


@dataclass(frozen=True)
class DnsperfRun:
    seconds: float
    completed: int
    lost: int
    proxy_cpu: float


def dnsperf_argv(address: str, port: int, queries: Path, in_flight: int) -> list[str]:
    """Every line of `queries` once, at most `in_flight` queries outstanding."""
    argv = ["dnsperf", "-s", address, "-p", str(port), "-d", str(queries), "-n", "1"]
    return [*argv, "-c", str(in_flight), "-q", str(in_flight), "-t", "3"]


def dnsperf_figures(output: str, proxy_cpu: float) -> DnsperfRun:
    """Run time, completed and lost queries from dnsperf's report."""

    def number(label: str) -> float:
        match = re.search(rf"{re.escape(label)}:\s+([0-9.]+)", output)
        if match is None:
            raise RuntimeError(f"dnsperf output lacks {label!r}:\n{output}")
        return float(match.group(1))

    completed, lost = int(number("Queries completed")), int(number("Queries lost"))
    return DnsperfRun(number("Run time (s)"), completed, lost, proxy_cpu)


Timing = tuple[float, float, float]  # median, min, max seconds


def hyperfine(
    commands: Sequence[Sequence[str]], runs: int, workdir: Path, warmup: int = 3
) -> list[Timing]:
    """The wall time of each command, by `hyperfine -N --warmup WARMUP`."""
    note("hyperfine")
    export = workdir / "hyperfine.json"
    argv = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs)]
    argv += ["--export-json", str(export)]
    commands_text = map(shlex.join, commands)
    subprocess.run([*argv, *commands_text], capture_output=True, check=True, cwd=ROOT)
    results = json.loads(export.read_text())["results"]
    return [(float(r["median"]), float(r["min"]), float(r["max"])) for r in results]


# --------------------------------------------------------------------------- tables

Row = tuple[object, ...]  # (what, value) or (what, value, target, met)


def table(header: Sequence[str], rows: Iterable[Row]) -> list[str]:
    """A markdown table; every column after the first is right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def figures(title: str, rows: Sequence[Row]) -> list[str]:
    """A section: one row per figure, in two columns or, when some have a target, four."""
    header = ["what", "value", "target", "met"][: max(len(row) for row in rows)]
    padded = [(*row, "", "")[: len(header)] for row in rows]
    return [f"### {title}", "", *table(header, padded)]


def median_of(what: str, values: Sequence[float]) -> Row:
    """The median of the runs, each run shown too."""
    each = ", ".join(f"{value:.2f}" for value in values)
    return f"{what}, median (runs: {each})", f"{statistics.median(values):.2f} s"


def target(what: str, value: str, bound: str, ok: bool) -> Row:
    return what, value, bound, "yes" if ok else "**no**"


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def _type_order(qtype: str) -> tuple[bool, str]:
    return qtype != "MX", qtype


def query_table(
    first: QueryCounts, steady: QueryCounts, domains: int, mx_sources: Mapping[str, int]
) -> list[str]:
    """Queries by source and QTYPE in the first and a steady `--once`, per domain.

    The target is the issue's: a steady cycle makes one MX query per domain per source and
    nothing else; `mx_sources` says how many sources each counter sees (a counter in front
    of every source sees them all).
    """
    header = ["counted at", "QTYPE", "first `--once`", "per domain", "steady `--once`"]
    header += ["per domain", "target, steady", "met"]
    rows: list[Row] = []
    for source, sources in mx_sources.items():
        types = sorted({"MX", *first[source], *steady[source]}, key=_type_order)
        for qtype in types:
            goal = sources if qtype == "MX" else 0
            per_domain = steady[source][qtype] / domains
            met = "yes" if steady[source][qtype] == goal * domains else "**no**"
            rows.append(
                (
                    source,
                    qtype,
                    f"{first[source][qtype]:,}",
                    f"{first[source][qtype] / domains:.3g}",
                    f"{steady[source][qtype]:,}",
                    f"{per_domain:.3g}",
                    f"{goal} per domain",
                    met,
                )
            )
    return table(header, rows)
