"""structlog set-up: JSON lines for services, a console renderer on a TTY, and redaction.

Redaction works at two depths: keys that name a secret are masked wherever they appear, and
every secret value the process has loaded (registered by exchange.py) is scrubbed from the
rendered line, so a secret that slipped into an exception text still never reaches output.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"secret|token|password|passphrase|private_key|assertion|authorization|credential_value",
    re.IGNORECASE,
)
# Values that look like a bearer token or a PEM block, whatever key holds them.
_SECRET_SHAPES = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
)

_known_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a secret value so it is scrubbed from any log line that would contain it."""
    if len(value) >= 6:  # shorter strings would scrub ordinary words
        with _lock:
            _known_secrets.add(value)


def scrub(text: str) -> str:
    for shape in _SECRET_SHAPES:
        text = shape.sub(REDACTED, text)
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _mask_secret_keys(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


class _ScrubbingRenderer:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        return scrub(str(self.inner(logger, method, event)))


def configure(
    level: str = "info",
    stream: TextIO | None = None,
    json: bool | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> None:
    """JSON lines unless the stream is a TTY (or `json` says otherwise).

    `keep`, when given, sees each event (before its timestamp is added) and drops it by
    returning False: `mxwatch demo` leaves out routine lines and repeats that way.
    """
    out = stream or sys.stdout
    use_json = not out.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        # Keys in the order the code gives them (tenant, from, to, reason, then the long
        # evidence), not sorted: on a terminal the start of a line tells what happened.
        else structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([_keeping(keep)] if keep is not None else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secret_keys,
            structlog.processors.format_exc_info,
            _ScrubbingRenderer(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def _keeping(keep: Callable[[Mapping[str, Any]], bool]) -> Any:
    def processor(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not keep(event):
            raise structlog.DropEvent
        return event

    return processor


def _level_number(level: str) -> int:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    return number


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
