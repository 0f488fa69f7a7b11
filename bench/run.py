"""mxwatch benchmark (issue 5, item 5): writes bench/RESULTS.md from a real run.

    .venv/bin/python bench/run.py            # full: 10,000 domains over 200 tenants
    .venv/bin/python bench/run.py --quick    # sanity: 1,000 domains over 50 tenants

Everything runs on 127.0.0.1: a knotd serving the generated zone, bench/delay_proxy.py in front
of it (20 ms each way), the HTTPS Exchange sandbox (mxwatch.sandbox.exchange_api) in a thread
of this process, and mxwatch itself as a subprocess (`mxwatch --once`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
from knot_zone import ADDRESS, KnotZone, free_port

from mxwatch import logs
from mxwatch.config import load_config
from mxwatch.cycle import run_cycle
from mxwatch.dns import DnsObserver
from mxwatch.exchange import ExchangeClient
from mxwatch.sandbox.exchange_api import ExchangeSandbox
from mxwatch.store import Store

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
MXWATCH = VENV_BIN / "mxwatch"
ZONE = "bench.example"
FILTER_MX = "mx1.inbound.emailservice.io."
CONNECTOR = "Inbound from Mailprotector Only"
CLIENT_ID = "22222222-2222-2222-2222-222222222222"
SECRET_ENV = "MXWATCH_BENCH_SECRET"
SECRET = "bench-secret-not-a-real-one"
DELAY = 0.020  # seconds, each way
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The concurrency `mxwatch --once` really uses: cli.py builds DnsObserver(config.dns).
OBSERVER_CONCURRENCY: int = inspect.signature(DnsObserver).parameters["concurrency"].default

TARGET_DNSPERF_RATIO = 2.0
TARGET_SEQUENTIAL_RATIO = 50.0
TARGET_RSS_MB = 100.0


# --------------------------------------------------------------------------- plumbing


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


@dataclass
class Measured:
    """One child process, reaped with wait4 so its own rusage is exact."""

    argv: list[str]
    code: int
    wall: float
    maxrss_kb: int
    utime: float
    stime: float
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.utime + self.stime

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.stdout.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    def cycle_seconds(self) -> float:
        finished = self.events("cycle_finished")
        if not finished:
            raise RuntimeError(f"no cycle_finished event (exit {self.code}):\n{self.stderr}")
        return float(finished[-1]["duration_s"])


GNU_TIME = Path("/usr/bin/time")


def measure(argv: Sequence[str], env: dict[str, str], workdir: Path) -> Measured:
    """Run argv; wall time here, peak RSS and CPU of the process itself.

    On Linux a child's ru_maxrss starts from the RSS of the process that forked it (exec keeps
    the high-water mark of the old address space), so wait4 on a child of this big process
    would report at least our own RSS. GNU time (a tiny parent) reports the clean figure; we
    use it when installed (Debian package `time`), else fall back to wait4.
    """
    out_path, err_path = workdir / "child.out", workdir / "child.err"
    usage_path = workdir / "child.usage"
    wrapped = list(argv)
    if GNU_TIME.exists():
        wrapped = [str(GNU_TIME), "-f", "%M %U %S", "-o", str(usage_path), *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    maxrss, utime, stime = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    if GNU_TIME.exists():
        fields = usage_path.read_text().split()[-3:]
        maxrss, utime, stime = int(fields[0]), float(fields[1]), float(fields[2])
    return Measured(
        list(argv),
        process.returncode,
        wall,
        maxrss,
        utime,
        stime,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


def proc_cpu(pid: int | None) -> float:
    """user+sys CPU seconds of a running process, from /proc/PID/stat."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mxwatch_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
    }
    env[SECRET_ENV] = SECRET
    return env


def note(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fixtures


def labels(count: int) -> list[str]:
    return [f"d{i:05d}" for i in range(count)]


def tenant_id(index: int) -> str:
    return f"{index + 1:08x}-0000-4000-8000-{index + 1:012x}"


@dataclass
class TenantSpec:
    name: str
    tenant_id: str
    domains: list[str]


def spread(domains: Sequence[str], tenants: int, prefix: str = "t") -> list[TenantSpec]:
    per = -(-len(domains) // tenants)
    return [
        TenantSpec(f"{prefix}{i:03d}", tenant_id(i), list(domains[i * per : (i + 1) * per]))
        for i in range(tenants)
        if domains[i * per : (i + 1) * per]
    ]


def prepare_sandbox(sandbox: ExchangeSandbox, tenants: Sequence[TenantSpec]) -> None:
    """Every tenant consented, with a well-formed connector that is already enabled."""
    for tenant in tenants:
        sandbox.add_tenant(tenant.tenant_id, accepted_domains=tenant.domains[:5])
        sandbox.register_app(tenant.tenant_id, CLIENT_ID, secret=SECRET)
        sandbox.add_connector(tenant.tenant_id, CONNECTOR, Enabled=True)


def write_config(
    path: Path,
    *,
    state: Path,
    resolver: str,
    sandbox: ExchangeSandbox,
    tenants: Sequence[TenantSpec],
    policy: dict[str, str | int] | None = None,
    daemon: dict[str, str] | None = None,
) -> Path:
    policy = policy or {"confirmations": 2, "settle": "0s", "min_settle": "0s"}
    lines = ["[daemon]", f'state = "{state}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (daemon or {}).items()]
    lines += [
        "[dns]",
        f"resolvers = {json.dumps([resolver])}",
        "authoritative = false",
        'timeout = "3s"',
        "[policy]",
        *(f"{k} = {json.dumps(v)}" for k, v in policy.items()),
        "[exchange]",
        'cloud = "custom"',
        f'login_url = "{sandbox.url}"',
        f'admin_url = "{sandbox.url}"',
        f'ca_bundle = "{sandbox.ca_pem_path}"',
        f'client_id = "{CLIENT_ID}"',
        f'client_secret_env = "{SECRET_ENV}"',
    ]
    for tenant in tenants:
        lines += [
            "[[tenant]]",
            f'name = "{tenant.name}"',
            f'tenant_id = "{tenant.tenant_id}"',
            f'connector = "{CONNECTOR}"',
            f"domains = {json.dumps(tenant.domains)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def delay_proxy(upstream_port: int, workdir: Path) -> Iterator[tuple[int, int]]:
    """bench/delay_proxy.py in its own process; yields (port, pid)."""
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH / "delay_proxy.py"),
        "--listen",
        f"{ADDRESS}:{port}",
        "--upstream",
        f"{ADDRESS}:{upstream_port}",
        "--delay",
        str(DELAY),
    ]
    with (workdir / "proxy.err").open("wb") as err:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"delay proxy did not start: {(workdir / 'proxy.err').read_text()}")
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_proxy(port: int, name: str) -> dict[str, float]:
    """One MX query over UDP and one over TCP through the proxy: both answer, both >= 40 ms."""
    rtts: dict[str, float] = {}
    for transport in ("udp", "tcp"):
        query = dns.message.make_query(name, dns.rdatatype.MX)
        started = time.perf_counter()
        if transport == "udp":
            response = dns.query.udp(query, ADDRESS, port=port, timeout=2.0)
        else:
            response = dns.query.tcp(query, ADDRESS, port=port, timeout=2.0)
        rtts[transport] = time.perf_counter() - started
        if not response.answer:
            raise RuntimeError(f"no MX answer over {transport} through the proxy")
        if rtts[transport] < 2 * DELAY:
            raise RuntimeError(f"{transport} round trip {rtts[transport]:.4f}s is below 2x delay")
    return rtts


# --------------------------------------------------------------------------- measurements


def run_dnsperf(port: int, names: Sequence[str], workdir: Path) -> dict[str, float]:
    data = workdir / "dnsperf.queries"
    data.write_text("".join(f"{name} MX\n" for name in names))
    argv = [
        "dnsperf",
        "-s",
        ADDRESS,
        "-p",
        str(port),
        "-d",
        str(data),
        "-n",
        "1",
        "-c",
        str(OBSERVER_CONCURRENCY),
        "-q",
        str(OBSERVER_CONCURRENCY),
        "-t",
        "3",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)

    def number(label: str) -> float:
        match = re.search(rf"{re.escape(label)}:\s+([0-9.]+)", done.stdout)
        if match is None:
            raise RuntimeError(f"dnsperf output lacks {label!r}:\n{done.stdout}")
        return float(match.group(1))

    return {
        "run_time": number("Run time (s)"),
        "completed": number("Queries completed"),
        "lost": number("Queries lost"),
        "qps": number("Queries per second"),
    }


def dnsperf_command(port: int) -> str:
    c = OBSERVER_CONCURRENCY
    return f"dnsperf -s {ADDRESS} -p {port} -d QUERIES -n 1 -c {c} -q {c} -t 3"


def run_sequential(port: int, names: Sequence[str]) -> tuple[float, int]:
    """What most scripts do: one blocking dnspython query after another. (seconds, answered)"""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [f"{ADDRESS}"]
    resolver.port = port
    resolver.cache = None
    resolver.lifetime = 3.0
    answered = 0
    started = time.perf_counter()
    for name in names:
        answer = resolver.resolve(name, "MX", raise_on_no_answer=False, search=False)
        answered += answer.rrset is not None
    return time.perf_counter() - started, answered


@dataclass
class DaemonResult:
    available: bool
    detail: str
    cycles: int = 0
    vm_hwm_kb: int = 0
    vm_rss_kb: int = 0


def run_daemon(config: Path, env: dict[str, str], cycles: int, timeout: float) -> DaemonResult:
    """`mxwatch -c CONFIG` (no --once) for a few cycles; VmHWM from /proc/PID/status."""
    process = subprocess.Popen(
        [str(MXWATCH), "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = 0
    lock = threading.Lock()

    def reader() -> None:
        nonlocal seen
        assert process.stdout is not None
        for line in process.stdout:
            if '"cycle_finished"' in line:
                with lock:
                    seen += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    status: dict[str, int] = {}
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                stderr = process.stderr.read() if process.stderr else ""
                return DaemonResult(
                    False, f"exited with {process.returncode}: {stderr.strip()[:200]}"
                )
            with lock:
                done = seen
            if done >= cycles:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        status[key] = int(value.split()[0])
                return DaemonResult(
                    True, "ok", done, status.get("VmHWM", 0), status.get("VmRSS", 0)
                )
            time.sleep(0.2)
        return DaemonResult(True, f"only {seen} cycles within {timeout:.0f}s", seen)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class TokenPhase:
    lifetime: int
    effective_lifetime: int
    tenants: int
    cycles: int
    elapsed: float
    token_requests: int
    api_calls_per_cycle: list[int] = field(default_factory=list)

    @property
    def per_tenant(self) -> float:
        return self.token_requests / self.tenants

    @property
    def lifetimes_spanned(self) -> int:
        """How many token lifetimes the phase touched: the most tokens a tenant needs."""
        return int(self.elapsed // self.effective_lifetime) + 1


# MSAL treats a cached token that expires within 5 minutes as expired.
MSAL_EXPIRY_SKEW = 300


def token_phase(
    sandbox: ExchangeSandbox,
    config_path: Path,
    tenants: int,
    cycles: int,
    pause: float,
    log_path: Path,
) -> TokenPhase:
    """Cycles in one process, one ExchangeClient; recheck is tiny so every cycle calls Exchange."""
    os.environ[SECRET_ENV] = SECRET
    config = load_config(config_path, environ=os.environ)
    tokens_before = len(sandbox.requests_to("token"))
    phase = TokenPhase(
        sandbox.token_lifetime,
        sandbox.token_lifetime - MSAL_EXPIRY_SKEW,
        tenants,
        cycles,
        0.0,
        0,
    )

    async def cycles_in_one_process() -> None:
        dns_observer = DnsObserver(config.dns)
        with Store.open(config.daemon.state) as store:
            async with ExchangeClient(config.exchange) as exchange:
                for index in range(cycles):
                    if index:
                        await asyncio.sleep(pause)
                    api_before = len(sandbox.requests_to("api"))
                    await run_cycle(config, store, dns_observer, exchange, dry_run=False)
                    phase.api_calls_per_cycle.append(len(sandbox.requests_to("api")) - api_before)

    with log_path.open("w") as log_stream:
        logs.configure("warning", stream=log_stream, json=True)
        started = time.monotonic()
        asyncio.run(cycles_in_one_process())
        phase.elapsed = time.monotonic() - started
    phase.token_requests = len(sandbox.requests_to("token")) - tokens_before
    return phase


def hyperfine_startup(commands: Sequence[Sequence[str]], runs: int, workdir: Path) -> list[float]:
    """Median wall seconds per command: hyperfine when installed, else our own repeated timing."""
    env = mxwatch_env()
    if shutil.which("hyperfine"):
        export = workdir / "hyperfine.json"
        argv = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs)]
        argv += ["--export-json", str(export), *(shlex.join(c) for c in commands)]
        subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=600)
        results = json.loads(export.read_text())["results"]
        return [float(r["median"]) for r in results]
    medians = []
    for command in commands:
        for _ in range(3):
            subprocess.run(command, capture_output=True, check=False, env=env)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False, env=env)
            times.append(time.perf_counter() - started)
        medians.append(statistics.median(times))
    return medians


def profile(results: Results, once: Sequence[str], env: dict[str, str], workdir: Path) -> None:
    """py-spy (installed in the venv for the bench) over one steady `--once`: where CPU goes."""
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        results.profile_note = "py-spy not installed (.venv/bin/pip install py-spy)"
        return
    raw = workdir / "profile.txt"
    argv = [py_spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--"]
    done = subprocess.run(
        [*argv, *once], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    if not raw.exists():
        results.profile_note = f"py-spy failed: {done.stderr.strip()[-300:]}"
        return
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[_frame(frames[-1])] += int(count)
        parts[_part(frames)] += int(count)
        for frame in dict.fromkeys(_frame(f) for f in frames):
            inclusive[frame] += int(count)
    if not total:
        results.profile_note = "py-spy recorded no samples"
        return
    results.profile_note = f"{total} samples at 250 Hz"
    results.profile_self = [(n / total * 100, f) for f, n in own.most_common(12)]
    results.profile_parts = [(parts[part] / total * 100, part) for part in PROFILE_PARTS]
    results.profile_share = {f: n / total * 100 for f, n in inclusive.items()}
    results.profile_inclusive = [
        (n / total * 100, f)
        for f, n in inclusive.most_common()
        if ("mxwatch/" in f or "dns/" in f or "asyncio/tasks" in f) and n / total >= 0.03
    ][:20]


PART_IMPORTS = "imports (start-up, and modules imported on first use)"
PART_DNSPYTHON = "dnspython: building, sending and parsing each query, with a UDP socket each"
PART_LOOP = "asyncio event loop and transports, outside any dnspython frame"
PART_MXWATCH = "mxwatch's own code (the innermost frame is in mxwatch/)"
PART_OTHER = "the rest (stdlib, sqlite, logging, httpx, ...)"
PROFILE_PARTS = (PART_IMPORTS, PART_DNSPYTHON, PART_LOOP, PART_MXWATCH, PART_OTHER)


def _part(frames: Sequence[str]) -> str:
    """Which part of the run a py-spy sample is in; py-spy gives paths from site-packages."""
    paths = [f.partition(" (")[2] for f in frames]
    if any("importlib._bootstrap" in p for p in paths):
        return PART_IMPORTS
    if any(p.startswith("dns/") for p in paths):
        return PART_DNSPYTHON
    leaf = paths[-1] if paths else ""
    if leaf.startswith(("asyncio/", "selectors.py", "socket.py")):
        return PART_LOOP
    if leaf.startswith("mxwatch/"):
        return PART_MXWATCH
    return PART_OTHER


def _frame(text: str) -> str:
    """ "func (path/to/file.py:123)" -> "func (to/file.py)": lines differ within a function."""
    name, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})" if path else name


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"

    def tool(argv: Sequence[str], pattern: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "not installed"
        match = re.search(pattern, done.stdout + done.stderr)
        return match.group(1) if match else "unknown"

    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "OS": _os_release(),
        "Python": platform.python_version(),
        "dnspython": importlib.metadata.version("dnspython"),
        "mxwatch": importlib.metadata.version("mxwatch"),
        "knotd": tool(["knotd", "-V"], r"version ([0-9.]+)"),
        "dnsperf": tool(["dnsperf", "-h"], r"Version ([0-9.]+)"),
        "hyperfine": tool(["hyperfine", "--version"], r"hyperfine ([0-9.]+)"),
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "unknown"


def git_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "mxwatch"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip() + (" (mxwatch/ has uncommitted changes)" if dirty.stdout else "")


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    sizes: Sizes
    command: str
    machine: dict[str, str]
    revision: str
    started: str
    knot_start: float = 0.0
    proxy_rtt: dict[str, float] = field(default_factory=dict)
    first: Measured | None = None
    first_api: dict[str, int] = field(default_factory=dict)
    profile_self: list[tuple[float, str]] = field(default_factory=list)
    profile_inclusive: list[tuple[float, str]] = field(default_factory=list)
    profile_note: str = ""
    profile_parts: list[tuple[float, str]] = field(default_factory=list)
    profile_share: dict[str, float] = field(default_factory=dict)  # inclusive %, every frame
    steady: list[Measured] = field(default_factory=list)
    steady_requests: list[int] = field(default_factory=list)
    steady_proxy_cpu: list[float] = field(default_factory=list)
    dnsperf: list[dict[str, float]] = field(default_factory=list)
    dnsperf_proxy_cpu: list[float] = field(default_factory=list)
    dnsperf_cmd: str = ""
    sequential_seconds: float = 0.0
    sequential_answered: int = 0
    daemon: DaemonResult | None = None
    tokens: TokenPhase | None = None
    tokens_short: TokenPhase | None = None
    startup_one: Measured | None = None
    startup: list[float] = field(default_factory=list)
    startup_commands: list[str] = field(default_factory=list)
    total_seconds: float = 0.0
    load_before: str = ""
    load_after: str = ""


def run(sizes: Sizes, command: str, workdir: Path) -> Results:
    results = Results(
        sizes, command, machine(), git_revision(), datetime.now(UTC).isoformat(timespec="seconds")
    )
    results.load_before = load_average()
    env = mxwatch_env()
    names = [f"{label}.{ZONE}" for label in labels(sizes.domains)]
    tenants = spread(names, sizes.tenants)
    knot = KnotZone(workdir / "knot", ZONE, labels(sizes.domains), FILTER_MX)
    note(f"starting knotd with {sizes.domains} names")
    results.knot_start = knot.start()
    try:
        with (
            delay_proxy(knot.port, workdir) as (proxy_port, proxy_pid),
            ExchangeSandbox() as sandbox,
        ):
            results.proxy_rtt = check_proxy(proxy_port, names[0])
            startup_tenant = TenantSpec("startup", tenant_id(9_999), [names[0]])
            prepare_sandbox(sandbox, [*tenants, startup_tenant])
            resolver = f"{ADDRESS}:{proxy_port}"
            config = write_config(
                workdir / "mxwatch.toml",
                state=workdir / "state.db",
                resolver=resolver,
                sandbox=sandbox,
                tenants=tenants,
            )
            once = [str(MXWATCH), "--once", "-c", str(config)]

            # 1a + 3: the first cycle adopts the enabled connectors; the later ones are steady.
            note("mxwatch --once: first cycle (adopts the connectors)")
            before = len(sandbox.requests)
            results.first = measure(once, env, workdir)
            first_requests = sandbox.requests[before:]
            results.first_api = dict(
                Counter(r.cmdlet or r.endpoint for r in first_requests).most_common()
            )
            for index in range(sizes.steady_runs):
                note(f"mxwatch --once: steady cycle {index + 1}/{sizes.steady_runs}")
                before = len(sandbox.requests)
                cpu_before = proc_cpu(proxy_pid)
                measured = measure(once, env, workdir)
                results.steady_proxy_cpu.append(proc_cpu(proxy_pid) - cpu_before)
                results.steady.append(measured)
                results.steady_requests.append(len(sandbox.requests) - before)
                if measured.code != 0:
                    raise RuntimeError(f"steady mxwatch --once exited {measured.code}")

            # 5: where the CPU goes (py-spy).
            note("diagnosis: py-spy on one steady --once")
            profile(results, once, env, workdir)

            # 1b: dnsperf with the same names and the same number of queries in flight.
            results.dnsperf_cmd = dnsperf_command(proxy_port)
            for index in range(sizes.dnsperf_runs):
                note(f"dnsperf {index + 1}/{sizes.dnsperf_runs}")
                cpu_before = proc_cpu(proxy_pid)
                results.dnsperf.append(run_dnsperf(proxy_port, names, workdir))
                results.dnsperf_proxy_cpu.append(proc_cpu(proxy_pid) - cpu_before)

            # 1c: the sequential loop on a sample, extrapolated.
            note(f"sequential dnspython loop over {sizes.sequential_sample} names")
            sample = names[:: max(1, len(names) // sizes.sequential_sample)]
            sample = sample[: sizes.sequential_sample]
            seconds, answered = run_sequential(proxy_port, sample)
            results.sequential_seconds, results.sequential_answered = seconds, answered

            # 2: the daemon, if this version has one.
            note("daemon mode (if available)")
            daemon_config = write_config(
                workdir / "daemon.toml",
                state=workdir / "state.db",
                resolver=resolver,
                sandbox=sandbox,
                tenants=tenants,
                daemon={"interval": "1s", "jitter": "0s"},
            )
            results.daemon = run_daemon(daemon_config, env, cycles=3, timeout=180)

            # 3: token requests over several cycles in one process.
            note("token phase: cycles in one process, every cycle reads every connector")
            token_tenants = spread(names[: sizes.token_domains], sizes.tenants, prefix="k")
            token_config = write_config(
                workdir / "tokens.toml",
                state=workdir / "tokens.db",
                resolver=resolver,
                sandbox=sandbox,
                tenants=token_tenants,
                policy={"confirmations": 2, "settle": "0s", "min_settle": "0s", "recheck": "1s"},
            )
            results.tokens = token_phase(
                sandbox,
                token_config,
                len(token_tenants),
                sizes.token_cycles,
                pause=1.0,
                log_path=workdir / "tokens.log",
            )

            # 4: start-up of a one-domain --once against Knot directly, vs `python -c pass`.
            note("start-up: one domain vs python -c pass")
            one = write_config(
                workdir / "one.toml",
                state=workdir / "one.db",
                resolver=f"{ADDRESS}:{knot.port}",
                sandbox=sandbox,
                tenants=[startup_tenant],
            )
            one_cmd = [str(MXWATCH), "--once", "-c", str(one)]
            measure(one_cmd, env, workdir)  # adopts the connector; later runs are steady
            results.startup_one = measure(one_cmd, env, workdir)
            commands = [[sys.executable, "-c", "pass"], one_cmd]
            results.startup_commands = [shlex.join(c) for c in commands]
            results.startup = hyperfine_startup(commands, sizes.startup_runs, workdir)

        # 3b: token refresh with a short lifetime (MSAL keeps a token until 5 min before expiry).
        note("token phase with a short token lifetime")
        with ExchangeSandbox(token_lifetime=MSAL_EXPIRY_SKEW + 4) as short_sandbox:
            few = spread(names[:100], 20, prefix="s")
            prepare_sandbox(short_sandbox, few)
            with delay_proxy(knot.port, workdir) as (short_port, _):
                short_config = write_config(
                    workdir / "short.toml",
                    state=workdir / "short.db",
                    resolver=f"{ADDRESS}:{short_port}",
                    sandbox=short_sandbox,
                    tenants=few,
                    policy={
                        "confirmations": 2,
                        "settle": "0s",
                        "min_settle": "0s",
                        "recheck": "1s",
                    },
                )
                results.tokens_short = token_phase(
                    short_sandbox,
                    short_config,
                    len(few),
                    cycles=8,
                    pause=1.0,
                    log_path=workdir / "short.log",
                )
    finally:
        knot.stop()
    results.load_after = load_average()
    return results


def load_average() -> str:
    """The 1/5/15-minute load: other work on this machine shares its cores with the bench."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def render(r: Results) -> str:
    assert r.first is not None and r.tokens is not None and r.tokens_short is not None
    n = r.sizes.domains
    cycles = [m.cycle_seconds() for m in r.steady]
    walls = [m.wall for m in r.steady]
    cycle = statistics.median(cycles)
    wall = statistics.median(walls)
    perf = statistics.median(d["run_time"] for d in r.dnsperf)
    perf_runs = ", ".join(f"{d['run_time']:.2f}" for d in r.dnsperf)
    sequential = r.sequential_seconds / len_sample(r) * n
    rss_mb = max(m.maxrss_kb for m in r.steady) / 1024
    cpu_per_k = statistics.median(m.cpu for m in r.steady) / (n / 1000)
    startup_cpu = r.startup_one.cpu if r.startup_one else 0.0
    cycle_cpu_per_k = (statistics.median(m.cpu for m in r.steady) - startup_cpu) / (n / 1000)
    floor = n / OBSERVER_CONCURRENCY * 2 * DELAY
    steady_calls = max(r.steady_requests) if r.steady_requests else -1
    tok = r.tokens
    short = r.tokens_short
    per_hour = 3600 / tok.effective_lifetime * tok.per_tenant

    lines = [
        "# mxwatch benchmark results",
        "",
        f"Written by `bench/run.py` on {r.started} from an actual run "
        f"({'quick' if r.sizes.domains < FULL.domains else 'full'} mode, "
        f"{r.total_seconds:.0f} s in total). Nothing here is typed in by hand.",
        "",
        "## Command",
        "",
        "```sh",
        r.command,
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r.machine.items()),
        f"| mxwatch revision | {r.revision} |",
        f"| load average (1/5/15 min) before / after the run | {r.load_before} ; {r.load_after} |",
        "",
        "## Set-up",
        "",
        f"- knotd serves one zone `{ZONE}` with {n:,} names, each `MX 10 {FILTER_MX}` "
        f"(started and loaded in {r.knot_start:.2f} s).",
        f"- `bench/delay_proxy.py` (asyncio, its own process) sits between every client and "
        f"knotd and holds each packet {DELAY * 1000:.0f} ms each way. Checked through the proxy: "
        f"UDP round trip {r.proxy_rtt['udp'] * 1000:.1f} ms, "
        f"TCP {r.proxy_rtt['tcp'] * 1000:.1f} ms (connection set-up included).",
        f"- mxwatch config: {n:,} domains over {r.sizes.tenants} tenants, resolver = the proxy, "
        '`authoritative = false`, `timeout = "3s"`; the Exchange sandbox (HTTPS, in the bench '
        "process) has every connector already enabled, so the first `--once` adopts them and the "
        "later ones are steady.",
        f"- Concurrency: `DnsObserver`'s default bound, read from its signature: "
        f"**{OBSERVER_CONCURRENCY}** queries in flight; `mxwatch --once` uses the default. "
        f"dnsperf gets the same: `-c {OBSERVER_CONCURRENCY} -q {OBSERVER_CONCURRENCY}`.",
        f"- Latency floor at that concurrency: {n:,} / {OBSERVER_CONCURRENCY} x "
        f"{2 * DELAY * 1000:.0f} ms = **{floor:.2f} s**.",
        "",
        "## 1. Cycle throughput",
        "",
        "| what | seconds | queries/s |",
        "|---|---:|---:|",
        f"| mxwatch steady cycle (`cycle_finished.duration_s`, median of {len(cycles)}: "
        f"{', '.join(f'{c:.2f}' for c in cycles)}) | {cycle:.2f} | {n / cycle:,.0f} |",
        f"| mxwatch `--once` process wall time (median of {len(walls)}: "
        f"{', '.join(f'{w:.2f}' for w in walls)}) | {wall:.2f} | {n / wall:,.0f} |",
        f"| first `--once` (adopts {r.sizes.tenants} connectors, journals {n:,} first "
        f"verdicts): cycle / wall | {r.first.cycle_seconds():.2f} / {r.first.wall:.2f} | |",
        f"| dnsperf, same {n:,} MX queries through the proxy (median of {len(r.dnsperf)}: "
        f"{perf_runs}) | {perf:.2f} | "
        f"{n / perf:,.0f} |",
        f"| sequential dnspython loop, **extrapolated** from {len_sample(r)} timed queries "
        f"({r.sequential_seconds:.2f} s, {r.sequential_seconds / len_sample(r) * 1000:.1f} "
        f"ms each) | {sequential:.1f} | {n / sequential:,.0f} |",
        "",
        f"- dnsperf answered {statistics.median(d['completed'] for d in r.dnsperf):,.0f} of "
        f"{n:,} (lost: {max(d['lost'] for d in r.dnsperf):.0f}); the sequential sample got "
        f"{r.sequential_answered} of {len_sample(r)} MX answers; every steady mxwatch cycle "
        f"ended with domains {r.steady[-1].events('cycle_finished')[-1].get('domains')}.",
        f"- dnsperf command: `{r.dnsperf_cmd}` (QUERIES: one `NAME MX` line per domain).",
        f"- Proxy CPU during a steady mxwatch cycle: "
        f"{statistics.median(r.steady_proxy_cpu):.2f} s; during a dnsperf run: "
        f"{statistics.median(r.dnsperf_proxy_cpu):.2f} s.",
        "",
        "| ratio | value | target | |",
        "|---|---:|---:|---|",
        f"| mxwatch cycle / dnsperf | {cycle / perf:.2f}x | <= {TARGET_DNSPERF_RATIO:g}x | "
        f"{verdict(cycle / perf <= TARGET_DNSPERF_RATIO)} |",
        f"| mxwatch `--once` wall / dnsperf | {wall / perf:.2f}x | (info) | |",
        f"| sequential / mxwatch cycle | {sequential / cycle:.0f}x | > "
        f"{TARGET_SEQUENTIAL_RATIO:g}x | {verdict(sequential / cycle > TARGET_SEQUENTIAL_RATIO)} |",
        f"| sequential / mxwatch `--once` wall | {sequential / wall:.0f}x | (info) | |",
        "",
        "## 2. Footprint",
        "",
        "| what | value | target | |",
        "|---|---:|---:|---|",
        f"| peak RSS of `mxwatch --once`, {n:,} domains ({rss_how()}; "
        f"max over steady runs) | {rss_mb:.1f} MB | <= {TARGET_RSS_MB:g} MB | "
        f"{verdict(rss_mb <= TARGET_RSS_MB)} |",
        f"| peak RSS of the first `--once` (journals {n:,} transitions) | "
        f"{r.first.maxrss_kb / 1024:.1f} MB | <= {TARGET_RSS_MB:g} MB | "
        f"{verdict(r.first.maxrss_kb / 1024 <= TARGET_RSS_MB)} |",
        *daemon_rows(r),
        f"| for scale: peak RSS of the one-domain `--once` of section 4 | "
        f"{(r.startup_one.maxrss_kb if r.startup_one else 0) / 1024:.1f} MB | | |",
        f"| CPU (user+sys) per 1,000 domain checks, whole `--once` process / "
        f"{n / 1000:g} | {cpu_per_k:.3f} s | | |",
        f"| the same without start-up (minus the CPU of a one-domain `--once`, "
        f"{startup_cpu:.2f} s) | {cycle_cpu_per_k:.3f} s | | |",
        "",
        f"Steady runs, user/sys CPU s: "
        f"{', '.join(f'{m.utime:.2f}/{m.stime:.2f}' for m in r.steady)}; "
        f"peak RSS MB: {', '.join(f'{m.maxrss_kb / 1024:.1f}' for m in r.steady)}.",
        "",
        "## 3. Exchange cost",
        "",
        "| what | value | target | |",
        "|---|---:|---:|---|",
        f"| requests to the sandbox (token, discovery and API) per steady `--once` "
        f"(each of {len(r.steady_requests)} runs after the first: "
        f"{', '.join(map(str, r.steady_requests))}) | {steady_calls} | 0 | "
        f"{verdict(steady_calls == 0)} |",
        f"| token requests per tenant over {tok.cycles} cycles in one process, every cycle "
        f'reading every connector (`recheck = "1s"`), {tok.elapsed:.1f} s, token lifetime '
        f"{tok.lifetime} s | {tok.per_tenant:.2f} | <= 1 per lifetime | "
        f"{verdict(tok.per_tenant <= tok.lifetimes_spanned)} |",
        f"| short lifetime ({short.lifetime} s, MSAL uses a token until "
        f"{MSAL_EXPIRY_SKEW} s before expiry, so {short.effective_lifetime} s): token "
        f"requests per tenant over {short.elapsed:.1f} s ({short.lifetimes_spanned} "
        f"lifetimes touched) | {short.per_tenant:.2f} | <= {short.lifetimes_spanned} | "
        f"{verdict(short.per_tenant <= short.lifetimes_spanned)} |",
        "",
        f"- First `--once` (first sight of {r.sizes.tenants} tenants), requests to the sandbox "
        f"by kind: {', '.join(f'{k} {v}' for k, v in r.first_api.items())}.",
        f"- Token phase API calls per cycle: {', '.join(map(str, tok.api_calls_per_cycle))} "
        f"({tok.tenants} tenants); short-lifetime phase: "
        f"{', '.join(map(str, short.api_calls_per_cycle))} ({short.tenants} tenants).",
        f"- Tokens per tenant per hour: at most one per effective lifetime, i.e. "
        f"3600 / {tok.effective_lifetime} x {tok.per_tenant:.2f} = {per_hour:.2f} per hour "
        'while every cycle calls Exchange. With the default `recheck = "6h"` a steady tenant '
        "makes no call at all between rechecks, so it asks for one token per recheck "
        "(every 4.5 to 6 h).",
        "",
        "## 4. Start-up",
        "",
        "| command | median wall |",
        "|---|---:|",
        *(
            f"| `{cmd}` | {seconds * 1000:.1f} ms |"
            for cmd, seconds in zip(r.startup_commands, r.startup, strict=True)
        ),
        "",
        f"- `mxwatch --once` for one domain takes {r.startup[1] * 1000:.0f} ms, "
        f"{r.startup[1] / r.startup[0]:.1f}x `python -c pass` "
        f"({(r.startup[1] - r.startup[0]) * 1000:.0f} ms more). Timed with "
        f"{'hyperfine -N --warmup 3' if shutil.which('hyperfine') else 'repeated runs'}, "
        f"{r.sizes.startup_runs} runs each; the one-domain config asks knotd directly (no "
        "proxy delay) and is steady (no Exchange call), so this is process start-up, imports "
        "and one store round trip.",
        "",
        *diagnosis(r),
    ]
    return "\n".join(lines)


def diagnosis(r: Results) -> list[str]:
    n = r.sizes.domains
    lines = [
        "## 5. Diagnosis",
        "",
        f"py-spy over one more steady `mxwatch --once` with {n:,} domains "
        f"({r.profile_note}). Share of all samples:",
        "",
    ]
    if r.profile_inclusive:
        lines += ["| inclusive (mxwatch, dnspython, asyncio.tasks frames) | share |", "|---|---:|"]
        lines += [f"| `{frame}` | {pct:.1f} % |" for pct, frame in r.profile_inclusive]
        lines += ["", "| self (top 12) | share |", "|---|---:|"]
        lines += [f"| `{frame}` | {pct:.1f} % |" for pct, frame in r.profile_self]
        cpu = statistics.median(m.cpu for m in r.steady)
        lines += [
            "",
            "py-spy leaves out idle samples, so the shares are of CPU time; the seconds are "
            f"that share of the median CPU of a steady `--once` ({cpu:.2f} s), an estimate.",
            "",
            "| part (each sample counted once, in the first part that matches) | share | CPU s |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {part} | {pct:.1f} % | {pct / 100 * cpu:.2f} |" for pct, part in r.profile_parts
        ]
    lines += ["", *causes(r), ""]
    return lines


def causes(r: Results) -> list[str]:
    """What the figures above say about each missed target (computed, not typed in)."""
    n = r.sizes.domains
    cycle = statistics.median(m.cycle_seconds() for m in r.steady)
    floor = n / OBSERVER_CONCURRENCY * 2 * DELAY
    sequential = r.sequential_seconds / len_sample(r) * n
    perf = statistics.median(d["run_time"] for d in r.dnsperf)
    rss_mb = max(m.maxrss_kb for m in r.steady) / 1024
    base_mb = (r.startup_one.maxrss_kb if r.startup_one else 0) / 1024
    cores = os.cpu_count() or 1
    load = float(r.load_before.split(" / ")[0]) if r.load_before else 0.0
    lines = [
        "### Reading it",
        "",
        f"- This machine has {cores} cores shared with other work: load average "
        f"{r.load_before} before the run and {r.load_after} after it. mxwatch runs its cycle "
        "on one Python thread, so its figures move with that load more than dnsperf's (C, and "
        "mostly waiting on the 40 ms round trips) do."
        + (
            f" The 1-minute load ({load:.2f}) was above the {cores} cores when the run began: "
            "expect the mxwatch figures to be slower than on an idle machine."
            if load > cores
            else ""
        ),
    ]
    goals = []
    if cycle / perf > TARGET_DNSPERF_RATIO:
        goals.append(TARGET_DNSPERF_RATIO * perf)
        lines.append(
            f"- **mxwatch / dnsperf missed** ({cycle / perf:.2f}x): it needs a cycle under "
            f"{goals[-1]:.2f} s; dnsperf takes {perf:.2f} s against a latency floor of "
            f"{floor:.2f} s."
        )
    if sequential / cycle <= TARGET_SEQUENTIAL_RATIO:
        goals.append(sequential / TARGET_SEQUENTIAL_RATIO)
        lines.append(
            f"- **sequential / mxwatch missed** ({sequential / cycle:.0f}x): it needs a cycle "
            f"under {goals[-1]:.2f} s (the sequential loop would take {sequential:.0f} s)."
        )
    if goals:
        lines += throughput_cause(r, cycle, floor, min(goals))
    if rss_mb > TARGET_RSS_MB:
        lines.append(
            f"- **RSS missed** ({rss_mb:.0f} MB): the one-domain `--once` of section 4 peaks at "
            f"{base_mb:.0f} MB (interpreter, imports, one store round trip); the other "
            f"{rss_mb - base_mb:.0f} MB grow with the domain count, "
            f"{(rss_mb - base_mb) * 1024 / n:.1f} KB per domain. py-spy samples CPU, not "
            "memory, so the profile above does not split this."
        )
    first_mb = r.first.maxrss_kb / 1024 if r.first else 0.0
    if first_mb > TARGET_RSS_MB:
        lines.append(
            f"- **RSS of the first `--once` missed** ({first_mb:.0f} MB against {rss_mb:.0f} MB "
            f"for a steady one): the {first_mb - rss_mb:.0f} MB more "
            f"({(first_mb - rss_mb) * 1024 / n:.1f} KB per domain) go to the first-sight work, "
            f"adopting {r.sizes.tenants} connectors (a token and two Exchange reads per tenant) "
            f"and journaling {n:,} first verdicts. A daemon started on an empty state with as "
            "many domains pays this in its first cycle too; the daemon row above runs on the "
            "state the earlier runs filled. py-spy samples CPU, not memory, so the profile "
            "does not split this."
        )
    if len(lines) == 3:
        lines.append("- Every target with a number was met in this run.")
    return lines


def throughput_cause(r: Results, cycle: float, floor: float, goal: float) -> list[str]:
    """Why the cycle is slower than `goal` seconds: CPU or waiting, and where the CPU goes."""
    n = r.sizes.domains
    cpu = statistics.median(m.cpu for m in r.steady)
    startup_cpu = r.startup_one.cpu if r.startup_one else 0.0
    cycle_cpu = max(cpu - startup_cpu, 0.0)
    busy = cycle_cpu / cycle
    per_query = cycle_cpu / n
    rtt = 2 * DELAY
    rho = OBSERVER_CONCURRENCY * per_query / rtt  # CPU per round trip window / the window
    lines: list[str] = []
    text = (
        f"- Why: beyond start-up the steady `--once` uses {cycle_cpu:.2f} s of CPU "
        f"({per_query * 1e6:.0f} us per domain) in its {cycle:.2f} s cycle (one core "
        f"{busy:.0%} busy); the network alone allows {floor:.2f} s. In each "
        f"{rtt * 1000:.0f} ms round trip the {OBSERVER_CONCURRENCY} queries in flight bring "
        f"{OBSERVER_CONCURRENCY * per_query * 1000:.0f} ms of CPU to one thread ({rho:.0%} of "
        "the round trip), "
    )
    if rho >= 1:
        text += "so the thread, not the network, sets the pace: the cycle is CPU-bound."
    elif rho >= 0.5:
        text += "so answers often wait for the thread"
        if abs(cycle - (cycle_cpu + floor)) < abs(cycle - max(cycle_cpu, floor)):
            text += (
                f": the cycle is nearer CPU + floor ({cycle_cpu + floor:.2f} s) than the "
                f"larger of the two ({max(cycle_cpu, floor):.2f} s): they barely overlap"
            )
        text += ", and the machine's load takes its share of the cores."
    else:
        text += (
            "a small part: most of the excess over the floor is waiting, for a core (see the "
            "load) or on the resolver."
        )
    if cycle_cpu > goal:
        text += (
            f" That CPU alone exceeds the {goal:.2f} s goal, so no concurrency setting can meet "
            f"it: the CPU per domain has to fall by at least {1 - goal / cycle_cpu:.0%}."
        )
    elif rho >= 0.5:
        text += (
            f" Cutting the CPU per domain is what brings the cycle toward the floor: at half "
            f"the CPU the thread would be {rho / 2:.0%} busy per round trip."
        )
    lines.append(text)
    if not r.profile_parts:
        return lines
    share = r.profile_share.get
    parts = {part: pct for pct, part in r.profile_parts}
    where = (
        f"- Where the CPU goes (section 5 profile): dnspython {parts[PART_DNSPYTHON]:.0f} %, "
        f"the asyncio loop outside dnspython {parts[PART_LOOP]:.0f} %, mxwatch's own code "
        f"{parts[PART_MXWATCH]:.0f} %, imports {parts[PART_IMPORTS]:.0f} %, the rest "
        f"{parts[PART_OTHER]:.0f} % of the samples."
    )
    if parts[PART_DNSPYTHON] >= max(parts[PART_MXWATCH], parts[PART_LOOP]):
        parse = share("from_wire (dns/message.py)", 0.0)
        build = share("make_query (dns/message.py)", 0.0)
        build += share("Message.to_wire (dns/message.py)", 0.0)
        sockets = share("Backend.make_socket (dns/_asyncio_backend.py)", 0.0)
        sockets += share("_DatagramSocket.close (dns/_asyncio_backend.py)", 0.0)
        sockets += share(
            "_SelectorTransport._call_connection_lost (asyncio/selector_events.py)", 0.0
        )
        resolve = share("Resolver.resolve (dns/asyncresolver.py)", 0.0)
        where += (
            " Within dnspython, as shares of all samples: parsing answers (`from_wire`) "
            f"{parse:.0f} %, building queries (`make_query`, `Message.to_wire`) {build:.0f} %, "
            "a UDP socket opened and closed "
            "per query (`Backend.make_socket`, `_DatagramSocket.close`, the transport's "
            f"`connection_lost`) {sockets:.0f} %. `Resolver.resolve`, which "
            "`DnsObserver._lookup` (mxwatch/dns.py) awaits once per query, holds "
            f"{resolve:.0f} % of all samples inclusive: the per-query work in dnspython is the "
            "lever, not mxwatch's own logic."
        )
    lines.append(where)
    return lines


def rss_how() -> str:
    if GNU_TIME.exists():
        return "`/usr/bin/time -f %M`, the child's own `ru_maxrss`"
    return "`ru_maxrss` via wait4, which includes the bench's RSS at fork: an upper bound"


def len_sample(r: Results) -> int:
    return min(r.sizes.sequential_sample, r.sizes.domains)


def daemon_rows(r: Results) -> list[str]:
    d = r.daemon
    if d is None or not d.available:
        detail = d.detail if d else "not run"
        return [f"| daemon VmHWM | n/a: daemon mode not available ({detail}) | <= 100 MB | |"]
    if not d.vm_hwm_kb:
        return [f"| daemon VmHWM | n/a: {d.detail} | <= 100 MB | |"]
    return [
        f"| daemon VmHWM after {d.cycles} cycles (`/proc/PID/status`) | "
        f"{d.vm_hwm_kb / 1024:.1f} MB | <= {TARGET_RSS_MB:g} MB | "
        f"{verdict(d.vm_hwm_kb / 1024 <= TARGET_RSS_MB)} |"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 domains: a sanity run")
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCH / "RESULTS.md",
        help="where to write the report (default: bench/RESULTS.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    command = shlex.join([".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])])
    workdir = Path(tempfile.mkdtemp(prefix="mxwatch-bench-"))
    started = time.monotonic()
    try:
        results = run(sizes, command, workdir)
        results.total_seconds = time.monotonic() - started
        report = render(results)
    finally:
        if args.keep:
            note(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output.write_text(report)
    note(f"wrote {args.output} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
