"""Shared fixtures: a real Knot DNS server and the Exchange emulator over HTTPS."""

pytest_plugins = ["tests.fixtures.knot", "tests.fixtures.sandbox", "tests.fixtures.rig"]
