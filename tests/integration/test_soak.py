"""The soak, short enough for CI: 2,000 domains of 200 tenants, many cycles, random faults.

tests/fixtures/soak.py drives it and checks the invariants after every cycle; the long
version runs from bench/soak.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.soak import CA_OVERRIDES, SoakSettings, run_soak


async def test_soak_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CA_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    # tracemalloc would make every cycle four times slower: CI watches RSS, bench/soak.py both.
    settings = SoakSettings(cycles=24, warmup=8, trace_memory=False, log_level="info")
    report = await run_soak(settings, tmp_path)
    print(report.summary())
    assert report.cycles == settings.cycles
    # The run exercised what it is meant to: enables, disables, faults met and survived.
    assert report.enables >= 50, report.summary()
    assert report.disables >= 1, report.summary()
    assert report.zone_breaks >= 3, report.summary()
    assert sum(report.faults.values()) >= settings.cycles * settings.exchange_faults_per_cycle
    assert any(not status.endswith(":200") for status in report.exchange_statuses)
    assert report.final_states["blocked"] >= 4  # the tenants whose connector is unusable
    assert len(report.rss_kib) == settings.cycles - settings.warmup + 1
