"""Real ``docker-registry`` set-ups for registry-hosts tests: a pull-through cache, TLS, mTLS.

* :class:`PullThroughRegistry`: distribution's proxy mode (``proxy.remoteurl``), a read-only
  mirror that fetches from another registry on a miss, as Docker Hub mirrors are run.
* :class:`TlsRegistry`: HTTPS with a server certificate from a CA made in the test
  (:func:`tests.support.tls.generate`), and with ``client_ca`` set, ``http.tls.clientcas``:
  the registry then refuses TLS handshakes without a client certificate from that CA.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx

from tests.support.modserver import TLSFiles
from tests.support.registry import Registry
from tests.support.tls import TlsFiles


class PullThroughRegistry(Registry):
    """A registry in proxy mode mirroring ``remote_url`` (plain HTTP on 127.0.0.1)."""

    def __init__(self, directory: Path, remote_url: str) -> None:
        super().__init__(directory)
        self.remote_url = remote_url

    def _config(self) -> str:
        return super()._config() + f"proxy:\n  remoteurl: {self.remote_url}\n"


class TlsRegistry(Registry):
    """An HTTPS registry whose certificate is issued by ``files.ca``; mTLS with ``client_ca``."""

    def __init__(self, directory: Path, files: TlsFiles, *, client_ca: bool = False) -> None:
        super().__init__(directory, tls=TLSFiles(cert=files.server_cert, key=files.server_key))
        self.files = files
        self.client_ca = client_ca

    def _config(self) -> str:
        text = super()._config()
        if not self.client_ca:
            return text
        key_line = f"    key: {self.files.server_key}\n"
        return text.replace(key_line, key_line + f"    clientcas:\n      - {self.files.ca}\n", 1)

    def client(self, timeout: float = 2.0) -> httpx.Client:
        """A client trusting the CA, presenting the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.files.ca))
        ctx.load_cert_chain(str(self.files.client_cert), str(self.files.client_key))
        return httpx.Client(verify=ctx, timeout=timeout)

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return True
                except httpx.HTTPError:
                    time.sleep(0.05)
        return False

    def _get(self, url: str, timeout: float) -> None:
        with self.client(timeout=timeout) as client:
            client.get(url)
