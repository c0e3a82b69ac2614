"""``wasm-agent check``: structure, Envoy compatibility, load test and behaviour specs.

Modules: ``structure`` (a small Wasm section reader), ``compat`` (ABI version, allocator,
imports and callbacks against what Envoy links), ``load`` (start in the reference host),
``spec`` (YAML behaviour specs with line numbers), ``cases`` (running spec cases), ``runner``
(one module through every check), ``fetching`` (remote modules through the cache), ``report``
(text, JSON, JUnit, GitHub annotations) and ``model`` (the result types the others fill).
"""
