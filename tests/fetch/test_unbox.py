"""Unboxing gzip and tar wrappers, and refusing bombs and path tricks."""

from __future__ import annotations

import gzip
import tarfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.modserver import gzip_bytes, tar_bytes, tar_entry
from tests.support.wasm import minimal_module
from wasm_agent.fetch.errors import UnboxError
from wasm_agent.fetch.unbox import MAX_DEPTH, gunzip, unbox

WASM = minimal_module()
URL = "https://example.com/plugin.wasm"
CAP = 1_000_000


def test_wasm_passes_through():
    assert unbox(WASM, CAP) is WASM


@pytest.mark.parametrize("data", [b"", b"hello", b"<html>", bytes(600)])
def test_other_bytes_pass_through_unchanged(data):
    assert unbox(data, CAP) == data


def test_gzip_tar_and_nesting():
    assert unbox(gzip_bytes(WASM), CAP) == WASM
    assert unbox(tar_bytes(("plugin.wasm", WASM)), CAP) == WASM
    assert unbox(tar_bytes(("plugin.wasm", WASM), gz=True), CAP) == WASM
    nested = gzip_bytes(tar_bytes(("inner.tar.gz", tar_bytes(("plugin.wasm", WASM), gz=True))))
    assert unbox(nested, CAP) == WASM


def test_first_regular_file_wins_and_directories_are_skipped():
    data = tar_bytes(
        tar_entry("./", tarfile.DIRTYPE), ("./plugin.wasm", WASM), ("second.wasm", b"x" * 10)
    )
    assert unbox(data, CAP) == WASM


def test_too_many_wrappers():
    data = WASM
    for _ in range(MAX_DEPTH + 1):
        data = gzip_bytes(data)
    with pytest.raises(UnboxError, match="nested"):
        unbox(data, CAP, url=URL)
    data = WASM
    for _ in range(MAX_DEPTH):
        data = gzip_bytes(data)
    assert unbox(data, CAP) == WASM


def test_multi_member_gzip():
    half = len(WASM) // 2
    assert unbox(gzip_bytes(WASM[:half]) + gzip_bytes(WASM[half:]), CAP) == WASM


def test_gzip_bomb_stops_at_the_cap():
    bomb = gzip_bytes(bytes(50_000_000))
    with pytest.raises(UnboxError) as info:
        unbox(bomb, CAP, url=URL)
    assert str(info.value) == f"{URL}: decompressed size exceeds {CAP} bytes"


def test_gzip_exactly_at_the_cap_is_fine():
    data = WASM + bytes(CAP - len(WASM))
    assert gunzip(gzip_bytes(data), CAP) == data
    with pytest.raises(UnboxError, match="exceeds"):
        gunzip(gzip_bytes(data + b"!"), CAP)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (gzip_bytes(WASM)[:-12], "truncated gzip data"),
        (b"\x1f\x8b\x08\x00" + b"\xff" * 40, "malformed gzip data"),
        (gzip_bytes(WASM) + b"garbage", "unexpected data after the gzip stream"),
    ],
    ids=["truncated", "corrupt", "trailing-garbage"],
)
def test_malformed_gzip(data, cause):
    with pytest.raises(UnboxError, match=cause) as info:
        unbox(data, CAP, url=URL)
    assert URL in str(info.value)


@pytest.mark.parametrize(
    ("entry", "cause"),
    [
        (("../../plugin.wasm", WASM), "'../../plugin.wasm' has a '..' path component"),
        (("a/../../plugin.wasm", WASM), "'a/../../plugin.wasm' has a '..' path component"),
        (("/plugin.wasm", WASM), "'/plugin.wasm' has an absolute path"),
        (tar_entry("p.wasm", tarfile.SYMTYPE, "../../etc/passwd"), "'p.wasm' is a link"),
        (tar_entry("p.wasm", tarfile.LNKTYPE, "/etc/shadow"), "'p.wasm' is a link"),
        (tar_entry("dev", tarfile.CHRTYPE), "'dev' is a device"),
        (tar_entry("blk", tarfile.BLKTYPE), "'blk' is a device"),
        (tar_entry("pipe", tarfile.FIFOTYPE), "'pipe' is a device, fifo"),
    ],
)
def test_tar_tricks_are_refused_naming_the_member(entry, cause):
    with pytest.raises(UnboxError) as info:
        unbox(tar_bytes(entry, ("ok.wasm", WASM), gz=True), CAP, url=URL)
    assert cause in str(info.value)
    assert URL in str(info.value)


def test_tar_member_over_the_cap():
    with pytest.raises(UnboxError, match=r"'big\.bin' size exceeds 1000 bytes"):
        unbox(tar_bytes(("big.bin", bytes(5000))), 1000, url=URL)


def test_tar_without_files():
    with pytest.raises(UnboxError, match="no regular file"):
        unbox(tar_bytes(tar_entry("d", tarfile.DIRTYPE)), CAP, url=URL)


def test_gzip_of_non_wasm_returns_the_inner_bytes():
    assert unbox(gzip.compress(b"plain text"), CAP) == b"plain text"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=6000))
def test_gunzip_never_returns_more_than_the_cap(payload, cap):
    packed = zlib.compress(payload, wbits=31)
    try:
        out = gunzip(packed, cap)
    except UnboxError as exc:
        assert len(payload) > cap and "exceeds" in str(exc)
    else:
        assert out == payload and len(out) <= cap
