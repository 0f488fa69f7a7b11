"""The built-in filtering-provider profiles: their MX patterns and sender ranges."""

from __future__ import annotations

from .settings import Provider

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
