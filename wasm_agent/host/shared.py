"""Shared data (with CAS) and shared queues, per vm_id, like cpp-host ``shared_data.cc``.

A ``SharedState`` stands for one Envoy process: VMs given the same object share data and queues
by ``vm_id``; the harness gives each started VM its own unless told otherwise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from wasm_agent.host.abi import Status
from wasm_agent.host.hostfn import Current, host


@dataclass
class _Queue:
    vm_id: str
    name: str
    vm: Any  # the registering PluginVM
    context_id: int
    items: deque[bytes] = field(default_factory=deque)


class SharedState:
    """Process-wide shared data and queues."""

    def __init__(self) -> None:
        self.data: dict[str, dict[bytes, tuple[bytes, int]]] = {}
        self._cas = 0
        self.queues: dict[int, _Queue] = {}
        self._queue_tokens: dict[tuple[str, str], int] = {}
        self._next_token = 1
        self.metrics: dict[Any, Any] = {}  # (type, name) -> Metric: Envoy's stats store

    def get(self, vm_id: str, key: bytes) -> tuple[bytes, int] | None:
        return self.data.get(vm_id, {}).get(key)

    def set(self, vm_id: str, key: bytes, value: bytes, cas: int) -> Status:
        table = self.data.setdefault(vm_id, {})
        current = table.get(key)
        if current is not None and cas and cas != current[1]:
            return Status.CAS_MISMATCH
        self._cas += 1
        table[key] = (value, self._cas)
        return Status.OK

    def register_queue(self, vm_id: str, name: str, vm: Any, context_id: int) -> int:
        key = (vm_id, name)
        token = self._queue_tokens.get(key)
        if token is None:
            token = self._queue_tokens[key] = self._next_token
            self._next_token += 1
            self.queues[token] = _Queue(vm_id, name, vm, context_id)
        else:
            self.queues[token].vm = vm
            self.queues[token].context_id = context_id
        return token

    def resolve_queue(self, vm_id: str, name: str) -> int | None:
        return self._queue_tokens.get((vm_id, name))

    def enqueue(self, token: int, value: bytes) -> Status:
        queue = self.queues.get(token)
        if queue is None:
            return Status.NOT_FOUND
        queue.items.append(value)
        owner = queue.vm
        notify = lambda: owner.call_cb("proxy_on_queue_ready", owner.root, owner.root.id, token)  # noqa: E731
        (Current.vm or owner).defer(notify)
        return Status.OK

    def dequeue(self, token: int) -> tuple[Status, bytes]:
        queue = self.queues.get(token)
        if queue is None:
            return Status.NOT_FOUND, b""
        if not queue.items:
            return Status.EMPTY, b""
        return Status.OK, queue.items.popleft()


_M = 0xFFFFFFFF


@host("proxy_get_shared_data", "iiiii")
def get_shared_data(key_ptr: int, key_size: int, value_pp: int, size_p: int, cas_p: int) -> int:
    vm = Current.vm
    key = vm.memory.read(key_ptr, key_size)
    if key is None:
        return Status.INVALID_MEMORY_ACCESS
    found = vm.shared.get(vm.options.vm_id, key)
    if found is None:
        return Status.NOT_FOUND
    if not vm.memory.copy_out(found[0], value_pp, size_p):
        return Status.INVALID_MEMORY_ACCESS
    if not vm.memory.set_u32(cas_p, found[1]):
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK


@host("proxy_set_shared_data", "iiiii")
def set_shared_data(key_ptr: int, key_size: int, value_ptr: int, value_size: int, cas: int) -> int:
    vm = Current.vm
    key = vm.memory.read(key_ptr, key_size)
    value = vm.memory.read(value_ptr, value_size)
    if key is None or value is None:
        return Status.INVALID_MEMORY_ACCESS
    return vm.shared.set(vm.options.vm_id, key, value, cas & _M)


@host("proxy_register_shared_queue", "iii")
def register_shared_queue(name_ptr: int, name_size: int, token_p: int) -> int:
    vm = Current.vm
    name = vm.memory.read(name_ptr, name_size)
    if name is None:
        return Status.INVALID_MEMORY_ACCESS
    token = vm.shared.register_queue(vm.options.vm_id, name.decode("latin-1"), vm, vm.root.id)
    return Status.OK if vm.memory.set_u32(token_p, token) else Status.INVALID_MEMORY_ACCESS


@host("proxy_resolve_shared_queue", "iiiii")
def resolve_shared_queue(
    vm_ptr: int, vm_size: int, name_ptr: int, name_size: int, tok_p: int
) -> int:
    vm = Current.vm
    vm_id = vm.memory.read(vm_ptr, vm_size)
    name = vm.memory.read(name_ptr, name_size)
    if vm_id is None or name is None:
        return Status.INVALID_MEMORY_ACCESS
    token = vm.shared.resolve_queue(vm_id.decode("latin-1"), name.decode("latin-1"))
    if token is None:
        return Status.NOT_FOUND
    return Status.OK if vm.memory.set_u32(tok_p, token) else Status.INVALID_MEMORY_ACCESS


@host("proxy_dequeue_shared_queue", "iii")
def dequeue_shared_queue(token: int, data_pp: int, size_p: int) -> int:
    vm = Current.vm
    status, data = vm.shared.dequeue(token & _M)
    if status != Status.OK:
        return status
    return Status.OK if vm.memory.copy_out(data, data_pp, size_p) else Status.INVALID_MEMORY_ACCESS


@host("proxy_enqueue_shared_queue", "iii")
def enqueue_shared_queue(token: int, data_ptr: int, data_size: int) -> int:
    vm = Current.vm
    data = vm.memory.read(data_ptr, data_size)
    if data is None:
        return Status.INVALID_MEMORY_ACCESS
    return vm.shared.enqueue(token & _M, data)
