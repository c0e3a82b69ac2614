"""Stream control host calls: local responses, continue and close (v0.2) / continue (v0.1)."""

from __future__ import annotations

from wasm_agent.host.abi import Status, StreamType
from wasm_agent.host.hostfn import Current, host
from wasm_agent.host.http import LocalResponse
from wasm_agent.host.maps import deserialize_pairs

_M = 0xFFFFFFFF


@host("proxy_send_local_response", "iiiiiiii")
def send_local_response(
    code: int, det_ptr: int, det_size: int, body_ptr: int, body_size: int,
    hdr_ptr: int, hdr_size: int, grpc_status: int,
) -> int:  # fmt: skip
    vm = Current.vm
    mem = vm.memory
    details, body = mem.read(det_ptr, det_size), mem.read(body_ptr, body_size)
    pairs = mem.read(hdr_ptr, hdr_size)
    if details is None or body is None or pairs is None:
        return Status.INVALID_MEMORY_ACCESS
    reply = LocalResponse(
        code & _M, body, deserialize_pairs(pairs), details.decode("latin-1"), grpc_status
    )
    stream = vm.context().stream
    vm.stop_next = True
    if stream is not None and hasattr(stream, "send_local_response"):
        stream.send_local_response(reply)
    return Status.OK


def _stream():
    return Current.vm.context().stream


@host("proxy_continue_stream", "i")
def continue_stream(stream_type: int) -> int:
    stream_type &= _M
    if stream_type > StreamType.UPSTREAM:
        return Status.BAD_ARGUMENT
    if stream_type == StreamType.UPSTREAM:
        return Status.UNIMPLEMENTED
    stream = _stream()
    if stream is None:
        return Status.OK
    return stream.continue_stream(stream_type)


@host("proxy_close_stream", "i")
def close_stream(stream_type: int) -> int:
    stream_type &= _M
    if stream_type > StreamType.UPSTREAM:
        return Status.BAD_ARGUMENT
    stream = _stream()
    if stream is None:
        return Status.OK
    return stream.close_stream(stream_type)


@host("proxy_continue_request", "")
def continue_request() -> int:
    stream = _stream()
    return Status.OK if stream is None else stream.continue_stream(StreamType.REQUEST)


@host("proxy_continue_response", "")
def continue_response() -> int:
    stream = _stream()
    return Status.OK if stream is None else stream.continue_stream(StreamType.RESPONSE)
