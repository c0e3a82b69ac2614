"""Settings of ``wasm-agent node`` (flags; the fetch and cache settings come from core)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from wasm_agent.core import config
from wasm_agent.core.settings import CacheSettings, FetchSettings

DEFAULT_PODS_DIR = Path("/var/lib/kubelet/pods")

# The pod side: ``proxy`` and ``prefetch`` add this row to their flags.
NODE_SOCKET = config.Option(
    "node_socket", "WASM_AGENT_NODE_SOCKET", config.text, None,
    "ask the node service on this socket (in the pod's csi.wasm-agent.io volume) for modules "
    "instead of fetching them; the answered paths are inside that volume",
    "--node-socket", "PATH",
)  # fmt: skip


class NodeSettingsError(ValueError):
    """A node setting cannot be used; the message names the flag."""


def parse_csi_endpoint(endpoint: str) -> Path:
    """The socket path of ``--csi-endpoint unix:PATH`` (``unix://PATH`` too)."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
    else:
        raise NodeSettingsError(f"--csi-endpoint: expected unix:PATH, got {endpoint!r}")
    if not path.startswith("/"):
        raise NodeSettingsError(f"--csi-endpoint: the socket path must be absolute: {path!r}")
    return Path(path)


@dataclass(frozen=True)
class NodeSettings:
    """What one node service serves and where it keeps its state."""

    csi_socket: Path
    cache: CacheSettings
    fetch: FetchSettings
    status_address: str | None = None
    node_id: str = field(default_factory=socket.gethostname)
    # Every target_path kubelet sends must lie under this directory (a CSI call naming any
    # other path is refused, so the CSI socket cannot be used to mount over host files).
    pods_dir: Path = DEFAULT_PODS_DIR
    access_ttl: float = 300.0  # how long a registry's "yes" to a pod's credentials is reused
    max_volumes: int = 0  # NodeGetInfo max_volumes_per_node; 0 = no limit
    use_mounts: bool = True  # read-only bind mounts (root); False: hardlink or copy
    # downloads (and compile checks) all pods together may have in progress; one pod may have
    # FETCHES_PER_POD (service.py), so it takes max_fetches / 2 pods to hold every slot
    max_fetches: int = 16

    @property
    def state_dir(self) -> Path:
        """Volume records and the views' backing directories (inside the node's cache dir)."""
        return self.cache.directory / "node"
