"""Fault matrix, the state store: read-only, locked by another process, corrupted.

Each is a clear error on stderr and exit code 1 (EXIT_TROUBLE, as for every StoreError), for
`--once`, the daemon's start and the read commands alike; never a silent reset: the file's
bytes are unchanged and the journal from before is intact once the fault is gone.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.faults import (  # noqa: F401 - frig_fixture registers the fixture
    Event,
    FaultRig,
    check_journal,
    cli_in_process,
    frig_fixture,
)
from tests.fixtures.rig import M365_MX, contoso, enabled
from tests.fixtures.service import Service


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepared(frig: FaultRig) -> tuple[Path, list[Event], list[Event]]:
    """A state file with a waiting tenant and its journal, closed cleanly (no -wal left)."""
    guid = contoso(frig, mx=M365_MX)
    run = frig.once()
    assert run.code == 0, run.stdout
    assert not enabled(frig, guid)
    state = frig.tmp / "state.db"
    assert not Path(f"{state}-wal").exists()
    return state, run.events, frig.journal()


def daemon_start_fails(frig: FaultRig, expected: str) -> None:
    svc = Service(frig, daemon={"interval": "1s", "jitter": "0s"})
    svc.write()
    done = subprocess.run(
        svc.command(), capture_output=True, text=True, env=svc.env(), timeout=30, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files made immutable with chattr +i (which stops root too); made mutable again after."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run([chattr, "-i", str(path)], check=False)


def test_read_only_state_file_is_a_clear_error(frig: FaultRig, immutable: list[Path]) -> None:
    state, events, journal = prepared(frig)
    done = subprocess.run(["chattr", "+i", str(state)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    immutable.append(state)
    before = digest(state)

    run = frig.once()
    assert run.code == 1
    assert "not writable" in run.stderr and str(state) in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert run.events == []  # refused before any cycle: nothing observed, nothing written
    daemon_start_fails(frig, "not writable")
    assert digest(state) == before
    assert frig.journal() == journal  # reading still works

    subprocess.run(["chattr", "-i", str(state)], check=True)
    again = frig.once()
    assert again.code == 0, again.stderr
    check_journal(frig, [*events, *again.events])


def test_state_locked_by_another_process_is_a_clear_error(frig: FaultRig) -> None:
    state, events, journal = prepared(frig)
    holder = sqlite3.connect(state, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        run = frig.once()  # waits out the busy timeout (5 s) for the write lock
        assert run.code == 1
        assert "locked by another process" in run.stderr, run.stderr
        assert "Nothing was saved" in run.stderr
        assert "Traceback" not in run.stderr
        assert frig.journal() == journal  # a reader is not blocked by the writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert frig.journal() == journal
    again = frig.once()
    assert again.code == 0, again.stderr
    # The locked run recorded nothing, so its transitions (if any) were never logged either.
    check_journal(frig, [*events, *run.events, *again.events])


@pytest.mark.parametrize("damage", ["whole-file", "pages-after-the-header"])
def test_corrupted_state_file_is_a_clear_error_and_left_untouched(
    frig: FaultRig, damage: str
) -> None:
    state, _, _ = prepared(frig)
    data = bytearray(state.read_bytes())
    noise = random.Random(damage)
    start = 0 if damage == "whole-file" else 4096  # page 1 keeps the header and schema
    data[start:] = noise.randbytes(len(data) - start)
    state.write_bytes(bytes(data))
    before = digest(state)

    run = frig.once()
    assert run.code == 1
    assert "corrupted" in run.stderr and str(state) in run.stderr, run.stderr
    assert "left untouched" in run.stderr
    assert "Traceback" not in run.stderr
    daemon_start_fails(frig, "corrupted")
    for command in (("status", "--json"), ("history", "--json")):
        code, out = cli_in_process(frig.write(), *command)
        assert code == 1 and "corrupted" in out, (command, out)
    assert digest(state) == before
