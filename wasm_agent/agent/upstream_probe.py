"""Say, at warning level, when istiod cannot be reached, with the address and the cause.

The proxy opens an upstream stream only when Envoy opens one, so a wrong
``--discovery-address`` used to go unnoticed until Envoy connected. :class:`UpstreamProbe`
connects to istiod at start-up and then every :data:`PROBE_INTERVAL` seconds while no upstream
stream is open (a TCP connect, plus a TLS handshake with the proxy's CA and client certificate
unless ``--plaintext``). Its warnings are rate-limited: the first failure at once, then at most
one line per :data:`REPEAT_INTERVAL` while it keeps failing (with the number of failed attempts),
and one ``info`` line when istiod is reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wasm_agent.proxy")

PROBE_INTERVAL = 5.0
REPEAT_INTERVAL = 60.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProbeTarget:
    """Where istiod is and how to shake hands with it."""

    address: str  # HOST:PORT or unix:PATH
    plaintext: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None


async def probe(target: ProbeTarget, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Connect once; None if istiod answered, else the cause in words."""
    context = None if target.plaintext else _tls_context(target)
    try:
        if target.address.startswith("unix:"):
            path = target.address[len("unix:") :].removeprefix("//")
            opening = asyncio.open_unix_connection(path, ssl=context, server_hostname=_name(target))
        else:
            host, _, port = target.address.rpartition(":")
            opening = asyncio.open_connection(
                host.strip("[]"), int(port), ssl=context, server_hostname=_name(target)
            )
        _reader, writer = await asyncio.wait_for(opening, timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except ssl.SSLError as error:
        return f"TLS handshake failed: {error.reason or error}"
    except OSError as error:
        return _os_cause(error)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None


def _name(target: ProbeTarget) -> str | None:
    if target.plaintext:
        return None
    if target.server_name:
        return target.server_name
    if target.address.startswith("unix:"):
        return "localhost"
    return target.address.rpartition(":")[0].strip("[]")


def _tls_context(target: ProbeTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
    context.set_alpn_protocols(["h2"])
    if target.cert_file and target.key_file:
        context.load_cert_chain(target.cert_file, target.key_file)
    return context


def _os_cause(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


class UpstreamProbe:
    """Probes while ``connected()`` is false; logs failures rate-limited (see the module)."""

    def __init__(
        self,
        target: ProbeTarget,
        connected: Callable[[], bool],
        *,
        interval: float = PROBE_INTERVAL,
        repeat: float = REPEAT_INTERVAL,
    ) -> None:
        self.target = target
        self.connected = connected
        self.interval = interval
        self.repeat = repeat
        self.failures = 0
        self._last_warning = -float("inf")

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            if not self.connected():
                self.record(await probe(self.target))
            await asyncio.sleep(self.interval)

    def record(self, cause: str | None, now: float | None = None) -> None:
        """Log one probe's outcome, rate-limited."""
        now = time.monotonic() if now is None else now
        if cause is None:
            if self.failures:
                log.info(
                    "istiod is reachable again",
                    extra={"discovery": self.target.address, "failed_attempts": self.failures},
                )
            self.failures = 0
            self._last_warning = -float("inf")
            return
        self.failures += 1
        if now - self._last_warning < self.repeat:
            return
        self._last_warning = now
        log.warning(
            "cannot reach istiod",
            extra={
                "discovery": self.target.address,
                "cause": cause,
                "failed_attempts": self.failures,
                "next_warning_in_s": int(self.repeat),
            },
        )
