"""The trusted node service: a CSI node plugin that is the only writer of the node's module cache.

Kubelet publishes a CSI ephemeral inline volume per pod; the node service turns it into the
pod's *view* (a read-only ``modules/`` directory and a per-pod ``node.sock``). Pods ask for
modules over ``node.sock`` (:mod:`.protocol`, :mod:`.client`); the node fetches, verifies,
compiles and stores each module once (:mod:`wasm_agent.cache`) and places it read-only in the
pod's view, after checking that the pod may read it (:mod:`.access`). See docs/node.md.

Imports only ``wasm_agent.core``, ``.fetch`` and ``.cache`` (tests/test_layers.py).
"""

from __future__ import annotations

DRIVER_NAME = "csi.wasm-agent.io"
SOCKET_NAME = "node.sock"
MODULES_DIR = "modules"
