"""The one-writer lock of an SQLite state file: flock(2) on a file beside it.

A cycle holds it from its first read of the state to its commit, so two processes on one
state file (a timer's `--once` and a daemon, or two overlapping timer runs) never interleave a
cycle: the second waits for the first, up to a bound, or says who holds the state.

Why a separate file and not the database: SQLite locks the database with POSIX record locks,
which a process loses on *any* close of *any* descriptor of that file; a second descriptor of
ours on the database could drop SQLite's locks behind its back. flock(2) is released by the
kernel when the holder exits, kill -9 included, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_POLL = 0.05  # seconds between attempts while another process holds the lock


@dataclass(frozen=True)
class Holder:
    """Who holds a state lock, as it wrote itself into the lock file."""

    pid: int | None
    command: str
    since: str

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        since = self.since or "an unknown time"
        return f"{pid} ({self.command or 'unknown command'}) since {since}"


class LockBusy(Exception):
    def __init__(self, path: Path, holder: Holder, waited: float) -> None:
        super().__init__(f"{path} is held by {holder.describe()}; waited {waited:g}s")
        self.holder = holder
        self.waited = waited


class LockFile:
    """An exclusive flock on `path`, with the holder's pid, command and start time inside."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float, command: str) -> None:
        """Take the lock, waiting up to `wait` seconds; LockBusy names the holder if not."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if self._try(fd):
                self._fd = fd
                self._write_holder(command)
                return
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockBusy(self.path, self.holder(), wait)
            time.sleep(_POLL)

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        # Locked, but the file may have been deleted or replaced since we opened it: then a
        # second process could lock the new file at the same time. Only the file at the path
        # counts.
        if _same_file(fd, self.path):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    def held(self) -> bool:
        """Still holding the lock on the file that is at the path now."""
        return self._fd is not None and _same_file(self._fd, self.path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def holder(self) -> Holder:
        """The holder as recorded in the file; fields are empty while it is being written."""
        try:
            text = self.path.read_text(encoding="utf-8")
            data = json.loads(text) if text else {}
        except (OSError, ValueError):
            data = {}
        pid = data.get("pid") if isinstance(data, dict) else None
        command = data.get("command") if isinstance(data, dict) else ""
        since = data.get("since") if isinstance(data, dict) else ""
        return Holder(
            pid if isinstance(pid, int) else None,
            command if isinstance(command, str) else "",
            since if isinstance(since, str) else "",
        )

    def _write_holder(self, command: str) -> None:
        assert self._fd is not None
        since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = json.dumps({"pid": os.getpid(), "command": command, "since": since})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, record.encode() + b"\n", 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
