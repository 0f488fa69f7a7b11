"""mxwatch: enable an Exchange Online inbound connector once MX really points at the filter."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mxwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
