"""fetch_module: scheme dispatch, deadline, checksum and magic checks, the fetch metric."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import minimal_module, sha256_hex
from wasm_agent.core.metrics import REGISTRY
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch import FetchRequest, fetch_module
from wasm_agent.fetch.dispatch import normalize_url
from wasm_agent.fetch.errors import (
    ChecksumMismatch,
    DownloadFailure,
    InvalidModule,
    UnsupportedScheme,
)
from wasm_agent.fetch.file import fetch_file

SETTINGS = FetchSettings(http_max_retries=1)


def fetch_count(result: str) -> float:
    return REGISTRY._metrics["istio_agent_wasm_remote_fetch_count"].value(result=result)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://h/m.wasm", "http://h/m.wasm"),
        ("HTTPS://h/m.wasm", "https://h/m.wasm"),
        ("ghcr.io/org/plugin:v1", "oci://ghcr.io/org/plugin:v1"),  # no scheme: OCI
        ("localhost:5000/p@sha256:ab", "oci://localhost:5000/p@sha256:ab"),
        ("/abs/m.wasm", "file:///abs/m.wasm"),
        ("file:///abs/m.wasm", "file:///abs/m.wasm"),
    ],
)
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


def test_relative_path_becomes_absolute_file_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("./m.wasm") == (tmp_path / "m.wasm").as_uri()


async def test_http_success_is_counted(modserver: ModServer) -> None:
    data = minimal_module()
    before = fetch_count("success")
    fetched = await fetch_module(FetchRequest(modserver.serve("/m.wasm", data)), SETTINGS)
    assert (fetched.data, fetched.sha256, fetched.checksum) == (
        data,
        sha256_hex(data),
        sha256_hex(data),
    )
    assert fetch_count("success") == before + 1


async def test_checksum_mismatch(modserver: ModServer, tmp_path: Path) -> None:
    path = tmp_path / "m.wasm"
    path.write_bytes(minimal_module())
    before = fetch_count("checksum_mismatched")
    for url in (modserver.serve("/m.wasm", minimal_module()), str(path)):
        with pytest.raises(ChecksumMismatch):
            await fetch_module(FetchRequest(url, sha256="sha256:" + "1" * 64), SETTINGS)
    assert fetch_count("checksum_mismatched") == before + 2


async def test_checksum_prefix_and_case_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.wasm"
    path.write_bytes(minimal_module())
    sha = "SHA256:" + sha256_hex(path.read_bytes()).upper()
    assert (await fetch_module(FetchRequest(path.as_uri(), sha256=sha), SETTINGS)).data


async def test_not_wasm_is_invalid(modserver: ModServer) -> None:
    before = fetch_count("fetch_failure")
    with pytest.raises(InvalidModule, match="not a Wasm binary"):
        await fetch_module(FetchRequest(modserver.serve("/x", b"<html></html>")), SETTINGS)
    assert fetch_count("fetch_failure") == before + 1


async def test_unsupported_scheme() -> None:
    with pytest.raises(
        UnsupportedScheme, match="unsupported Wasm module downloading URL scheme: ftp"
    ):
        await fetch_module(FetchRequest("ftp://h/m.wasm"), SETTINGS)


async def test_deadline_bounds_the_whole_fetch(modserver: ModServer) -> None:
    url = modserver.slow("/drip", minimal_module() * 100, chunk=16, delay=0.1)  # the body: ~22 s
    before = fetch_count("download_failure")
    started = time.monotonic()
    with pytest.raises(DownloadFailure, match=r"0\.3s"):
        await fetch_module(FetchRequest(url, timeout=0.3), SETTINGS)
    assert time.monotonic() - started < 5
    assert fetch_count("download_failure") == before + 1


async def test_default_deadline_comes_from_settings(modserver: ModServer) -> None:
    url = modserver.slow("/drip", minimal_module() * 100, chunk=16, delay=0.1)
    settings = FetchSettings(http_max_retries=1, default_fetch_timeout=0.2)
    with pytest.raises(DownloadFailure, match=r"0\.2s"):
        await fetch_module(FetchRequest(url), settings)


async def test_file_fetcher_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.wasm"
    big.write_bytes(minimal_module() + b"\0" * 100)
    with pytest.raises(DownloadFailure, match="over the 50-byte limit"):
        await fetch_file(FetchRequest(big.as_uri()), FetchSettings(max_binary_size=50))
    with pytest.raises(DownloadFailure, match="no such file"):
        await fetch_module(FetchRequest(str(tmp_path / "none.wasm")), SETTINGS)
    with pytest.raises(DownloadFailure, match="remote host"):
        await fetch_module(FetchRequest("file://elsewhere/m.wasm"), SETTINGS)
    with pytest.raises(DownloadFailure, match="is a directory"):
        await fetch_module(FetchRequest(str(tmp_path)), SETTINGS)


async def test_file_fetch_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "m.wasm"
    path.write_bytes(minimal_module())
    seen: list[tuple[int, int | None]] = []
    await fetch_module(
        FetchRequest(str(path)), SETTINGS, lambda got, total: seen.append((got, total))
    )
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
