"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET (sd_notify(3)).

A handful of lines, so no dependency: READY=1, STOPPING=1, STATUS=..., WATCHDOG=1. Outside
systemd (no $NOTIFY_SOCKET) every call is a no-op, which is what a container or a terminal
wants.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send "KEY=VALUE" fields in one datagram; False when there is nowhere to send them."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a busy systemd must never stall the event loop (a full datagram
            # queue would otherwise block sendto until it drains).
            sock.setblocking(False)
            try:
                sock.sendto(message, self._address)
            except OSError:
                return False  # systemd gone or queue full: never a reason to stop the daemon
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # An abstract socket: the name starts with a NUL byte instead of the "@".
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a form we do not know (vsock): do not guess


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled(3) says."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # not for us: meant for the process that forked us
    return usec / 2_000_000
