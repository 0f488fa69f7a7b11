"""All decision logic, pure: observations + stored state + connector + now -> new state + actions.

Nothing here does I/O or reads the clock; the caller passes the time in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .model import DomainObservation, MxRecord, Observation, Verdict

# Among not-cut-over answers, the one reported for the domain: the one losing the most mail
# if the connector were enabled.
_SEVERITY = {Verdict.DIRECT: 3, Verdict.MIXED: 2, Verdict.NO_MX: 1}


def combine_observations(
    domain: str, observations: Sequence[Observation], checked_at: datetime
) -> DomainObservation:
    """The domain's verdict for this cycle from every source's answer (DESIGN.md §3).

    filtered only if every source answered filtered; any direct/mixed/no_mx wins (the worst);
    otherwise unknown, which is never evidence either way.
    """
    contradicting = [o for o in observations if o.verdict in _SEVERITY]
    if contradicting:
        worst = max(contradicting, key=lambda o: _SEVERITY[o.verdict])
        return _combined(domain, worst.verdict, worst, observations, checked_at)
    unknown = [o for o in observations if o.verdict is Verdict.UNKNOWN]
    if unknown or not observations:
        reason = "; ".join(f"{o.source}: {o.reason}" for o in unknown) or "no source answered"
        return DomainObservation(
            domain, Verdict.UNKNOWN, (), None, reason, checked_at, tuple(observations)
        )
    first = observations[0]
    return _combined(domain, Verdict.FILTERED, first, observations, checked_at)


def _combined(
    domain: str,
    verdict: Verdict,
    chosen: Observation,
    observations: Sequence[Observation],
    checked_at: datetime,
) -> DomainObservation:
    mx: tuple[MxRecord, ...] = chosen.mx
    ttls = [o.ttl for o in observations if o.verdict is verdict and o.ttl is not None]
    ttl = max(ttls) if ttls else chosen.ttl
    reason = f"{chosen.source}: {chosen.reason}"
    return DomainObservation(domain, verdict, mx, ttl, reason, checked_at, tuple(observations))
