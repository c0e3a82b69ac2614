"""Start-up checks of the files and paths a command names, before anything runs.

``proxy`` used to start and say "running" with ``--tls-ca /nonexistent``: the files were read
only when Envoy first connected. Here every TLS file and the token file are read (and the TLS
ones parsed) at start-up, and the listen socket's directory must exist; a problem raises
:class:`~wasm_agent.core.errors.UsageError` naming the flag and the file (exit 2). A file at the
listen path that is not a socket is never removed (exit 2); a live socket there is another
process's (exit 1); only a stale socket (connect refused) is removed.

The one directory created is the default listen path's (``./etc/istio/proxy``, relative to the
working directory, as Istio's agent has it): Envoy's bootstrap in Istio expects the socket
there. Any other ``--listen unix:PATH`` needs an existing directory.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path

from wasm_agent.core.config import DEFAULT_LISTEN
from wasm_agent.core.errors import UsageError
from wasm_agent.core.unix_socket import claim_socket_path

log = logging.getLogger("wasm_agent.proxy")

SUN_PATH_MAX = 107  # bytes of a Unix socket path, without sun_path's terminating NUL


def readable_file(flag: str, value: str | Path) -> Path:
    """``value`` as a path to a readable regular file, else :class:`UsageError` naming ``flag``."""
    path = Path(value).expanduser()
    try:
        with open(path, "rb") as handle:
            if stat.S_ISDIR(os.fstat(handle.fileno()).st_mode):
                raise UsageError(f"{flag} {value}: is a directory, not a file")
            handle.read(1)
    except FileNotFoundError:
        raise UsageError(f"{flag} {value}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {value}: is a directory, not a file") from None
    except OSError as error:
        raise UsageError(f"{flag} {value}: cannot read: {error.strerror or error}") from None
    return path


def check_tls_files(ca: str | None, cert: str | None, key: str | None, token: str | None) -> None:
    """Read and parse the proxy's TLS files and read its token file; raise :class:`UsageError`."""
    if ca:
        path = readable_file("--tls-ca", ca)
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(path))
        except (ssl.SSLError, ValueError):
            raise UsageError(f"--tls-ca {ca}: not a PEM CA bundle") from None
    cert_path = readable_file("--tls-cert", cert) if cert else None
    key_path = readable_file("--tls-key", key) if key else None
    if cert_path is not None and key_path is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError):
            raise UsageError(
                f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its private key"
            ) from None
    if token:
        readable_file("--token-file", token)


def prepare_listen(address: str) -> None:
    """Check ``--listen unix:PATH``'s directory (create it only for the default path) and what is
    at PATH: only a stale socket is removed (:func:`~wasm_agent.core.unix_socket.claim_socket_path`
    raises :class:`UsageError`, or :class:`~wasm_agent.core.unix_socket.SocketInUse`)."""
    if not address.startswith("unix:"):
        return
    path = Path(address[len("unix:") :].removeprefix("//")).expanduser()
    size = len(str(path).encode())
    if size > SUN_PATH_MAX:  # gRPC binds the path as given: the kernel refuses a longer one
        raise UsageError(
            f"--listen {address}: the socket path is {size} bytes; a Unix socket path may have "
            f"at most {SUN_PATH_MAX} (choose a shorter path)"
        )
    parent = path.parent
    if parent.is_dir():
        claim_socket_path(path, f"--listen {address}")  # exit 2 not a socket, 1 a live one
        return
    if parent.exists() or parent.is_symlink():
        raise UsageError(f"--listen {address}: {parent} is not a directory")
    if address != DEFAULT_LISTEN:
        raise UsageError(
            f"--listen {address}: directory {parent} does not exist (create it, or choose "
            "another path)"
        )
    try:
        parent.mkdir(parents=True)
    except OSError as error:
        raise UsageError(f"--listen {address}: cannot create {parent}: {error.strerror}") from None
    log.info(
        "created the default listen directory (Istio's layout)",
        extra={"directory": str(parent.resolve())},
    )
