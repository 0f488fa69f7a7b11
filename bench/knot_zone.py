"""The bench's knotd: the test fixture's KnotServer, serving one generated zone of N names.

One zone with N names loads in well under a second; N separate zones would each need their
own zone entry, journal and timers, which is much slower to start for no benefit here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from tests.fixtures.knot import KnotServer, running_knot


@contextlib.contextmanager
def bench_knot(zone: str, labels: Sequence[str], mx: str) -> Iterator[KnotServer]:
    """A running knotd where each `label` under `zone` has one MX, `10 mx`.

    It also serves the zone of `mx` itself, as a recursive resolver would find it on the
    internet: mxwatch looks up its MX exchanges (CNAME: is it an alias?), and without that
    zone knotd would answer REFUSED, an error no resolver caches, where the internet answers
    NODATA.
    """
    with running_knot() as knot:
        knot.add_zone(zone, [f"{label} MX 10 {mx}" for label in labels])
        host, _, parent = mx.rstrip(".").partition(".")
        knot.add_zone(parent, [f"{host} A 192.0.2.25"])
        yield knot
