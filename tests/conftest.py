"""Shared fixtures: a real Knot DNS server, the Exchange emulator over HTTPS, and mxwatch
installed where an unprivileged user can run it."""

pytest_plugins = [
    "tests.fixtures.knot",
    "tests.fixtures.postgres",
    "tests.fixtures.sandbox",
    "tests.fixtures.rig",
    "tests.fixtures.unprivileged",
]
