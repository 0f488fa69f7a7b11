"""Domain-name rules: one spelling for every name mxwatch compares (DESIGN.md §4).

A leaf module. Names are compared in one form: lower case, no trailing dot, and IDNA 2008
A-labels (UTS #46 mapping, non-transitional), which is what resolvers, registries and mail
servers use. Python's own "idna" codec implements IDNA 2003, which maps `straße.de` to
`strasse.de` (another domain) and a final sigma to a plain one, and silently drops zero-width
joiners: a name read that way is a different name than the one the world resolves.
"""

from __future__ import annotations

import re

import idna

MAX_NAME_LENGTH = 253
# Letters, digits and hyphens, not at either end (RFC 1123); underscores too, as some zones
# use them. Anything else (spaces, control characters) is not a name a resolver would ask.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class BadName(ValueError):
    """A host or domain name that cannot be normalised."""


def normalise_name(name: str) -> str:
    """The one spelling of a domain or host name.

    "Bücher.example.", "xn--bcher-kva.example" and "XN--BCHER-KVA.example" all become
    "xn--bcher-kva.example"; "straße.de" becomes "xn--strae-oqa.de". A name IDNA 2008 rejects
    raises BadName.
    """
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text or text.startswith(".") or ".." in text:
        raise BadName(f"{name!r} is not a valid domain name")
    result = _ascii_name(text, name) if text.isascii() else _unicode_name(text, name)
    if len(result) > MAX_NAME_LENGTH:
        raise BadName(f"{name!r} is longer than {MAX_NAME_LENGTH} characters")
    return result


def _ascii_name(text: str, original: str) -> str:
    # Plain ASCII labels pass as they are (lower case); an A-label must be one IDNA 2008
    # accepts, so that "xn--" garbage is not compared as if it were a name.
    labels = text.lower().split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise BadName(f"{original!r} is not a valid domain name: bad label {label!r}")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                raise BadName(f"{original!r} is not a valid IDNA 2008 name: {exc}") from None
    return ".".join(labels)


def _unicode_name(text: str, original: str) -> str:
    try:
        encoded = idna.encode(text, uts46=True, transitional=False)
    except idna.IDNAError as exc:
        raise BadName(f"{original!r} is not a valid IDNA 2008 name: {exc}") from None
    return encoded.decode("ascii").lower()


def normalise_pattern(pattern: str) -> str:
    """Normalise an MX pattern; "*.x.y" keeps its wildcard label."""
    if pattern.startswith("*."):
        return "*." + normalise_name(pattern[2:])
    if "*" in pattern:
        raise BadName(f"{pattern!r}: a wildcard is allowed only as the whole first label, '*.'")
    return normalise_name(pattern)
