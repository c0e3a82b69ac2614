"""The proxy's converter: plan, fetch through a real cache and module server, Forward or Nack."""

from __future__ import annotations

from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.xds_config import wasm_extension
from tests.support.istiod import sotw_response
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from tests.support.wasm import sha256_hex
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.xds.converter import ModuleStore, WasmConverter
from wasm_agent.xds.decide import Forward, Nack
from wasm_agent.xds.types import ECDS_TYPE, Flavour

MODULE = header_plugin("converter")


async def test_forward_then_hold_and_nack_what_cannot_be_used(tmp_path: Path) -> None:
    with ModServer() as mods:
        good = mods.serve("/good.wasm", MODULE)
        cache = ModuleCache(CacheSettings(tmp_path / "cache"), FetchSettings())
        store: ModuleStore = cache  # the agent's cache is a ModuleStore
        converter = WasmConverter(store, "nack")
        try:
            raw = sotw_response(
                ECDS_TYPE, [wasm_extension(good, sha256_hex(MODULE))], "v1", "n1"
            ).SerializeToString()
            action = await converter.convert(raw, Flavour.SOTW, "")
            assert isinstance(action, Forward) and action.changed
            assert [name for name, _ in action.holds] == ["my-wasm"]
            assert [entry.in_use for entry in cache.entries()] == [False]
            converter.forwarded(action)  # the proxy wrote action.data to Envoy
            assert [entry.in_use for entry in cache.entries()] == [True]

            missing = mods.url("/missing.wasm")
            raw = sotw_response(
                ECDS_TYPE, [wasm_extension(missing, "0" * 64)], "v2", "n2"
            ).SerializeToString()
            refused = await converter.convert(raw, Flavour.SOTW, "v1")
            assert isinstance(refused, Nack) and refused.nonce == "n2"
            nack = discovery_pb2.DiscoveryRequest.FromString(refused.request)
            assert nack.version_info == "v1" and "404" in nack.error_detail.message

            garbage = discovery_pb2.DiscoveryResponse(type_url=ECDS_TYPE, nonce="n3")
            data = garbage.SerializeToString() + b"\x12\x03\x0a\x05a"  # a resource cut short
            unparsed = await converter.convert(data, Flavour.SOTW, "v1")
            assert isinstance(unparsed, Nack) and unparsed.nonce == "n3"
            assert "does not parse" in unparsed.message
        finally:
            cache.close()
