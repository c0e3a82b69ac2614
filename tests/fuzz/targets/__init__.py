"""Fuzz targets: each module has ``fuzz_one(data: bytes) -> None`` and ``ALLOWED``.

``fuzz_one`` may raise only the exception classes in ``ALLOWED`` (the documented errors of the
code under test); any other exception, a crash, a hang or unbounded memory growth is a finding.
``MAX_LEN`` is the largest input worth generating. Run them with ``tests/fuzz/run.py``.
"""

NAMES = ("wire", "ecds", "oci_manifest", "dockerconfig", "unbox", "host_memory")
