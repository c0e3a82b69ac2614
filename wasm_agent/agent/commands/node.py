"""``wasm-agent node``: the trusted node service (a CSI node plugin, driver csi.wasm-agent.io).

Serves kubelet's CSI calls on ``--csi-endpoint``, turns each CSI ephemeral volume into a pod's
read-only view with a ``node.sock``, and places modules there from the node cache
(``--cache-dir``), which only this process writes. See docs/node.md. Exit status: 0 stopped by
a signal, 1 failed to start, 2 usage error.
"""

from __future__ import annotations

from wasm_agent.node.command import add_arguments, run

__all__ = ["add_arguments", "run"]
