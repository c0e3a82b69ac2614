"""Pull-secret parsing (``wasm_agent.fetch.dockerconfig``): the secret comes from an ECDS config
(``ISTIO_META_WASM_IMAGE_PULL_SECRET``), i.e. from the network.

Input: a ``.dockerconfigjson`` / ``config.json`` / ``.dockercfg`` body. Only
:class:`DockerConfigError` may escape; credentials found are strings.
"""

from __future__ import annotations

from wasm_agent.fetch.dockerconfig import DockerConfigError, lookup, parse_docker_config

ALLOWED: tuple[type[BaseException], ...] = (DockerConfigError,)
MAX_LEN = 4096

REGISTRIES = ("registry.example", "docker.io", "index.docker.io", "127.0.0.1:5000")


def fuzz_one(data: bytes) -> None:
    """Parse ``data`` as a docker config and look every registry up in it."""
    found = parse_docker_config(data)
    for host, creds in found.items():
        assert isinstance(host, str)
        assert all(
            isinstance(v, str)
            for v in (creds.username, creds.password, creds.identity_token, creds.registry_token)
        )
    for registry in REGISTRIES:
        lookup(found, registry)
