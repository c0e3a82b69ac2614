"""``wasm-agent demo``: a self-contained demo on 127.0.0.1.

A built-in control plane (:mod:`.controlplane`) serves one listener with an ECDS Wasm filter;
a module server (:mod:`.modserver`) holds the sample plugin compiled from ``plugin.wat``; the
wasm-agent xDS proxy runs in this process between them and Envoy (:mod:`.envoy`, a subprocess).
:mod:`.runner` tells the story step by step; :mod:`.stack` starts and stops the parts.
"""

from __future__ import annotations

from wasm_agent.demo.runner import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
