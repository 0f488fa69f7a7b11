"""Filtering-provider profiles (MX patterns, sender ranges) and host-name matching."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    """A filtering service: the MX hosts it answers on and the IPs it delivers from."""

    name: str
    mx: tuple[str, ...]  # normalised patterns: "*.suffix" or an exact host name
    sender_ips: tuple[ipaddress.IPv4Network, ...] = ()
    source: str = "config"  # where the values come from, for status and docs

    def matches(self, exchange: str) -> bool:
        """True when an MX exchange host belongs to this provider."""
        host = exchange.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


# Mailprotector: hosts under inbound.emailservice.{io,cc,co} seen in public MX data;
# emailservice.io is Mailprotector's own domain. Confidence: medium. Operators should
# compare with the host names on the domain's Overview page in the Mailprotector console.
# Sender ranges are not published in the public article, so none are built in.
MAILPROTECTOR = Provider(
    name="mailprotector",
    mx=(
        "*.inbound.emailservice.io",
        "*.inbound.emailservice.cc",
        "*.inbound.emailservice.co",
    ),
    sender_ips=(),
    source="built-in (public MX data, medium confidence)",
)

BUILTIN_PROVIDERS: dict[str, Provider] = {MAILPROTECTOR.name: MAILPROTECTOR}
