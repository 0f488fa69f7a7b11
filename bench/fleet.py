"""Mode "fleet": the issue's fleet case, on loopback with no delay.

500 tenants x 4 domains, each domain with its own two Mailprotector MX hosts, knotd on
127.0.0.1 asked directly (no proxy), `authoritative = false`, one resolver source. A steady
`mxwatch --once` process against bench/sequential.py over the same names, both timed whole by
hyperfine, start-up included; and the queries of one steady `--once`, counted by knotd.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    MXWATCH,
    Child,
    OnceRun,
    QueryCounts,
    Row,
    Tenant,
    Timing,
    consent,
    counted,
    figures,
    hyperfine,
    measure,
    note,
    one_domain_tenant,
    query_table,
    run_once,
    spread,
    target,
    write_config,
)
from knot_zone import fleet_knot
from profiling import Profile, py_spy, render_profile

from mxwatch.sandbox.exchange_api import ExchangeSandbox
from tests.fixtures.knot import ADDRESS

ZONE = "fleet.example"
KNOTD = "knotd (the one source)"
TARGET_RATIO = 1.5  # steady `--once` / sequential loop, wall time of the process, at most


@dataclass(frozen=True)
class Sizes:
    tenants: int
    domains_per_tenant: int
    runs: int  # hyperfine runs of each command
    warmup: int

    @property
    def domains(self) -> int:
        return self.tenants * self.domains_per_tenant


FULL = Sizes(500, 4, 10, 2)
QUICK = Sizes(50, 4, 3, 1)


@dataclass(frozen=True)
class Results:
    sizes: Sizes
    knot_seconds: float
    first: OnceRun
    steady: OnceRun  # the counted one, outside hyperfine
    queries: tuple[QueryCounts, QueryCounts]  # first and steady `--once`
    sequential: Child
    sequential_queries: Counter[str]
    timings: dict[str, Timing]  # by command, from hyperfine
    profile: Profile  # of one more steady `--once`


def run(quick: bool, workdir: Path) -> list[str]:
    """Measure, and return the sections of the tables."""
    return render(measure_all(QUICK if quick else FULL, workdir))


SEQUENTIAL = "sequential dnspython loop (bench/sequential.py)"
ONCE = "steady `mxwatch --once`"
ONE_DOMAIN = "steady `mxwatch --once`, one domain (start-up)"


def fleet_config(
    name: str, workdir: Path, sandbox: ExchangeSandbox, tenants: Sequence[Tenant], port: int
) -> Path:
    """NAME.toml, state NAME.db, asking knotd directly with `authoritative = false`."""
    sections: dict[str, dict[str, Any]] = {
        "daemon": {"state": str(workdir / f"{name}.db")},
        "dns": {"resolvers": [f"{ADDRESS}:{port}"], "authoritative": False},
    }
    return write_config(workdir / f"{name}.toml", sandbox, tenants, sections)


def measure_all(sizes: Sizes, workdir: Path) -> Results:
    labels = [f"d{i:05d}" for i in range(sizes.domains)]
    names = [f"{label}.{ZONE}" for label in labels]
    with contextlib.ExitStack() as stack:
        note(f"knotd with {sizes.domains} names, two MX hosts each")
        started = time.monotonic()
        knot = stack.enter_context(fleet_knot(ZONE, labels))
        knot_seconds = time.monotonic() - started
        sandbox = stack.enter_context(ExchangeSandbox())
        tenants = consent(sandbox, spread(names, sizes.tenants, "f"))
        config = fleet_config("fleet", workdir, sandbox, tenants, knot.port)
        one = consent(sandbox, [one_domain_tenant(names[0])])
        one_config = fleet_config("one", workdir, sandbox, one, knot.port)
        counters = {KNOTD: knot.query_counts}
        # The first run adopts the enabled connectors; the later ones are steady.
        first, first_queries = counted(counters, lambda: run_once(config, sandbox, workdir))
        steady, steady_queries = counted(counters, lambda: run_once(config, sandbox, workdir))
        run_once(one_config, sandbox, workdir)  # adopts its connector: steady from now on
        profile = py_spy(config, workdir)
        names_file = workdir / "names.txt"
        names_file.write_text("".join(f"{name}\n" for name in names))
        server = ["--server", f"{ADDRESS}:{knot.port}"]
        commands = {
            "`python -c pass`": [sys.executable, "-c", "pass"],
            SEQUENTIAL: [sys.executable, str(BENCH / "sequential.py"), *server, str(names_file)],
            ONE_DOMAIN: [*MXWATCH, "--once", "-c", str(one_config)],
            ONCE: [*MXWATCH, "--once", "-c", str(config)],
        }
        note("the sequential loop, counted")
        sequential, sequential_queries = counted(
            counters, lambda: measure(commands[SEQUENTIAL], workdir)
        )
        timed = hyperfine(list(commands.values()), sizes.runs, workdir, warmup=sizes.warmup)
    return Results(
        sizes=sizes,
        knot_seconds=knot_seconds,
        first=first,
        steady=steady,
        queries=(first_queries, steady_queries),
        sequential=sequential,
        sequential_queries=sequential_queries[KNOTD],
        timings=dict(zip(commands, timed, strict=True)),
        profile=profile,
    )


# --------------------------------------------------------------------------- tables


def render(r: Results) -> list[str]:
    mode = "quick" if r.sizes == QUICK else "full"
    first, steady = r.queries
    return [
        f"## Mode fleet ({mode}): {r.sizes.tenants} tenants x {r.sizes.domains_per_tenant} "
        "domains, each its own two MX hosts, knotd on loopback, no delay, "
        "`authoritative = false`",
        "",
        *figures("Fleet set-up", setup(r)),
        *figures(
            "Fleet: steady `--once` against the sequential loop (`hyperfine -N --warmup "
            f"{r.sizes.warmup}`, {r.sizes.runs} runs each, start-up included)",
            timings(r),
        ),
        "### Fleet: queries of one `--once`, counted by knotd (mod-stats)",
        "",
        *query_table(first, steady, r.sizes.domains, {KNOTD: 1}),
        *render_profile(
            "Fleet: profile (py-spy over one more steady `--once`, not timed)",
            r.profile,
            r.steady.child.cpu,
            "the counted steady `--once`",
        ),
    ]


def setup(r: Results) -> list[Row]:
    n = r.sizes.domains
    queries = ", ".join(f"{qtype} {count:,}" for qtype, count in r.sequential_queries.items())
    return [
        ("domains / tenants", f"{n:,} / {r.sizes.tenants}"),
        (
            f"names in the zone `{ZONE}`, each with its own two MX hosts",
            f"`d00000.{ZONE}`: `MX 10 d00000-a.inbound.emailservice.io.`, `MX 20 d00000-b...`",
        ),
        ("knotd start-up and zone load", f"{r.knot_seconds:.2f} s"),
        ("mxwatch's source: knotd directly, `authoritative = false`", "1 resolver"),
        ("first `--once`: cycle / wall", f"{r.first.cycle:.2f} s / {r.first.child.wall:.2f} s"),
        (
            "the counted steady `--once` (outside hyperfine): cycle / wall / CPU",
            f"{r.steady.cycle:.2f} s / {r.steady.child.wall:.2f} s / {r.steady.child.cpu:.2f} s",
        ),
        ("its verdicts", ", ".join(f"{v} {c}" for v, c in r.steady.domains.items())),
        ("its log lines at warning or error", r.steady.warnings),
        ("its requests to the Exchange sandbox", sum(r.steady.requests.values())),
        (
            "the sequential loop, once outside hyperfine: MX answers / wall / CPU",
            f"{r.sequential.stdout.strip()} / {r.sequential.wall:.2f} s / {r.sequential.cpu:.2f} s",
        ),
        ("its queries, counted by knotd", queries),
    ]


def timings(r: Results) -> list[Row]:
    def ms(timing: Timing) -> str:
        return "{:.1f} ms ({:.1f} to {:.1f})".format(*(seconds * 1000 for seconds in timing))

    rows: list[Row] = [(f"{what}, median (min to max)", ms(t)) for what, t in r.timings.items()]
    sequential, once = r.timings[SEQUENTIAL][0], r.timings[ONCE][0]
    rows.append(
        target(
            "steady `--once` / sequential loop, medians",
            f"{once / sequential:.2f}x",
            f"<= {TARGET_RATIO:g}x",
            once / sequential <= TARGET_RATIO,
        )
    )
    return rows
