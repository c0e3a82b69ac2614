"""Map-valued properties (``request.headers``, ``response.headers``, ``response.trailers``) the
way Envoy 1.40 serializes them.

Envoy builds the value from CEL's ``HeadersWrapper::ListKeys``: the header names go into an
``absl::flat_hash_set`` (so a repeated header is one key) and each key's value is
``getAllOfHeaderAsString`` (every value of that header joined with ``,``). The pairs come out in
the set's iteration order, which depends on a per-table seed that changes from one table to the
next: five identical requests to one Envoy gave five different orders (recorded in
``tests/conformance/golden/props_*.json``), and a fresh Envoy repeats the same sequence. That
order cannot be reproduced outside Envoy's allocator, so the host gives what a plugin can rely
on (one pair per name, joined values) in a seeded hash order that also changes from call to
call and is never the header map's order: a plugin that depends on the order fails here as it
would in Envoy.
"""

from __future__ import annotations

import hashlib

from wasm_agent.host.maps import HeaderMap, serialize_pairs


def merged_pairs(headers: HeaderMap) -> list[tuple[bytes, bytes]]:
    """One pair per header name (first-seen order), values joined with ``,``."""
    values: dict[bytes, list[bytes]] = {}
    for key, value in headers.entries:
        values.setdefault(key, []).append(value)
    return [(key, b",".join(parts)) for key, parts in values.items()]


def _rank(key: bytes, seed: int) -> bytes:
    return hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(8, "little")).digest()


def hash_order(pairs: list[tuple[bytes, bytes]], seed: int) -> list[tuple[bytes, bytes]]:
    """``pairs`` in a hash-set order for ``seed`` (never left in the given order when it can
    differ: the next seed is tried)."""
    if len(pairs) < 2:
        return pairs
    for attempt in range(8):
        ordered = sorted(pairs, key=lambda pair: _rank(pair[0], seed + attempt * 7919))
        if ordered != pairs:
            return ordered
    return list(reversed(pairs))


def serialize_map(headers: HeaderMap, seed: int) -> bytes:
    """The property value of a header map (Proxy-Wasm pairs format)."""
    return serialize_pairs(hash_order(merged_pairs(headers), seed))
