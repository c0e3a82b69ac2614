"""Buffer host functions: which buffer a context sees, and get/set/status semantics.

Availability follows Envoy's ``Context::getBuffer``: body and data buffers always answer (empty
outside their callbacks), the VM configuration always, the plugin configuration only while
``proxy_on_configure`` runs, the http-call response body only while its callback runs (else
NOT_FOUND). ``get`` clamps the length to the buffer; an empty result (zero length, or ``start``
past the end) still writes pointer 0 and size 0, which is what Envoy 1.40 does (an
AssemblyScript SDK bug that trusts stale return slots traps in Envoy exactly because of it).
"""

from __future__ import annotations

from wasm_agent.host.abi import BufferType, Status
from wasm_agent.host.context import EMPTY, Buffer
from wasm_agent.host.hostfn import Current, VmLike, host

_M = 0xFFFFFFFF
_MAX_BUFFER = max(BufferType)


def lookup_buffer(vm: VmLike, btype: int) -> Buffer | None:
    """The buffer ``btype`` as the current context sees it; None means NOT_FOUND."""
    ctx = vm.context()
    root = vm.contexts.get(ctx.root_id, vm.root) if ctx.root_id else ctx
    if btype <= BufferType.UPSTREAM_DATA:
        return ctx.buffers.get(btype, EMPTY)
    if btype == BufferType.VM_CONFIGURATION:
        return Buffer(vm.options.vm_config)
    if btype == BufferType.PLUGIN_CONFIGURATION:
        config = root.plugin_config
        return None if config is None else Buffer(config)
    if btype == BufferType.HTTP_CALL_RESPONSE_BODY:
        response = root.http_call_response
        return None if response is None else Buffer(response[1])
    if btype == BufferType.GRPC_RECEIVE_BUFFER:
        return Buffer(root.grpc_buffer or b"")
    return Buffer(ctx.call_data)


@host("proxy_get_buffer_bytes", "iiiii")
def get_buffer_bytes(btype: int, start: int, length: int, ptr_p: int, size_p: int) -> int:
    btype, start, length = btype & _M, start & _M, length & _M
    if btype > _MAX_BUFFER:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    buffer = lookup_buffer(vm, btype)
    if buffer is None:
        return Status.NOT_FOUND
    size = buffer.size()
    data = bytes(buffer.data[start : start + length]) if start < size else b""
    return Status.OK if vm.memory.copy_out(data, ptr_p, size_p) else Status.INVALID_MEMORY_ACCESS


@host("proxy_get_buffer_status", "iii")
def get_buffer_status(btype: int, length_p: int, flags_p: int) -> int:
    btype = btype & _M
    if btype > _MAX_BUFFER:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    buffer = lookup_buffer(vm, btype)
    if buffer is None:
        return Status.NOT_FOUND
    if not vm.memory.set_u32(length_p, buffer.size()) or not vm.memory.set_u32(flags_p, 0):
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK


@host("proxy_set_buffer_bytes", "iiiii")
def set_buffer_bytes(btype: int, start: int, length: int, data_ptr: int, data_size: int) -> int:
    btype = btype & _M
    if btype > _MAX_BUFFER:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    buffer = lookup_buffer(vm, btype)
    if buffer is None:
        return Status.NOT_FOUND
    data = vm.memory.read(data_ptr, data_size)
    if data is None:
        return Status.INVALID_MEMORY_ACCESS
    return buffer.copy_from(start & _M, length & _M, data)
