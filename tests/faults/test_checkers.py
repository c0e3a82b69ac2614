"""The suite's invariant checkers catch what they claim to (so a passing fault case means
something)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from tests.support.faults import Seen, assert_cache_clean, assert_never_forwarded, local_filenames
from tests.support.wasm import sha256_hex


def _cache(tmp_path: Path) -> tuple[Path, str]:
    cache = tmp_path / "cache"
    (cache / "modules").mkdir(parents=True)
    data = b"\0asm\1\0\0\0"
    sha = sha256_hex(data)
    (cache / "modules" / f"{sha}.wasm").write_bytes(data)
    urls = {"http://x/m.wasm": {"checksum": sha, "sha256": sha}}
    (cache / "index.json").write_text(json.dumps({"urls": urls, "digests": {}}))
    return cache, sha


def test_cache_checker_accepts_a_clean_cache_and_a_live_download(tmp_path: Path) -> None:
    cache, sha = _cache(tmp_path)
    temp = cache / "modules" / ".tmp-0123.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a download in progress (flock: per open file, so the
    try:  # checker's own open conflicts with it as another process's would)
        assert assert_cache_clean(cache).keys() == {sha}
    finally:
        os.close(fd)
    with pytest.raises(AssertionError, match="no live process holds"):
        assert_cache_clean(cache)
    assert assert_cache_clean(cache, allow_abandoned=True) == {sha: cache / f"modules/{sha}.wasm"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("partial", "content hashes to"),
        ("stray", "stray file"),
        ("dangling", "has no module file"),
        ("index-temp", "leftover index temp file"),
    ],
)
def test_cache_checker_catches_damage(tmp_path: Path, damage: str, message: str) -> None:
    cache, sha = _cache(tmp_path)
    if damage == "partial":
        (cache / "modules" / f"{sha}.wasm").write_bytes(b"\0asm")
    elif damage == "stray":
        (cache / "modules" / "plugin.wasm").write_bytes(b"x")
    elif damage == "dangling":
        (cache / "modules" / f"{sha}.wasm").unlink()
    else:
        (cache / ".index-abc.tmp").write_text("{")
    with pytest.raises(AssertionError, match=message):
        assert_cache_clean(cache)


def test_forwarded_checker(tmp_path: Path) -> None:
    good = tmp_path / f"{sha256_hex(b'good')}.wasm"
    good.write_bytes(b"good")
    liar = tmp_path / f"{sha256_hex(b'good')[:-1]}0.wasm"
    dump = {"configs": [{"ecds_filter": {"config": {"code": {"local": {"filename": str(good)}}}}}]}
    assert local_filenames(dump) == [str(good)]
    assert_never_forwarded([Seen("ok", good, sha256_hex(b"good"))], sha256_hex(b"bad"))
    with pytest.raises(AssertionError, match="holds content"):
        assert_never_forwarded([Seen("lie", liar, sha256_hex(b"good"))])
    with pytest.raises(AssertionError, match="bad module"):
        assert_never_forwarded([Seen("bad", good, sha256_hex(b"good"))], sha256_hex(b"good"))
    with pytest.raises(AssertionError, match="did not exist"):
        assert_never_forwarded([Seen("gone", good, None)])
    with pytest.raises(AssertionError, match="not one of the configured"):
        assert_never_forwarded([Seen("x", good, sha256_hex(b"good"))], allowed={"00" * 32})
