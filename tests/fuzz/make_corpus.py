"""Write the seed corpus of every fuzz target: small valid inputs the fuzzers mutate.

Usage: ``python tests/fuzz/make_corpus.py [--out DIR]`` (default ``tests/fuzz/corpus``); one
directory per target, one file per seed, named after what it holds. The committed corpus was
made by this script; ``run.py`` runs it when a target's directory is missing.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import struct
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = Path(__file__).resolve().parent / "corpus"
Seeds = dict[str, bytes]


def wire_seeds() -> Seeds:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE

    sotw = discovery_pb2.DiscoveryResponse(version_info="1", type_url=ECDS_TYPE, nonce="n1")
    sotw.resources.add(type_url=CLUSTER_TYPE, value=b"\x0a\x03abc")
    delta = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="s", type_url=CLUSTER_TYPE, nonce="d2"
    )
    delta.resources.add(name="r", version="v").resource.value = b"\x08\x01"
    delta.removed_resources.append("gone")
    ack = discovery_pb2.DiscoveryRequest(version_info="1", type_url=ECDS_TYPE, response_nonce="n1")
    ack.resource_names.append("ext")
    nack = discovery_pb2.DiscoveryRequest(type_url=ECDS_TYPE, response_nonce="n1")
    nack.error_detail.code = 13
    nack.error_detail.message = "bad"
    dnack = discovery_pb2.DeltaDiscoveryRequest(type_url=ECDS_TYPE, response_nonce="d2")
    dnack.error_detail.code = 13
    dreq = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE)
    dreq.resource_names_subscribe.append("a")
    # every wire type at the top level, a group holding a field 4, then the real field 4
    kinds = b"\x08\x96\x01\x11" + b"\0" * 8 + b"\x1d" + b"\0" * 4 + b"\x4b\x22\x01x\x4c\x22\x01t"
    return {
        "sotw_response": sotw.SerializeToString(),
        "delta_response": delta.SerializeToString(),
        "sotw_ack": ack.SerializeToString(),
        "sotw_nack": nack.SerializeToString(),
        "delta_nack": dnack.SerializeToString(),
        "delta_request": dreq.SerializeToString(),
        "wire_types_and_group": kinds,
        "empty": b"",
    }


def ecds_seeds() -> Seeds:
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.wasm.v3 import wasm_pb2

    from tests.xds.ecds_builders import (
        SECRET,
        delta_response,
        extension,
        sotw_response,
        typed_struct,
        wasm_filter,
    )

    env = {
        "ISTIO_META_WASM_IMAGE_PULL_SECRET": SECRET,
        "ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent",
        "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "rv-9",
        "KEEP": "1",
    }
    mixed = [
        extension("http", wasm_filter(env=env)),
        extension("net", wasm_filter(network=True, failure_policy=wasm_pb2.FAIL_OPEN)),
        extension("ts", typed_struct(wasm_filter(url="https://mods.test/a.wasm"), "xds")),
        extension("local", wasm_filter(local="/etc/a.wasm")),
        extension("router", router_pb2.Router()),
    ]
    single = {
        "sha": [extension("sha", wasm_filter(url="http://m.test/a.wasm", sha256="ab" * 32))],
        "fail_open": [extension("open", wasm_filter(fail_open=True))],
        "udpa_struct": [extension("u", typed_struct(wasm_filter(env=env), "udpa"))],
        "bad_scheme": [extension("ftp", wasm_filter(url="ftp://m.test/a.wasm"))],
        "no_uri": [extension("nouri", wasm_filter(url=None))],
        "empty_secret": [
            extension("es", wasm_filter(env={"ISTIO_META_WASM_IMAGE_PULL_SECRET": ""}))
        ],
    }
    from google.protobuf import any_pb2
    from udpa.type.v1 import typed_struct_pb2

    from wasm_agent.xds.types import HTTP_WASM_TYPE

    null_any = typed_struct_pb2.TypedStruct(type_url=HTTP_WASM_TYPE)
    null_any.value.update({"config": {"configuration": {"@type": None}}})
    packed_null_any = any_pb2.Any()
    packed_null_any.Pack(null_any)
    single["null_any_type"] = [extension("na", packed_null_any)]  # a finding (fixed)
    out: Seeds = {}
    for prefix in range(8):  # bit 0 flavour, bits 1-2 outcome pattern
        sotw = prefix & 1 == 0
        if sotw:
            body = sotw_response(mixed).SerializeToString()
        else:
            named = [(f"r{i}", r) for i, r in enumerate(mixed)] + [("empty", None)]
            body = delta_response(named, ["removed"]).SerializeToString()
        out[f"mixed_{'sotw' if sotw else 'delta'}_outcome{prefix >> 1}"] = bytes([prefix]) + body
    for name, resources in single.items():
        out[f"{name}_sotw"] = b"\x00" + sotw_response(resources).SerializeToString()
        delta = delta_response([(f"{name}-0", resources[0])]).SerializeToString()
        out[f"{name}_delta_failed"] = b"\x03" + delta
    return out


def _descriptor(media_type: str, digit: str = "a", size: int = 1024, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + digit * 64, "size": size, **extra}


def oci_manifest_seeds() -> Seeds:
    from wasm_agent.fetch import oci_layers as ol

    config = _descriptor(ol.WASM_CONFIG, "c", 2)
    docs = {
        "wasm_artifact": {
            "schemaVersion": 2,
            "mediaType": ol.OCI_MANIFEST,
            "config": config,
            "layers": [_descriptor(ol.WASM_LAYERS[0], "b", 5000)],
        },
        "wasm_artifact_no_media_type": {
            "schemaVersion": 2,
            "config": config,
            "layers": [_descriptor(ol.WASM_LAYERS[1])],
        },
        "oci_image": {
            "schemaVersion": 2,
            "mediaType": ol.OCI_MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", "c"),
            "layers": [_descriptor(ol.OCI_LAYER, "d"), _descriptor(ol.OCI_LAYER, "e")],
        },
        "docker_image": {
            "schemaVersion": 2,
            "mediaType": ol.DOCKER_MANIFEST,
            "config": _descriptor("application/vnd.docker.container.image.v1+json", "c"),
            "layers": [_descriptor(ol.DOCKER_LAYER, "f")],
        },
        "oci_index_amd64": {
            "schemaVersion": 2,
            "mediaType": ol.OCI_INDEX,
            "manifests": [
                _descriptor(
                    ol.OCI_MANIFEST, "1", platform={"os": "linux", "architecture": "arm64"}
                ),
                _descriptor(
                    ol.OCI_MANIFEST, "2", platform={"os": "linux", "architecture": "amd64"}
                ),
            ],
        },
        "oci_index_wasm": {
            "schemaVersion": 2,
            "manifests": [
                _descriptor(
                    ol.OCI_MANIFEST, "3", platform={"os": "wasip1", "architecture": "wasm"}
                ),
                _descriptor("application/vnd.in-toto+json", "4"),
            ],
        },
        "docker_list": {
            "schemaVersion": 2,
            "mediaType": ol.DOCKER_LIST,
            "manifests": [_descriptor(ol.DOCKER_MANIFEST, "5")],
        },
        "no_layers": {"schemaVersion": 2, "mediaType": ol.OCI_MANIFEST, "layers": []},
        "schema1": {"schemaVersion": 1, "fsLayers": [{"blobSum": "sha256:" + "0" * 64}]},
    }
    out = {name: b"\x00" + json.dumps(doc, indent=1).encode() for name, doc in docs.items()}
    out["oci_image_content_type"] = (
        b"\x01" + json.dumps(docs["wasm_artifact_no_media_type"]).encode()
    )
    out["deep_nesting"] = b"\x00" + b"[" * 3000  # json's RecursionError (a finding, fixed)
    out["index_content_type"] = b"\x03" + json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    return out


def dockerconfig_seeds() -> Seeds:
    auth = "dXNlcjpwYXNz"  # user:pass
    docs = {
        "auth": {"auths": {"registry.example": {"auth": auth}}},
        "user_password": {
            "auths": {"https://127.0.0.1:5000/v1/": {"username": "u", "password": "p"}}
        },
        "identity_token": {"auths": {"ghcr.io": {"auth": auth, "identitytoken": "refresh"}}},
        "registry_token": {"auths": {"docker.io": {"registrytoken": "bearer"}}},
        "docker_hub_url": {"auths": {"https://index.docker.io/v1/": {"auth": auth}}},
        "legacy_dockercfg": {"registry.example": {"auth": auth, "email": "a@b.c"}},
        "helpers_only": {"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud"}},
    }
    out = {name: json.dumps(doc).encode() for name, doc in docs.items()}
    out["null"] = b"null"
    out["deep_nesting"] = b'{"auths": ' + b"[" * 3000  # RecursionError (a finding, fixed)
    out["auth_not_ascii"] = '{"auths": {"h": {"auth": "\u9594z"}}}'.encode()  # a finding (fixed)
    out["bad_ipv6_key"] = b'{"auths": {"https://[docker.io/v1/": {"auth": "dXNlcjpwYXNz"}}}'
    return out


def _tar(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A ustar archive; each member is (name, content or None for a directory, type flag)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "../../etc/passwd"
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def unbox_seeds() -> Seeds:
    from tests.support.wasm import minimal_module

    wasm = minimal_module()
    reg, dirt, sym = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE
    plugin_layer = _tar([("plugin.wasm", wasm, reg)])
    nested = wasm
    for _ in range(4):
        nested = _gz(_tar([("m.wasm", nested, reg)]))
    bomb = gzip.compress(b"\0" * (4 << 20), compresslevel=9, mtime=0)
    return {
        # byte 0 even: unbox (HTTP bodies)
        "raw_wasm": b"\x00" + wasm,
        "gzip_wasm": b"\x00" + _gz(wasm),
        "tar_wasm": b"\x00" + _tar([("dir/", None, dirt), ("dir/m.wasm", wasm, reg)]),
        "gzip_tar_wasm": b"\x00" + _gz(_tar([("m.wasm", wasm, reg)])),
        "two_gzip_members": b"\x00" + _gz(wasm[:4]) + _gz(wasm[4:]),
        "nested_too_deep": b"\x00" + nested,
        "tar_dotdot": b"\x00" + _tar([("../m.wasm", wasm, reg)]),
        "tar_symlink": b"\x00" + _tar([("m.wasm", b"", sym)]),
        "gzip_bomb": b"\x00" + bomb,
        "not_an_archive": b"\x00hello",
        # byte 0 odd: extract_plugin (OCI/Docker tar.gz layers)
        "layer_plugin": b"\x01" + _gz(plugin_layer),
        "layer_docker_dirs": b"\x01"
        + _gz(_tar([("etc/", None, dirt), ("etc/x", b"x", reg), ("plugin.wasm", wasm, reg)])),
        "layer_without_plugin": b"\x01" + _gz(_tar([("other.wasm", wasm, reg)])),
        "layer_plugin_symlink": b"\x01" + _gz(_tar([("plugin.wasm", b"", sym)])),
        "layer_bomb": b"\x01" + bomb,
    }


def host_memory_seeds() -> Seeds:
    from tests.fuzz.targets.host_memory import FUNCTIONS
    from wasm_agent.host.maps import serialize_pairs

    index = {name: i for i, (name, *_rest) in enumerate(FUNCTIONS)}
    pairs = serialize_pairs([(b"x-fuzz", b"1"), (b"x-b", b"two")])
    iovec = struct.pack("<II", 1032, 5) + b"hello"  # at 1024: one iovec pointing at 1032

    def seed(name: str, args: list[int], payload: bytes = b"", phase: int = 0) -> bytes:
        spec = bytes([index[name], phase, 0, 0]) + struct.pack("<12I", *(args + [0] * 12)[:12])
        return spec + struct.pack("<I", 0) + payload

    seeds: Seeds = {
        "log": seed("proxy_log", [2, 1024, 5], b"hello"),
        "get_header": seed("proxy_get_header_map_value", [0, 1024, 3, 32, 36], b"x-a"),
        "get_pairs": seed("proxy_get_header_map_pairs", [0, 32, 36]),
        "set_pairs": seed("proxy_set_header_map_pairs", [2, 1024, len(pairs)], pairs, phase=2),
        "add_header": seed("proxy_add_header_map_value", [0, 1024, 3, 1027, 2], b"x-bhi"),
        "replace_header": seed("proxy_replace_header_map_value", [0, 1024, 3, 1027, 2], b"x-ayo"),
        "remove_header": seed("proxy_remove_header_map_value", [0, 1024, 3], b"x-a"),
        "header_size": seed("proxy_get_header_map_size", [0, 32]),
        "buffer_status": seed("proxy_get_buffer_status", [0, 32, 36], phase=1),
        "get_buffer": seed("proxy_get_buffer_bytes", [0, 0, 100, 32, 36], phase=1),
        "set_buffer": seed("proxy_set_buffer_bytes", [0, 0, 0, 1024, 4], b"body", phase=1),
        "get_property": seed("proxy_get_property", [1024, 12, 32, 36], b"request\0path"),
        "set_property": seed("proxy_set_property", [1024, 3, 1027, 2], b"keyhi"),
        "set_shared": seed("proxy_set_shared_data", [1024, 3, 1027, 2, 0], b"keyhi", phase=3),
        "get_shared": seed("proxy_get_shared_data", [1024, 3, 32, 36, 40], b"key", phase=3),
        "queue": seed("proxy_register_shared_queue", [1024, 1, 32], b"q", phase=3),
        "local_response": seed(
            "proxy_send_local_response", [403, 1024, 2, 1026, 4, 0, 0, 0], b"nobody"
        ),
        "http_call": seed("proxy_http_call", [1024, 8, 0, 0, 0, 0, 0, 0, 1000, 32], b"upstream"),
        "define_metric": seed("proxy_define_metric", [0, 1024, 4, 32], b"hits", phase=3),
        "foreign": seed("proxy_call_foreign_function", [1024, 8, 1032, 4, 32, 36], b"compressdata"),
        "fd_write": seed("wasi_fd_write", [1, 1024, 1, 32], iovec),
        "random_get": seed("wasi_random_get", [1024, 16]),
        "clock": seed("wasi_clock_time_get", [0, 1000, 40], phase=4),
        "grpc_call": seed(
            "proxy_grpc_call", [1024, 4, 1028, 3, 1031, 1, 0, 0, 1032, 2, 1000, 32], b"svc1abcmxy"
        ),
        # findings (fixed): continue from the body callback, gRPC names that are not UTF-8
        "continue_in_body": seed("proxy_continue_stream", [0], phase=1),
        "grpc_not_utf8": seed(
            "proxy_grpc_call",
            [1024, 0, 1024, 4, 1028, 2, 0, 0, 1030, 2, 1000, 32],
            b"sv\xffc\xc3(hi",
        ),
        "bad_allocator": bytes([index["proxy_get_header_map_pairs"], 0, 1, 0])
        + struct.pack("<12I", 0, 32, 36, *([0] * 9))
        + struct.pack("<I", 0xFFFFFFF0),
    }
    return seeds


MAKERS: dict[str, Callable[[], Seeds]] = {
    "wire": wire_seeds,
    "ecds": ecds_seeds,
    "oci_manifest": oci_manifest_seeds,
    "dockerconfig": dockerconfig_seeds,
    "unbox": unbox_seeds,
    "host_memory": host_memory_seeds,
}


def write_corpus(target: str, out: Path = CORPUS) -> Path:
    """Write ``target``'s seeds under ``out/target``; returns that directory."""
    directory = out / target
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in MAKERS[target]().items():
        (directory / name).write_bytes(data)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="default: all")
    parser.add_argument("--out", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(MAKERS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(MAKERS)}")
    for target in args.targets or MAKERS:
        directory = write_corpus(target, args.out)
        print(f"{target}: {len(list(directory.iterdir()))} seeds in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
