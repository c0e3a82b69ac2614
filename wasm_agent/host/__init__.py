"""The embedded Proxy-Wasm reference host: runs plugins outside Envoy, the way Envoy does.

A layer of its own: it imports only ``wasm_agent.core`` and shares no code with the xDS proxy,
the fetcher or the cache (``wasm-agent run`` and ``check`` use it). The public API is exported
here (``from wasm_agent.host import start_plugin``). Modules, split by area like proxytest:
``abi`` (versions, enums, tables), ``hostfn`` (the ``@host`` marker, ``VmLike``, the current VM),
``registry`` (the host functions, from an explicit module list), ``compile`` (engines,
compiled-module cache), ``vm``/``vmtypes``/``link`` (load, link, start, call, fuel, memory cap),
``traps`` (V8-worded failures), ``envoylog`` (Envoy's ``[wasm]`` lines), ``fastcall`` (raw calls
across the boundary), ``memory``, ``context``, ``maps``, ``messages``, ``buffers``,
``properties``/``streaminfo``/``celmap``, ``general`` (log, time, status, foreign functions),
``control`` (local response, continue/close), ``http`` (HTTP stream driver), ``network`` (TCP),
``callouts`` (HTTP/gRPC), ``shared`` (shared data and queues), ``metrics``, ``wasi``,
``failure`` (failure policies, Envoy's VM count), ``frontend`` (Envoy's HCM/codec model),
``clock`` (virtual time), ``exchange``/``startup``/``harness`` (the test-facing API; start
there) and ``pytest_plugin`` (fixtures).
"""

from __future__ import annotations

from wasm_agent.host.abi import AbiVersion, LogLevel, PeerType, Status
from wasm_agent.host.callouts import GrpcCall, HttpCallout
from wasm_agent.host.failure import FailurePolicy
from wasm_agent.host.harness import Exchange, HostedPlugin, start_plugin
from wasm_agent.host.maps import serialize_pairs
from wasm_agent.host.messages import LocalResponse, Message
from wasm_agent.host.network import TcpConnection
from wasm_agent.host.vm import LoadError, LogEntry

__all__ = [
    "AbiVersion",
    "Exchange",
    "FailurePolicy",
    "GrpcCall",
    "HostedPlugin",
    "HttpCallout",
    "LoadError",
    "LocalResponse",
    "LogEntry",
    "LogLevel",
    "Message",
    "PeerType",
    "Status",
    "TcpConnection",
    "serialize_pairs",
    "start_plugin",
]
