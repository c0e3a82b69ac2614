"""The foundation every other package imports: errors, logging, metrics and settings.

Imports nothing of ``wasm_agent``. Modules: ``errors`` (the error root), ``logs``
(``setup_logging``, ``redact_url``), ``metrics`` (the Prometheus registry) and ``settings``
(settings objects built from flags and the environment).
"""
