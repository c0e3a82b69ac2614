"""One-line errors for listen addresses that cannot be bound (``--listen``, ``--status-address``).

gRPC's ``add_insecure_port`` raises a bare ``RuntimeError("Failed to bind to address ...")`` and
asyncio's ``start_server`` an ``OSError`` with the socket address tuple in it; neither names the
flag. :class:`ListenError` does: ``--listen 127.0.0.1:18556: cannot listen: address already in
use``. It is an ``OSError``, so the commands report it as an operation failure (exit 1).
"""

from __future__ import annotations

import errno
import os
import socket

from wasm_agent.core.errors import WasmAgentError


class ListenError(WasmAgentError, OSError):
    """A listen address could not be bound; the message names the flag and the address."""


def listen_error(flag: str, address: str, reason: str) -> ListenError:
    """The error for ``flag address`` that could not be bound because of ``reason``."""
    return ListenError(f"{flag} {address}: cannot listen: {reason}")


def os_reason(error: OSError) -> str:
    """A short lowercase reason for ``error`` ("address already in use"), without the errno."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host: {error.strerror or error}".lower()
    if error.errno and error.errno in errno.errorcode:
        return os.strerror(error.errno).lower()
    return (error.strerror or str(error)).lower()


def tcp_bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, found by binding a plain socket there as gRPC does
    (``SO_REUSEADDR``), or None when it can. Checked before gRPC binds, whose own failure
    prints a C-core log line and says no more than "Failed to bind"."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as error:
        return os_reason(error)
    for family, kind, proto, _name, address in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                return os_reason(error)
    return None


def unix_bind_problem(path: str) -> str | None:
    """Why a Unix socket cannot be bound at ``path`` (free: claimed first), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(path)
        except OSError as error:
            return os_reason(error)
    os.unlink(path)  # the probe's own socket
    return None
