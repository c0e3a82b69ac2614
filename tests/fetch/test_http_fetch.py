"""The HTTP(S) fetcher against a real module server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import ipaddress
import tarfile
import time

import pytest

from tests.support.modserver import ModServer, Route, gzip_bytes, tar_bytes, tar_entry
from tests.support.registry import refused_port
from tests.support.wasm import minimal_module, padded_module, sha256_hex
from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import (
    BlockedAddress,
    ChecksumMismatch,
    DownloadFailure,
    FetchError,
    InvalidModule,
    UnboxError,
    UnsupportedScheme,
)
from wasm_agent.fetch.http import fetch_http
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.retry import Backoff, Deadline, RetriesExhausted, Retryable, with_retries

WASM = minimal_module()
SETTINGS = FetchSettings(http_max_retries=3, http_request_timeout=2.0, default_fetch_timeout=5.0)


async def fetch(url: str, backoff: Backoff, settings: FetchSettings = SETTINGS, **request):
    return await fetch_http(FetchRequest(url=url, **request), settings, backoff=backoff)


async def fails(
    kind: type[FetchError], url: str, backoff: Backoff, *causes: str, **kw
) -> FetchError:
    """Fetch, expect ``kind``; the message names the (redacted) URL and every cause."""
    with pytest.raises(FetchError) as info:
        await fetch(url, backoff, **kw)
    error = info.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert str(error).startswith(f"{redact_url(url)}: "), str(error)
    for cause in causes:
        assert cause in str(error), str(error)
    return error


# --- success paths ---------------------------------------------------------------------------


async def test_fetch_ok_reports_progress_and_checks_sha(modserver: ModServer, fast_backoff):
    data = padded_module(200_000)
    url = modserver.serve("/m.wasm", data)
    seen: list[tuple[int, int | None]] = []
    module = await fetch_http(
        FetchRequest(url=url, sha256="SHA256:" + sha256_hex(data).upper()),
        SETTINGS,
        lambda got, total: seen.append((got, total)),
        backoff=fast_backoff,
    )
    assert module.data == data
    assert module.sha256 == module.checksum == sha256_hex(data)
    assert seen[-1] == (len(data), len(data))
    assert [got for got, _ in seen] == sorted(got for got, _ in seen)
    assert modserver.count("/m.wasm") == 1
    assert modserver.requests[0][2]["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "wrap",
    [
        gzip_bytes,
        lambda d: tar_bytes(("plugin.wasm", d)),
        lambda d: tar_bytes(("./plugin.wasm", d), gz=True),
        lambda d: gzip_bytes(tar_bytes(tar_entry("dir", tarfile.DIRTYPE), ("dir/plugin.wasm", d))),
    ],
    ids=["gzip", "tar", "tar.gz", "gzip-tar-with-dir"],
)
async def test_boxed_payloads_are_unboxed_and_sha_is_of_unboxed(modserver, fast_backoff, wrap):
    url = modserver.serve("/boxed", wrap(WASM))
    module = await fetch(url, fast_backoff, sha256=sha256_hex(WASM))
    assert module.data == WASM


async def test_content_encoding_gzip_is_unboxed_not_trusted(modserver, fast_backoff):
    url = modserver.serve("/ce", gzip_bytes(WASM), headers={"Content-Encoding": "gzip"})
    assert (await fetch(url, fast_backoff)).data == WASM


async def test_503_burst_then_ok_is_retried(modserver, fast_backoff):
    url = modserver.fail("/flaky", 503, times=2, then=WASM)
    assert (await fetch(url, fast_backoff)).data == WASM
    assert modserver.count("/flaky") == 3


async def test_redirect_chain_to_other_path_and_host(modserver, fast_backoff):
    modserver.serve("/final.wasm", WASM)
    modserver.redirect("/b", modserver.url("/final.wasm", host="localhost"), status=307)
    url = modserver.redirect("/a", "/b", status=301)
    assert (await fetch(url, fast_backoff)).data == WASM
    assert [modserver.count(p) for p in ("/a", "/b", "/final.wasm")] == [1, 1, 1]


async def test_https_insecure_host_allows_self_signed(tls_modserver, fast_backoff):
    url = tls_modserver.serve("/m.wasm", WASM)
    settings = FetchSettings(insecure_registries=frozenset({f"127.0.0.1:{tls_modserver.port}"}))
    assert (await fetch(url, fast_backoff, settings)).data == WASM


async def test_https_verified_against_trusted_cert(tls_modserver, fast_backoff, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_modserver.tls.cert))
    url = tls_modserver.serve("/m.wasm", WASM)
    assert (await fetch(tls_modserver.url("/m.wasm", host="localhost"), fast_backoff)).data == WASM
    assert (await fetch(url, fast_backoff)).data == WASM


# --- failures ----------------------------------------------------------------------------------


async def test_unsupported_scheme(fast_backoff):
    await fails(UnsupportedScheme, "ftp://example.com/m.wasm", fast_backoff, "scheme 'ftp'")


@pytest.mark.parametrize("url", ["http://", "http:///m.wasm", "http://[::1/m.wasm"])
async def test_invalid_urls(fast_backoff, url):
    await fails(DownloadFailure, url, fast_backoff, "invalid URL")


async def test_dns_failure(fast_backoff):
    await fails(
        DownloadFailure,
        "http://no-such-host.invalid/m.wasm",
        fast_backoff,
        "cannot resolve host no-such-host.invalid",
        "after 3 attempts",
    )


async def test_connection_refused(fast_backoff):
    with refused_port() as port:  # no other test can take the port meanwhile
        url = f"http://127.0.0.1:{port}/m.wasm"
        await fails(DownloadFailure, url, fast_backoff, "connection refused", "after 3 attempts")


async def test_404_is_not_retried(modserver, fast_backoff):
    await fails(DownloadFailure, modserver.url("/missing.wasm"), fast_backoff, "HTTP status 404")
    assert modserver.count("/missing.wasm") == 1


async def test_500_until_retries_run_out(modserver, fast_backoff):
    url = modserver.fail("/down", 500)
    await fails(DownloadFailure, url, fast_backoff, "HTTP status 500", "after 3 attempts")
    assert modserver.count("/down") == SETTINGS.http_max_retries


@pytest.mark.parametrize("status", [501, 505, 511])
async def test_some_5xx_are_not_retried(modserver, fast_backoff, status):
    url = modserver.fail("/nope", status, then=WASM)
    await fails(DownloadFailure, url, fast_backoff, f"HTTP status {status}")
    assert modserver.count("/nope") == 1


async def test_backoff_never_sleeps_past_the_deadline(modserver):
    url = modserver.fail("/down", 500)
    start = time.monotonic()
    await fails(
        DownloadFailure, url, Backoff(initial=30), "deadline of 5s", "HTTP status 500", timeout=5.0
    )
    assert time.monotonic() - start < 4  # gave up at once, did not sleep until the deadline
    assert modserver.count("/down") == 1


async def test_slow_body_hits_the_deadline(modserver, fast_backoff):
    url = modserver.slow("/drip", padded_module(20_000), chunk=100, delay=0.25)  # 50 s
    start = time.monotonic()
    await fails(DownloadFailure, url, fast_backoff, "fetch deadline of 0.5s exceeded", timeout=0.5)
    assert time.monotonic() - start < 5  # the deadline ended it, long before the body


async def test_stalled_body_times_out_per_request_and_is_retried(modserver, fast_backoff):
    url = modserver.stall("/stall", WASM, after=4)
    settings = FetchSettings(http_max_retries=2, http_request_timeout=1.0)
    await fails(
        DownloadFailure, url, fast_backoff, "timed out", "after 2 attempts", settings=settings
    )
    assert modserver.count("/stall") == 2


async def test_connection_reset_mid_body(modserver, fast_backoff):
    url = modserver.reset("/cut", padded_module(50_000), after=1000)
    error = await fails(DownloadFailure, url, fast_backoff, "after 3 attempts")
    assert "connection" in error.cause
    assert modserver.count("/cut") == 3


async def test_content_length_longer_than_body(modserver, fast_backoff):
    url = modserver.serve("/lie", WASM, content_length=len(WASM) + 100)
    await fails(DownloadFailure, url, fast_backoff, "closed by server mid-response")


async def test_body_over_cap_while_streaming(modserver, fast_backoff):
    url = modserver.serve("/big", padded_module(300_000), content_length=-1)
    settings = FetchSettings(max_binary_size=100_000)
    await fails(
        DownloadFailure, url, fast_backoff, "exceeds 100000 bytes", "streaming", settings=settings
    )


async def test_body_over_cap_by_content_length(modserver, fast_backoff):
    url = modserver.slow("/big", padded_module(300_000), chunk=1000, delay=5.0)
    settings = FetchSettings(max_binary_size=100_000)
    start = time.monotonic()
    await fails(
        DownloadFailure,
        url,
        fast_backoff,
        "exceeds 100000 bytes",
        "Content-Length",
        settings=settings,
    )
    assert time.monotonic() - start < 4  # refused before the body's second chunk (at 5 s)


async def test_wrong_sha256(modserver, fast_backoff):
    url = modserver.serve("/m.wasm", WASM)
    wrong = "0" * 64
    await fails(ChecksumMismatch, url, fast_backoff, wrong, sha256_hex(WASM), sha256=wrong)


async def test_wrong_content_is_not_wasm(modserver, fast_backoff):
    url = modserver.serve("/page", b"<html>hello, this is not wasm</html>")
    await fails(InvalidModule, url, fast_backoff, "not a Wasm binary")


async def test_gzip_bomb(modserver, fast_backoff):
    bomb = gzip_bytes(WASM + bytes(20_000_000))
    assert len(bomb) < 100_000
    url = modserver.serve("/bomb.gz", bomb)
    settings = FetchSettings(max_binary_size=1_000_000)
    await fails(
        UnboxError, url, fast_backoff, "decompressed size exceeds 1000000 bytes", settings=settings
    )


@pytest.mark.parametrize(
    ("entry", "cause"),
    [
        (("../plugin.wasm", WASM), "'../plugin.wasm' has a '..' path component"),
        (("/etc/plugin.wasm", WASM), "'/etc/plugin.wasm' has an absolute path"),
        (tar_entry("plugin.wasm", tarfile.SYMTYPE, "/etc/passwd"), "'plugin.wasm' is a link"),
        (tar_entry("plugin.wasm", tarfile.LNKTYPE, "other"), "'plugin.wasm' is a link"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
async def test_tar_path_tricks(modserver, fast_backoff, entry, cause):
    url = modserver.serve("/evil.tar.gz", tar_bytes(entry, gz=True))
    await fails(UnboxError, url, fast_backoff, cause)


async def test_redirect_loop(modserver, fast_backoff):
    modserver.redirect("/b", "/a")
    url = modserver.redirect("/a", "/b")
    await fails(DownloadFailure, url, fast_backoff, "redirect loop")
    assert modserver.count("/a") == 1


async def test_too_many_redirects(modserver, fast_backoff):
    for hop in range(5):
        modserver.redirect(f"/r{hop}", f"/r{hop + 1}")
    modserver.serve("/r5", WASM)
    settings = FetchSettings(max_redirects=3)
    await fails(
        DownloadFailure, modserver.url("/r0"), fast_backoff, "too many redirects", settings=settings
    )
    assert modserver.count("/r4") == 0


async def test_redirect_to_other_scheme_is_refused(modserver, fast_backoff):
    url = modserver.redirect("/r", "file:///etc/passwd")
    await fails(DownloadFailure, url, fast_backoff, "redirect to unsupported scheme 'file'")


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/"])
async def test_redirect_to_metadata_address_is_blocked(modserver, fast_backoff, target):
    url = modserver.redirect("/r", target)
    error = await fails(BlockedAddress, url, fast_backoff, "blocked", "redirected to")
    assert error.result == "download_failure"


async def test_redirect_to_configured_blocked_host(modserver, fast_backoff):
    modserver.serve("/m.wasm", WASM)
    url = modserver.redirect("/r", modserver.url("/m.wasm", host="localhost"))
    blocked = (ipaddress.ip_network("127.0.0.2/32"),)  # localhost -> 127.0.0.1 is still allowed
    assert (await fetch(url, fast_backoff, FetchSettings(blocked_networks=blocked))).data == WASM
    settings = FetchSettings(blocked_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    await fails(
        BlockedAddress, modserver.url("/m.wasm"), fast_backoff, "127.0.0.1", settings=settings
    )
    assert modserver.count("/m.wasm") == 1


async def test_blocked_first_hop_never_connects(modserver, fast_backoff):
    url = modserver.serve("/m.wasm", WASM)
    settings = FetchSettings(blocked_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    for target in (url, modserver.url("/m.wasm", host="localhost")):
        await fails(BlockedAddress, target, fast_backoff, "blocked", settings=settings)
    assert modserver.count("/m.wasm") == 0


async def test_self_signed_tls_refused_unless_insecure_host(tls_modserver, fast_backoff):
    url = tls_modserver.serve("/m.wasm", WASM)
    other = FetchSettings(insecure_registries=frozenset({"registry.example"}))
    await fails(DownloadFailure, url, fast_backoff, "certificate verify failed", settings=other)


async def test_credentials_never_in_error_messages(modserver, fast_backoff):
    secret = "s3cr3t-pass"
    cases = [
        modserver.url("/missing", userinfo=f"user:{secret}") + f"?token={secret}",
        f"http://user:{secret}@no-such-host.invalid/m.wasm?sig={secret}",
        modserver.url("/bad", userinfo=f"u:{secret}"),
    ]
    modserver.serve("/bad", b"not wasm at all")
    for url in cases:
        with pytest.raises(FetchError) as info:
            await fetch(url, fast_backoff)
        text = f"{info.value} {info.value.url} {info.value.cause!r}"
        assert secret not in text
        assert "/missing" in text or "no-such-host.invalid" in text or "/bad" in text


# --- retry rules (unit) ------------------------------------------------------------------------


def test_backoff_shape():
    mid = Backoff(rand=lambda: 0.5)
    delays = mid.delays()
    assert [round(next(delays), 4) for _ in range(4)] == [0.5, 0.75, 1.125, 1.6875]
    low, high = Backoff(rand=lambda: 0.0).delays(), Backoff(rand=lambda: 1.0).delays()
    assert (next(low), next(high)) == (0.25, 0.75)
    capped = Backoff(rand=lambda: 0.5).delays()
    assert max(next(capped) for _ in range(30)) == 60.0


async def test_with_retries_counts_attempts_and_stops_on_final_errors():
    calls: list[int] = []

    async def flaky(n: int) -> int:
        calls.append(n)
        if n < 3:
            raise Retryable(RuntimeError(f"try {n}"))
        return n

    fast = Backoff(initial=0.001)
    assert await with_retries(flaky, max_attempts=5, deadline=Deadline(5), backoff=fast) == 3
    calls.clear()
    with pytest.raises(RetriesExhausted) as info:
        await with_retries(flaky, max_attempts=2, deadline=Deadline(5), backoff=fast)
    assert (info.value.attempts, str(info.value.last), calls) == (2, "try 2", [1, 2])

    async def final(n: int) -> int:
        raise ValueError("final")

    with pytest.raises(ValueError):
        await with_retries(final, max_attempts=5, deadline=Deadline(5), backoff=fast)


def test_every_result_label_is_one_of_istios():
    labels = {
        DownloadFailure.result,
        BlockedAddress.result,
        ChecksumMismatch.result,
        InvalidModule.result,
        UnboxError.result,
    }
    assert labels <= {"download_failure", "checksum_mismatched", "fetch_failure"}


async def test_concurrent_fetches_share_nothing(modserver, fast_backoff):
    import asyncio

    urls = [modserver.serve(f"/m{i}.wasm", padded_module(10_000, seed=i)) for i in range(8)]
    results = await asyncio.gather(*(fetch(u, fast_backoff) for u in urls))
    assert [r.data for r in results] == [padded_module(10_000, seed=i) for i in range(8)]


async def test_route_fields_cover_custom_headers(modserver, fast_backoff):
    url = modserver.route("/h", Route(data=WASM, headers={"Content-Type": "application/wasm"}))
    assert (await fetch(url, fast_backoff)).data == WASM
