/*
 * tcp: a network filter that rewrites downstream data (lowercase ASCII -> uppercase) before it
 * goes upstream, and upstream data ('E' -> '3') before it goes back to the client. Logs one line
 * per new connection. Downstream data starting with "trap" traps (unreachable).
 */
#include "proxy_wasm.h"

EXPORT(proxy_on_new_connection) uint32_t proxy_on_new_connection(uint32_t ctx) {
  log_msg(LOG_INFO, "tcp: new connection");
  return ACTION_CONTINUE;
}

static void rewrite(uint32_t buffer, uint32_t size, char from_lo, char from_hi, int shift) {
  if (size == 0) return;
  bytes_t data;
  get_buffer(buffer, 0, size, &data);
  for (size_t i = 0; i < data.size; i++) {
    if (data.data[i] >= from_lo && data.data[i] <= from_hi) data.data[i] += shift;
  }
  proxy_set_buffer_bytes(buffer, 0, size, data.data, data.size);
  free(data.data);
}

EXPORT(proxy_on_downstream_data)
uint32_t proxy_on_downstream_data(uint32_t ctx, uint32_t size, uint32_t eos) {
  bytes_t head = {NULL, 0};
  if (size >= 4 && get_buffer(BUFFER_DOWNSTREAM_DATA, 0, 4, &head) == WASM_OK &&
      memcmp(head.data, "trap", 4) == 0) {
    log_msg(LOG_WARN, "tcp: trapping");
    __builtin_trap();
  }
  free(head.data);
  rewrite(BUFFER_DOWNSTREAM_DATA, size, 'a', 'z', -32);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_upstream_data)
uint32_t proxy_on_upstream_data(uint32_t ctx, uint32_t size, uint32_t eos) {
  rewrite(BUFFER_UPSTREAM_DATA, size, 'E', 'E', '3' - 'E');
  return ACTION_CONTINUE;
}
