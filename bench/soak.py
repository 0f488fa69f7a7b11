"""The long soak: mxwatch against one real knotd and the HTTPS sandbox for many cycles.

    .venv/bin/python bench/soak.py                  # 300 cycles (25 simulated hours)
    .venv/bin/python bench/soak.py --cycles 1000 --seed 7 --tenants 200

2,000 domains of 200 tenants by default, one cycle every 5 simulated minutes, random MX
flips, broken zones (SERVFAIL) and Exchange faults from a fixed seed. After every cycle it
checks the invariants of tests/fixtures/soak.py (no enable without the rules, every state
change journaled, verdicts match what Knot serves); at the end, that memory stayed flat after
the warm-up and that no log line holds the client secret, the private key or an access
token. It prints the figures and exits 1 on the first broken invariant. The CI test
tests/integration/test_soak.py runs the same driver for 30 cycles.

Needs knotd (Debian package `knot`) and the dev extras; run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.soak import CA_OVERRIDES, SoakSettings, SoakViolation, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--domains-per-tenant", type=int, default=10)
    parser.add_argument("--seed", type=int, default=SoakSettings.seed)
    parser.add_argument("--warmup", type=int, default=20, help="cycles before the memory baseline")
    parser.add_argument("--memory-bound-mb", type=float, default=10.0)
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="measure RSS only (tracemalloc slows every allocation)",
    )
    parser.add_argument("--log-level", default="debug", choices=["debug", "info"])
    parser.add_argument("--keep", type=Path, help="keep the state, config and log here")
    args = parser.parse_args()
    for name in CA_OVERRIDES:
        os.environ.pop(name, None)  # they would replace the CA the client is given
    settings = SoakSettings(
        tenants=args.tenants,
        domains_per_tenant=args.domains_per_tenant,
        cycles=args.cycles,
        seed=args.seed,
        warmup=args.warmup,
        memory_bound_mb=args.memory_bound_mb,
        trace_memory=not args.no_tracemalloc,
        log_level=args.log_level,
    )
    with tempfile.TemporaryDirectory(prefix="mxwatch-soak-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = asyncio.run(run_soak(settings, workdir, progress=print))
        except SoakViolation as violation:
            print(f"INVARIANT BROKEN: {violation}", file=sys.stderr)
            return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
