"""``python -m wasm_agent.node``: the node service without the agent CLI around it."""

from __future__ import annotations

import sys

from wasm_agent.node.command import main

sys.exit(main())
