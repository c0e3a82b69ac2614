"""The istiod hop: TLS/mTLS with generated certificates, token, metadata, rotation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from tests.support.istiod import FakeIstiod
from tests.support.tls import TlsFiles, generate, issue_client
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.xds.types import CLUSTER_TYPE
from wasm_agent.xds.upstream import (
    UpstreamError,
    UpstreamSettings,
    filter_downstream_metadata,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return generate(tmp_path / "tls")


@pytest.fixture
def mtls_istiod(tls: TlsFiles) -> Iterator[FakeIstiod]:
    with FakeIstiod(tls, client_auth=True) as server:
        server.set_resources(CLUSTER_TYPE, {}, "v1")
        yield server


def sock() -> Path:
    return Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"


def settings(istiod: FakeIstiod, tls: TlsFiles, **kw) -> UpstreamSettings:
    return UpstreamSettings(
        address=istiod.address,
        ca_file=tls.ca,
        cert_file=kw.pop("cert", tls.client_cert),
        key_file=kw.pop("key", tls.client_key),
        server_name=tls.server_name,
        **kw,
    )


def client_name(stream) -> str:
    return stream.peer_identity[0].decode() if stream.peer_identity else ""


async def test_mtls_token_and_metadata_reach_istiod(
    mtls_istiod: FakeIstiod, tls: TlsFiles, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    path = sock()
    upstream = settings(
        mtls_istiod, tls, token_file=token, headers={"cluster-id": "Kubernetes", "x-team": "a"}
    )
    proxy = await start_proxy(path, upstream)
    envoy_metadata = (
        ("authorization", "Bearer envoy-secret"),
        ("x-custom", "kept"),
        ("x-team", "envoy-value"),
    )
    ads = AdsClient(f"unix:{path}", metadata=envoy_metadata)
    await ads.request(CLUSTER_TYPE, node=True)
    assert (await ads.read()).version_info == "v1"
    stream = mtls_istiod.open_streams()[-1]
    assert stream.metadata["authorization"] == "Bearer first-token"
    assert stream.metadata["cluster-id"] == "Kubernetes" and stream.metadata["x-team"] == "a"
    assert stream.metadata["x-custom"] == "kept"
    assert client_name(stream) == "wasm-agent.test"
    await ads.close()

    # tokens rotate: a new stream reads the file again; a new client cert is picked up
    token.write_text("second-token")
    issue_client(tls, "rotated.test", tls.client_cert, tls.client_key)
    again = AdsClient(f"unix:{path}")
    await again.request(CLUSTER_TYPE, node=True)
    await again.read()
    stream = mtls_istiod.open_streams()[-1]
    assert stream.metadata["authorization"] == "Bearer second-token"
    assert client_name(stream) == "rotated.test"
    await again.close()
    await proxy.stop(grace=1)


@pytest.mark.parametrize("problem", ["no-client-cert", "wrong-ca", "wrong-name"])
async def test_tls_failures_end_the_envoy_stream(
    mtls_istiod: FakeIstiod, tls: TlsFiles, tmp_path: Path, problem: str
) -> None:
    if problem == "no-client-cert":
        upstream = settings(mtls_istiod, tls, cert=None, key=None)
    elif problem == "wrong-ca":
        other = generate(tmp_path / "other", prefix="other-")
        upstream = UpstreamSettings(
            address=mtls_istiod.address,
            ca_file=other.ca,
            cert_file=tls.client_cert,
            key_file=tls.client_key,
            server_name=tls.server_name,
        )
    else:
        upstream = UpstreamSettings(
            address=mtls_istiod.address,
            ca_file=tls.ca,
            cert_file=tls.client_cert,
            key_file=tls.client_key,
            server_name="not-istiod.test",
        )
    path = sock()
    proxy = await start_proxy(path, upstream)
    ads = AdsClient(f"unix:{path}")
    await ads.request(CLUSTER_TYPE, node=True)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.read(timeout=20)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not proxy.ready
    await ads.close()
    await proxy.stop(grace=1)


def test_settings_refuse_insecure_or_incomplete_combinations(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError, match="--tls-ca"):
        UpstreamSettings(address="istiod:15012")
    with pytest.raises(UpstreamError, match="--plaintext excludes"):
        UpstreamSettings(address="istiod:15012", plaintext=True, token_file=tmp_path / "t")
    with pytest.raises(UpstreamError, match="go together"):
        UpstreamSettings(address="istiod:15012", ca_file=tmp_path / "ca", cert_file=tmp_path / "c")


def test_metadata_filters() -> None:  # XDS_HEADER_*: tests/core/test_config.py
    kept = filter_downstream_metadata(
        [
            ("authorization", "x"),
            ("x-envoy-peer", "p"),
            ("grpc-accept-encoding", "gzip"),
            ("user-agent", "envoy"),
            ("cookie", "c"),
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Custom", "v"),
        ]
    )
    assert kept == [("x-custom", "v")]


def test_generated_server_cert_names_the_override(tls: TlsFiles) -> None:
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert tls.server_name in names.get_values_for_type(x509.DNSName)


async def test_unreadable_credentials_end_the_stream_with_a_clear_error(
    mtls_istiod: FakeIstiod, tls: TlsFiles, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    path = sock()
    proxy = await start_proxy(path, settings(mtls_istiod, tls, token_file=token))
    token.unlink()  # e.g. a projected token volume gone
    ads = AdsClient(f"unix:{path}")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        # the proxy ends the stream as it opens: the status may come back on the write already
        await ads.request(CLUSTER_TYPE, node=True)
        await ads.read()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot read token file" in str(failure.value.details())
    await ads.close()
    await proxy.stop(grace=1)
