"""grpc C-core settings for the proxy process: ``configure()`` before grpc is first imported.

The proxy command (and the demo) call :func:`configure` first thing; importing this module
changes nothing.

grpcio reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is imported. With its default
EventEngine client and listener, every message the proxy receives is read from the socket by an
EventEngine worker thread, handed to the thread polling the completion queue, and from there to
the asyncio loop. Turning the two experiments off makes the polling thread read the socket
itself: one thread hop fewer per message. Measured with ``bench/transports.py`` (docs/proxy.md,
"Performance"): about 0.1 ms less added latency per 1 KB round trip and about a third less
proxy CPU per message, no change in behaviour (the whole proxy test suite passes either way).

Applied only when the operator has not set ``GRPC_EXPERIMENTS`` (an empty value keeps grpc's
defaults) and only for grpcio versions it was measured with: experiment names come and go
between releases, and grpc logs an error for every unknown one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from importlib import metadata

LOW_LATENCY_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
MEASURED_GRPCIO = frozenset({"1.85"})  # major.minor versions bench/transports.py was run with


def grpcio_version() -> str:
    """The installed grpcio's ``major.minor`` (without importing grpc), or ``""``."""

    try:
        version = metadata.version("grpcio")
    except metadata.PackageNotFoundError:
        return ""
    return ".".join(version.split(".")[:2])


def configure(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``GRPC_EXPERIMENTS`` for low latency if nothing else decided; True if it did."""
    environ = os.environ if environ is None else environ
    if "grpc" in sys.modules or "GRPC_EXPERIMENTS" in environ:
        return False  # too late to matter, or the operator's choice
    if grpcio_version() not in MEASURED_GRPCIO:
        return False
    environ["GRPC_EXPERIMENTS"] = LOW_LATENCY_EXPERIMENTS
    return True
