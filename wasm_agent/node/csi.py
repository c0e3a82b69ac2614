"""The CSI Identity and Node services (gRPC, ``csi.v1``) over the node service."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf import wrappers_pb2

from wasm_agent.node import DRIVER_NAME, csi_pb2, csi_pb2_grpc
from wasm_agent.node.metrics import NODE_PUBLISHES
from wasm_agent.node.service import NodeService, PublishError
from wasm_agent.node.state import PodIdentity

log = logging.getLogger(__name__)

VERSION = "0.1.0"
CTX = "csi.storage.k8s.io/"
POD_NAME, POD_NAMESPACE, POD_UID = CTX + "pod.name", CTX + "pod.namespace", CTX + "pod.uid"
SERVICE_ACCOUNT, EPHEMERAL = CTX + "serviceAccount.name", CTX + "ephemeral"
_MODES = csi_pb2.VolumeCapability.AccessMode


class Identity(csi_pb2_grpc.IdentityServicer):
    """GetPluginInfo (``csi.wasm-agent.io``), no plugin capabilities, Probe."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready

    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=VERSION)

    async def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # Node-only plugin: no CONTROLLER_SERVICE, no topology constraints.
        return csi_pb2.GetPluginCapabilitiesResponse()

    async def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=self.ready()))


class Node(csi_pb2_grpc.NodeServicer):
    """NodePublishVolume / NodeUnpublishVolume for ephemeral inline volumes, info, caps."""

    def __init__(self, service: NodeService) -> None:
        self.service = service

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        try:
            pod = _check_publish(request)
            await self.service.publish(
                request.volume_id, request.target_path, pod, read_only=request.readonly
            )
        except PublishError as error:
            NODE_PUBLISHES.inc(result=error.code.lower())
            log.warning(
                "NodePublishVolume refused",
                extra={"volume_id": request.volume_id, "code": error.code, "error": str(error)},
            )
            await context.abort(getattr(grpc.StatusCode, error.code), str(error))
        NODE_PUBLISHES.inc(result="ok")
        return csi_pb2.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        if not request.target_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target_path is required")
        try:
            await self.service.unpublish(request.volume_id, request.target_path)
        except PublishError as error:
            await context.abort(getattr(grpc.StatusCode, error.code), str(error))
        return csi_pb2.NodeUnpublishVolumeResponse()

    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        # No staging, stats or expansion: publish and unpublish are all kubelet needs here.
        return csi_pb2.NodeGetCapabilitiesResponse()

    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        settings = self.service.settings
        return csi_pb2.NodeGetInfoResponse(
            node_id=settings.node_id, max_volumes_per_node=settings.max_volumes
        )


def _check_publish(request: csi_pb2.NodePublishVolumeRequest) -> PodIdentity:
    """The pod of a valid ephemeral-volume publish request, else :class:`PublishError`."""
    if not request.volume_id:
        raise PublishError("INVALID_ARGUMENT", "volume_id is required")
    if not request.target_path:
        raise PublishError("INVALID_ARGUMENT", "target_path is required")
    if not request.HasField("volume_capability"):
        raise PublishError("INVALID_ARGUMENT", "volume_capability is required")
    capability = request.volume_capability
    if capability.HasField("block"):
        raise PublishError("INVALID_ARGUMENT", "block volumes are not supported (mount only)")
    if capability.access_mode.mode not in (
        _MODES.UNKNOWN,
        _MODES.SINGLE_NODE_WRITER,
        _MODES.SINGLE_NODE_READER_ONLY,
        _MODES.SINGLE_NODE_SINGLE_WRITER,
        _MODES.SINGLE_NODE_MULTI_WRITER,
    ):
        raise PublishError("INVALID_ARGUMENT", "only single-node access modes are supported")
    context = request.volume_context
    if context.get(EPHEMERAL) != "true":
        raise PublishError(
            "INVALID_ARGUMENT",
            f"only CSI ephemeral inline volumes are supported ({EPHEMERAL}=true; "
            "set podInfoOnMount and volumeLifecycleModes: [Ephemeral] on the CSIDriver)",
        )
    if not context.get(POD_UID):
        raise PublishError("INVALID_ARGUMENT", f"volume_context lacks {POD_UID} (podInfoOnMount)")
    return PodIdentity(
        name=context.get(POD_NAME, ""),
        namespace=context.get(POD_NAMESPACE, ""),
        uid=context[POD_UID],
        service_account=context.get(SERVICE_ACCOUNT, ""),
    )


def add_services(server: grpc.aio.Server, service: NodeService, ready: Callable[[], bool]) -> None:
    """Register Identity and Node on ``server``."""
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(ready), server)
    csi_pb2_grpc.add_NodeServicer_to_server(Node(service), server)
