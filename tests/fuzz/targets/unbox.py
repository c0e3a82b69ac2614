"""Archive unboxing: ``wasm_agent.fetch.unbox.unbox`` (HTTP modules: gzip/tar nesting) and
``oci_layers.extract_plugin`` (``plugin.wasm`` from a tar.gz image layer).

Input: byte 0 bit 0 picks the function; the rest is the downloaded body. Only the documented
errors may escape (:class:`UnboxError`; :class:`ArchiveError`, :class:`TooLarge`); output is
capped at ``MAX_SIZE`` bytes whatever the input decompresses to (bombs).
"""

from __future__ import annotations

from wasm_agent.fetch.errors import UnboxError
from wasm_agent.fetch.oci_layers import ArchiveError, TooLarge, extract_plugin
from wasm_agent.fetch.unbox import unbox

ALLOWED: tuple[type[BaseException], ...] = (UnboxError, ArchiveError, TooLarge)
MAX_LEN = 16384
MAX_SIZE = 256 * 1024


def fuzz_one(data: bytes) -> None:
    """Unbox ``data[1:]`` with the function byte 0 picks."""
    if not data:
        return
    body = data[1:]
    if data[0] & 1:
        plugin = extract_plugin(body, MAX_SIZE)
        assert len(plugin) <= MAX_SIZE
        return
    out = unbox(body, MAX_SIZE, url="https://example.test/m.wasm")
    assert out == body or len(out) <= MAX_SIZE
