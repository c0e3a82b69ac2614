"""The embedded Proxy-Wasm reference host: runs plugins outside Envoy, the way Envoy does.

Why under ``agent/``: the design card puts the embedded reference host inside the agent
(``wasm_agent.agent.host``, next to the CLI that serves ``wasm-agent run`` and ``check``); it
shares no code with the xDS proxy or the fetcher. Modules, split by area like proxytest:
``abi`` (versions, enums, host-function registry), ``compile`` (engines, compiled-module cache),
``vm`` (load/link/start/call, fuel, memory cap), ``traps`` (V8-worded failures), ``fastcall``
(raw calls across the boundary), ``memory``, ``context``, ``maps``, ``messages``, ``buffers``,
``properties``/``streaminfo``, ``general`` (log, time, status, foreign functions), ``control``
(local response, continue/close), ``http`` (HTTP stream driver), ``network`` (TCP),
``callouts`` (HTTP/gRPC), ``shared`` (shared data and queues), ``metrics``, ``wasi``,
``failure`` (failure policies) and ``harness`` (the pytest-facing API; start there).
"""
